"""Planning and control: create runs with their packages and items, pause, resume, cancel, list."""

from __future__ import annotations

from collections.abc import Sequence

from matrix_mcp import rules, tracing
from matrix_mcp.engine.core import EngineCore
from matrix_mcp.engine.dependencies import check_dependencies
from matrix_mcp.errors import InputError
from matrix_mcp.models import (
    MAX_CAP,
    MAX_COST_USD,
    MAX_TOKENS,
    ItemSpec,
    PackageSpec,
    PlanResult,
    Review,
    Run,
    RunAction,
    RunList,
    RunPolicy,
)
from matrix_mcp.store.params import NewItem, NewPackage, PolicyUpdate

# the optional limits update_policy can set back to none
CLEARABLE = ("max_cost_usd", "max_tokens", "max_concurrent")


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
                    review=pkg.review,
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

    async def update_policy(
        self,
        run: str,
        *,
        max_cost_usd: float | None = None,
        max_tokens: int | None = None,
        max_concurrent: int | None = None,
        review: Review | None = None,
        lease_seconds: float | None = None,
        max_attempts: int | None = None,
        clear: Sequence[str] = (),
    ) -> Run:
        """Change a run's policy: each field given replaces the run's; `clear` sets max_cost_usd,
        max_tokens or max_concurrent back to none. Raising a budget does not resume a run it paused:
        control_run(resume) does. A new lease_seconds applies to the next claims and heartbeats; a new
        review setting to the next completions (items already in_review stay there).

        Args:
            run: the run's name or id.
            max_cost_usd: the cost budget in USD (≥ 0).
            max_tokens: the token budget, all tokens counted (≥ 0).
            max_concurrent: the run-wide cap of items generating at once (≥ 1).
            review: "required" or "none".
            lease_seconds: the lease length (0 < s ≤ 86,400).
            max_attempts: attempts per item (1 to 100).
            clear: limits to remove (a value given for one wins). Nothing given: the run as it is.

        Raises:
            InputError: a value out of range, or a name that cannot be cleared (named).
            NotFound: no such run.
        """
        info = await self.run_info(run)
        if max_cost_usd is not None and not 0 <= max_cost_usd <= MAX_COST_USD:  # NaN too
            raise InputError(f"must be between 0 and {MAX_COST_USD:g}", "max_cost_usd")
        if max_tokens is not None and not 0 <= max_tokens <= MAX_TOKENS:
            raise InputError(f"must be between 0 and {MAX_TOKENS}", "max_tokens")
        if max_concurrent is not None and not 1 <= max_concurrent <= MAX_CAP:
            raise InputError(f"must be between 1 and {MAX_CAP}", "max_concurrent")
        if review is not None and review not in ("none", "required"):
            raise InputError("must be 'none' or 'required'", "review")
        if lease_seconds is not None and not 0 < lease_seconds <= 86_400:
            raise InputError("must be more than 0 and at most 86400", "lease_seconds")
        if max_attempts is not None and not 1 <= max_attempts <= 100:
            raise InputError("must be between 1 and 100", "max_attempts")
        given = {
            "max_cost_usd": max_cost_usd,
            "max_tokens": max_tokens,
            "max_concurrent": max_concurrent,
            "review": review,
            "lease_seconds": lease_seconds,
            "max_attempts": max_attempts,
        }
        for i, name in enumerate(clear):
            if name not in CLEARABLE:
                raise InputError(f"{name!r} cannot be cleared; one of {', '.join(CLEARABLE)}", f"clear[{i}]")
        clear = [name for name in clear if given[name] is None]  # a value given wins over clearing it
        if not clear and all(v is None for v in given.values()):
            return await self.store.get_run(info.id)  # nothing to change
        update = PolicyUpdate(
            max_cost_usd=max_cost_usd,
            max_tokens=max_tokens,
            max_concurrent=max_concurrent,
            review=review,
            lease_seconds=lease_seconds,
            max_attempts=max_attempts,
            clear=frozenset(clear),
        )
        return await self.store.update_policy(info.id, update=update, now=self.now())

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
