"""Planning and control: create runs with their packages and items, pause, resume, cancel, list."""

from __future__ import annotations

from collections.abc import Sequence

from matrix_mcp import tracing
from matrix_mcp.engine.core import EngineCore
from matrix_mcp.engine.validate import InputError
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
                items.append(NewItem(spec.name, spec.specifications))
            total += len(items)
            if total > self.limits.max_items_per_plan:
                raise InputError(f"more than {self.limits.max_items_per_plan} items in one plan", "packages")
            new.append(NewPackage(pkg.name, pkg.description, items))
        return await self.store.plan(name=name, goal=goal, policy=policy, packages=new, now=self.now())

    async def control_run(self, run: str, *, action: RunAction) -> Run:
        info = await self.run_info(run)
        return await self.store.control_run(info.id, action=action, now=self.now())

    async def list_runs(self) -> RunList:
        return RunList(runs=await self.store.list_runs())

    async def get_run(self, run: str) -> Run:
        return await self.store.get_run((await self.run_info(run)).id)
