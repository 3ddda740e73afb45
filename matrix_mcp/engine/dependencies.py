"""A plan's dependencies checked before anything is written: each `after` reference's syntax, a reference
to itself, a cycle among the plan's items (named), and the number of dependency rows it would store.

References the plan itself has are resolved here; the others go to the store as candidates, resolved inside
the plan's transaction against the existing run (unknown there: the same one-line error, naming the field).
Written for plans of 10,000s of references: the usual shapes ("item", "package/item") skip the general
candidate list, and the cycle search walks plain adjacency lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from matrix_mcp import rules
from matrix_mcp.models import ItemSpec, PackageSpec
from matrix_mcp.store.params import Prerequisite


@dataclass
class PlanGraph:
    """The plan's names and every item's and package's prerequisites, as the store will get them."""

    items: dict[str, dict[str, None]] = field(default_factory=dict)  # package -> its items, in plan order
    item_after: dict[rules.Node, tuple[Prerequisite, ...]] = field(default_factory=dict)
    package_after: dict[str, tuple[Prerequisite, ...]] = field(default_factory=dict)
    # what each node waits for among the plan's own nodes (a hub (package, None): every item of it)
    edges: dict[rules.Node, list[rules.Node]] = field(default_factory=dict)
    _known: dict[rules.Ref, Prerequisite] = field(default_factory=dict)

    def has(self, ref: rules.Ref) -> bool:
        package, item = ref
        names = self.items.get(package)
        return names is not None and (item is None or item in names)

    def resolve(self, candidates: tuple[rules.Ref, ...], field: str, text: str) -> Prerequisite:
        """The first candidate the plan has (one shared Prerequisite per target: the plan has it, no error
        can name its field), or all of them (the store resolves those in the run)."""
        for ref in candidates:
            if self.has(ref):
                return self._resolved(ref, field, text)
        return Prerequisite(candidates=candidates, field=field, text=text)

    def _resolved(self, ref: rules.Ref, field: str, text: str) -> Prerequisite:
        found = self._known.get(ref)
        if found is None:
            found = self._known[ref] = Prerequisite(candidates=(ref,), field=field, text=text)
        return found

    def known(self, ref: rules.Ref, text: str) -> Prerequisite:
        """The shared Prerequisite of a target the plan has (no error can name its field)."""
        return self._resolved(ref, "", text)

    def fast(self, ref: object, package: str) -> rules.Ref | None:
        """The plan's item an "item" or "package/item" reference names, found straight (no candidate list,
        no field name formatted); None: take the general way (rules.ref_candidates, which also words every
        malformed reference)."""
        if not isinstance(ref, str) or "\x00" in ref:
            return None
        slash = ref.find("/")
        if slash == -1:
            target: rules.Ref = (package, ref)
        elif 0 < slash < len(ref) - 1 and ref.find("/", slash + 1) == -1 and ref[slash + 1 :] != "*":
            target = (ref[:slash], ref[slash + 1 :])
        else:
            return None
        return target if self.has(target) else None

    def item_ref(self, ref: object, package: str, field: str) -> Prerequisite:
        """An item's reference, resolved where the plan has it."""
        return self.resolve(rules.ref_candidates(ref, package, field), field, str(ref))

    def waits_for(self, node: rules.Node) -> list[rules.Node]:
        return self.edges.get(node, [])


def check_dependencies(packages: Sequence[PackageSpec], max_edges: int) -> PlanGraph:
    """The plan's prerequisites resolved where the plan has them; InputError naming the field on a bad or
    self reference, naming the cycle on a cycle, on more than `max_edges` dependency rows."""
    graph = PlanGraph()
    for pkg in packages:
        graph.items[pkg.name] = dict.fromkeys(raw if isinstance(raw, str) else raw.name for raw in pkg.items)
    edges = 0
    for i, pkg in enumerate(packages):
        own: list[Prerequisite] = []
        for k, ref in enumerate(pkg.after):
            where = f"packages[{i}].after[{k}]"
            prerequisite = graph.resolve(rules.package_candidates(ref, where), where, ref)
            if prerequisite.candidates == ((pkg.name, None),):
                raise rules.self_reference(where, (pkg.name, None))
            own.append(prerequisite)
        own_targets = {p.candidates for p in own}
        own_in_plan = [p.candidates[0] for p in own if len(p.candidates) == 1 and graph.has(p.candidates[0])]
        if own:
            graph.package_after[pkg.name] = tuple(own)
        for j, raw in enumerate(pkg.items):
            name = raw if isinstance(raw, str) else raw.name
            if not isinstance(raw, ItemSpec) or not raw.after:
                edges += len(own_targets)
                if own_in_plan:
                    graph.edges[(pkg.name, name)] = own_in_plan
                continue
            node = (pkg.name, name)
            after: list[Prerequisite] = []
            for k, ref in enumerate(raw.after):
                target = graph.fast(ref, pkg.name)
                if target is not None and target != node:
                    after.append(graph.known(target, ref))
                    continue
                where = f"packages[{i}].items[{j}].after[{k}]"
                prerequisite = graph.item_ref(ref, pkg.name, where)
                if prerequisite.candidates in ((node,), ((pkg.name, None),)):
                    raise rules.self_reference(where, prerequisite.candidates[0])
                after.append(prerequisite)
            graph.item_after[node] = tuple(after)
            targets = {p.candidates for p in after}
            edges += len(targets | own_targets)
            graph.edges[node] = [
                *(t[0] for t in targets if len(t) == 1 and graph.has(t[0])),
                *own_in_plan,
            ]
        if edges > max_edges:
            raise rules.too_many_edges(max_edges)
    if graph.edges:
        hubs = {t for targets in graph.edges.values() for t in targets if t[1] is None}
        for package, _ in hubs:
            graph.edges[(package, None)] = [(package, name) for name in graph.items[package]]
        cycle = rules.find_cycle(list(graph.edges), graph.waits_for)
        if cycle is not None:
            raise rules.dependency_cycle(cycle)
    return graph
