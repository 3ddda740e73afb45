"""Planning and control: create runs with their packages and items, pause, resume, cancel, list."""

from __future__ import annotations

from collections.abc import Sequence

from matrix_mcp import rules, tracing
from matrix_mcp.engine.core import EngineCore
from matrix_mcp.engine.dependencies import check_dependencies
from matrix_mcp.errors import InputError
from matrix_mcp.models import ItemSpec, PackageSpec, PlanResult, Run, RunAction, RunList, RunPolicy
from matrix_mcp.store.params import NewItem, NewPackage


class Planning(EngineCore):
    @tracing.plan_span
    async def plan_run(
        self,
        name: str,
        *,
        packages: Sequence[PackageSpec],
        goal: str | None = None,
        policy: RunPolicy | None = None,
    ) -> PlanResult:
        """Create the run `name` with its packages and pending items, or extend the run of that name (items
        already there are kept; the run's goal and policy are those of its first plan).

        Args:
            name: the run's name, unique.
            packages: the packages, each with its items (names, or specs with specifications, `after`,
                priority and lock keys), their `after`, priority and max_concurrent.
            goal: what the run is for; the briefing every claimed item carries begins with it.
            policy: outcome type, lease, attempts, backoff, the outcome_schema reports must meet, the
                run-wide max_concurrent and what a failed dependency does to its dependents.

        Raises:
            InputError: a name, an outcome_schema, specifications or lock keys that are not valid,
                duplicates, more items than MATRIX_MAX_ITEMS_PER_PLAN in one plan, an `after` reference
                that is malformed, unknown or to itself, a dependency cycle (named), or more dependency rows
                than MATRIX_MAX_EDGES_PER_PLAN; the field is named.
            Conflict: the run is cancelled and the plan would add items.
        """
        self._name(name, "name")
        policy = policy or RunPolicy()
        self._name(policy.outcome_type, "outcome_type")
        if policy.outcome_schema is not None:
            self._json(policy.outcome_schema, "outcome_schema")
            from jsonschema import Draft202012Validator
            from jsonschema.exceptions import SchemaError

            try:
                Draft202012Validator.check_schema(policy.outcome_schema)
            except SchemaError as exc:
                raise InputError(f"is not a valid JSON Schema: {exc.message}", "outcome_schema") from exc
        graph = check_dependencies(packages, self.limits.max_edges_per_plan)
        new: list[NewPackage] = []
        seen_packages: set[str] = set()
        total = 0
        for i, pkg in enumerate(packages):
            field = f"packages[{i}]"
            self._name(pkg.name, f"{field}.name")
            if pkg.name in seen_packages:
                raise InputError(f"duplicate package name {pkg.name!r}", f"{field}.name")
            seen_packages.add(pkg.name)
            items: list[NewItem] = []
            seen_items: set[str] = set()
            for j, raw in enumerate(pkg.items):
                spec = raw if isinstance(raw, ItemSpec) else ItemSpec(name=raw)
                self._name(spec.name, f"{field}.items[{j}]")
                if spec.name in seen_items:
                    raise InputError(f"duplicate item name {spec.name!r}", f"{field}.items[{j}]")
                seen_items.add(spec.name)
                self._json(spec.specifications, f"{field}.items[{j}].specifications")
                items.append(
                    NewItem(
                        spec.name,
                        spec.specifications,
                        after=graph.item_after.get((pkg.name, spec.name), ()),
                        priority=spec.priority,
                        locks=rules.check_locks(spec.locks, f"{field}.items[{j}].locks"),
                    )
                )
            total += len(items)
            if total > self.limits.max_items_per_plan:
                raise InputError(f"more than {self.limits.max_items_per_plan} items in one plan", "packages")
            new.append(
                NewPackage(
                    pkg.name,
                    pkg.description,
                    items,
                    after=graph.package_after.get(pkg.name, ()),
                    priority=pkg.priority,
                    max_concurrent=pkg.max_concurrent,
                )
            )
        return await self.store.plan(name=name, goal=goal, policy=policy, packages=new, now=self.now())

    async def control_run(self, run: str, *, action: RunAction) -> Run:
        """Pause, resume or cancel a run (cancel also cancels its pending items; it is final).

        Args:
            run: the run's name or id.
            action: "pause", "resume" or "cancel".

        Raises:
            NotFound: no such run.
            Conflict: pause or resume of a cancelled run.
        """
        info = await self.run_info(run)
        return await self.store.control_run(info.id, action=action, now=self.now())

    async def list_runs(self) -> RunList:
        """Every run with its state and counts, oldest first."""
        return RunList(runs=await self.store.list_runs())

    async def get_run(self, run: str) -> Run:
        """One run with its state, policy and counts.

        Args:
            run: the run's name or id.

        Raises:
            NotFound: no such run.
        """
        return await self.store.get_run((await self.run_info(run)).id)
