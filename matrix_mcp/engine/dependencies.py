"""A plan's dependencies checked before anything is written: each `after` reference's syntax, a reference
to itself, a cycle among the plan's items (named), and the number of dependency rows it would store.

References the plan itself has are resolved here; the others go to the store as candidates, resolved inside
the plan's transaction against the existing run (unknown there: the same one-line error, naming the field).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from matrix_mcp import rules
from matrix_mcp.models import ItemSpec, PackageSpec
from matrix_mcp.store.params import Prerequisite


@dataclass
class PlanGraph:
    """The plan's names and every item's and package's prerequisites, as the store will get them."""

    items: dict[str, dict[str, None]] = field(default_factory=dict)  # package -> its items in this plan
    item_after: dict[rules.Node, tuple[Prerequisite, ...]] = field(default_factory=dict)
    package_after: dict[str, tuple[Prerequisite, ...]] = field(default_factory=dict)

    def has(self, ref: rules.Ref) -> bool:
        package, item = ref
        names = self.items.get(package)
        return names is not None and (item is None or item in names)

    def resolve(self, candidates: tuple[rules.Ref, ...], field: str, text: str) -> Prerequisite:
        """The first candidate the plan has, or all of them (the store resolves those in the run)."""
        for ref in candidates:
            if self.has(ref):
                return Prerequisite(candidates=(ref,), field=field, text=text)
        return Prerequisite(candidates=candidates, field=field, text=text)

    def waits_for(self, node: rules.Node) -> Iterable[rules.Node]:
        """What `node` waits for among the plan's own items: an item its prerequisites (a package's hub for
        "package/*" and its package's `after`), a hub every item of its package."""
        package, item = node
        if item is None:
            return ((package, name) for name in self.items.get(package, ()))
        refs = [*self.item_after.get(node, ()), *self.package_after.get(package, ())]
        return (p.candidates[0] for p in refs if len(p.candidates) == 1 and self.has(p.candidates[0]))


def check_dependencies(packages: Sequence[PackageSpec], max_edges: int) -> PlanGraph:
    """The plan's prerequisites resolved where the plan has them; InputError naming the field on a bad or
    self reference, naming the cycle on a cycle, on more than `max_edges` dependency rows."""
    graph = PlanGraph()
    for pkg in packages:
        graph.items[pkg.name] = {(raw if isinstance(raw, str) else raw.name): None for raw in pkg.items}
    edges = 0
    for i, pkg in enumerate(packages):
        own: list[Prerequisite] = []
        for k, ref in enumerate(pkg.after):
            where = f"packages[{i}].after[{k}]"
            prerequisite = graph.resolve(rules.package_candidates(ref, where), where, ref)
            if prerequisite.candidates == ((pkg.name, None),):
                raise rules.self_reference(where, (pkg.name, None))
            own.append(prerequisite)
        if own:
            graph.package_after[pkg.name] = tuple(own)
        for j, raw in enumerate(pkg.items):
            if not isinstance(raw, ItemSpec) or not raw.after:
                edges += len({p.candidates for p in own})
                continue
            node = (pkg.name, raw.name)
            after: list[Prerequisite] = []
            for k, ref in enumerate(raw.after):
                where = f"packages[{i}].items[{j}].after[{k}]"
                prerequisite = graph.resolve(rules.ref_candidates(ref, pkg.name, where), where, ref)
                if prerequisite.candidates in ((node,), ((pkg.name, None),)):
                    raise rules.self_reference(where, prerequisite.candidates[0])
                after.append(prerequisite)
            graph.item_after[node] = tuple(after)
            edges += len({p.candidates for p in after} | {p.candidates for p in own})
        if edges > max_edges:
            raise rules.too_many_edges(max_edges)
    if graph.item_after or graph.package_after:
        nodes = [(p, name) for p, names in graph.items.items() for name in names]
        cycle = rules.find_cycle(nodes, graph.waits_for)
        if cycle is not None:
            raise rules.dependency_cycle(cycle)
    return graph
