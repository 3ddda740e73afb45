"""`matrix-mcp plan RUN`: a plan read from a file (JSON or YAML in the `plan_run` shape, CSV `package,item`
rows — with a header, also `after`, `priority`, `locks` columns —, or text lines `package/item`) or given as
`--package NAME --items a,b,c`.

Every problem is one line naming the file, the line (where the format has lines) and the field.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from matrix_mcp.models import ItemSpec, PackageSpec, RunPolicy

# the run policy a plan file may give (RunPolicy.planned's arguments)
POLICY_FIELDS = (
    "outcome_type",
    "lease_seconds",
    "max_attempts",
    "backoff_seconds",
    "outcome_schema",
    "max_concurrent",
    "on_dependency_failure",
    "review",
    "max_cost_usd",
    "max_tokens",
)
# the plan_run tool's arguments, as a plan file may give them (`name` is RUN's; repeated, it must agree)
PLAN_FIELDS = ("name", "goal", "packages", *POLICY_FIELDS)
UNION_TAGS = ("str", "ItemSpec")  # pydantic names the member of `str | ItemSpec` in an error's location


# CSV columns a header row may name (package and item first or anywhere; lists separated by `;`)
CSV_COLUMNS = ("package", "item", "after", "priority", "locks")


class PlanFileError(ValueError):
    """A plan that cannot be read: its message is the one line to print."""


@dataclass(frozen=True)
class Plan:
    name: str
    packages: list[PackageSpec]
    goal: str | None
    policy: RunPolicy


def read_plan(run: str, path: str) -> Plan:
    """The plan in the file at `path` for run `run`; the format follows the file's suffix (.json, .yaml or
    .yml, .csv; anything else is text lines `package/item`). Raises PlanFileError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PlanFileError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    except OSError as exc:
        raise PlanFileError(f"{path}: {exc.strerror or exc}") from exc
    suffix = Path(path).suffix.lower()
    if suffix == ".json":
        return plan_from_mapping(run, _json(path, text), path)
    if suffix in (".yaml", ".yml"):
        return plan_from_mapping(run, _yaml(path, text), path)
    if suffix == ".csv":
        return plan_from_rows(run, _csv_rows(path, text), path)
    return plan_from_pairs(run, _text_pairs(path, text), path)


def plan_from_items(run: str, package: str, items: str) -> Plan:
    """`--package NAME --items a,b,c`: one package, items separated by commas (blanks around them dropped)."""
    names = [i.strip() for i in items.split(",")]
    if any(not n for n in names):
        raise PlanFileError("--items: an empty item name (two commas, or one at an end)")
    return plan_from_pairs(run, [(0, package, n) for n in names], "--items")


def plan_from_mapping(run: str, data: Any, source: str) -> Plan:
    """A plan in the `plan_run` shape: `packages` (each {name, description?, after?, priority?,
    max_concurrent?, items}, an item a name or {name, specifications?, after?, priority?, locks?}) and
    optional `goal`, `outcome_type`, `lease_seconds`, `max_attempts`, `backoff_seconds`, `outcome_schema`,
    `max_concurrent`, `on_dependency_failure`, `review`, `max_cost_usd`, `max_tokens`; `name`, if given, must be RUN."""
    if not isinstance(data, dict):
        raise PlanFileError(f"{source}: must be an object with `packages` (the plan_run shape)")
    for key in data:
        if key not in PLAN_FIELDS:
            raise PlanFileError(f"{source}: {key}: unknown field; a plan takes {', '.join(PLAN_FIELDS)}")
    if "name" in data and data["name"] != run:
        raise PlanFileError(f"{source}: name: {data['name']!r} is not the run given, {run!r}")
    if "packages" not in data:
        raise PlanFileError(f"{source}: packages: missing")
    raw = data["packages"]
    if not isinstance(raw, list):
        raise PlanFileError(f"{source}: packages: must be a list")
    packages = []
    for i, pkg in enumerate(raw):
        try:
            packages.append(PackageSpec.model_validate(pkg))
        except ValidationError as exc:
            raise PlanFileError(f"{source}: {_where(exc, f'packages[{i}]')}") from None
    goal = data.get("goal")
    if goal is not None and not isinstance(goal, str):
        raise PlanFileError(f"{source}: goal: must be text")
    try:
        policy = RunPolicy.planned(**{k: data[k] for k in POLICY_FIELDS if k in data})
    except ValidationError as exc:
        raise PlanFileError(f"{source}: {_where(exc, '')}") from None
    return Plan(run, packages, goal, policy)


def plan_from_pairs(run: str, pairs: list[tuple[int, str, str]], source: str) -> Plan:
    """Packages in the order they first appear, each with its items in order; a pair given twice is one
    item (so a file may be appended to and planned again)."""
    return plan_from_rows(run, [(line, package, item, {}) for line, package, item in pairs], source)


def plan_from_rows(run: str, rows: list[tuple[int, str, str, dict[str, Any]]], source: str) -> Plan:
    """As `plan_from_pairs`, each row with its item's policy fields (`after`, `priority`, `locks`), if any:
    the first row of an item gives them."""
    packages: dict[str, dict[str, str | ItemSpec]] = {}
    for line, package, item, extra in rows:
        where = f"{source} line {line}" if line else source
        if not package:
            raise PlanFileError(f"{where}: package: empty")
        if not item:
            raise PlanFileError(f"{where}: item: empty")
        items = packages.setdefault(package, {})
        if item in items:
            continue
        if not extra:
            items[item] = item
            continue
        try:
            items[item] = ItemSpec.model_validate({"name": item, **extra})
        except ValidationError as exc:
            raise PlanFileError(f"{where}: {_where(exc, '')}") from None
    if not packages:
        raise PlanFileError(f"{source}: no items")
    specs = [PackageSpec(name=name, items=list(items.values())) for name, items in packages.items()]
    return Plan(run, specs, None, RunPolicy.planned())


def _json(path: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PlanFileError(
            f"{path} line {exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno})"
        ) from None


def _yaml(path: str, text: str) -> Any:
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        raise PlanFileError(
            f"{path}: reading YAML needs PyYAML installed (pip install pyyaml); or give the plan as JSON"
        ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise PlanFileError(f"{path}{line}: not valid YAML ({problem})") from None


def _csv_rows(path: str, text: str) -> list[tuple[int, str, str, dict[str, Any]]]:
    """Rows `package,item`, blank lines skipped. A first row naming columns (`package`, `item` and any of
    `after`, `priority`, `locks`) is a header; `after` and `locks` cells are lists separated by `;`, and an
    empty cell gives nothing."""
    rows: list[tuple[int, str, str, dict[str, Any]]] = []
    columns = ["package", "item"]
    reader = csv.reader(io.StringIO(text))
    try:
        for row in reader:
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            cells = [cell.strip() for cell in row]
            if not rows and line == _first_row(text) and {"package", "item"} <= {c.lower() for c in cells}:
                columns = _header(path, line, cells)
                continue
            if len(cells) != len(columns):
                raise PlanFileError(
                    f"{path} line {line}: expected {len(columns)} columns, {','.join(columns)}; found {len(cells)}"
                )
            values = dict(zip(columns, cells, strict=True))
            extra: dict[str, Any] = {}
            for name in ("after", "locks"):
                if values.get(name):
                    extra[name] = [part.strip() for part in values[name].split(";") if part.strip()]
            if values.get("priority"):
                extra["priority"] = values["priority"]
            rows.append((line, values["package"], values["item"], extra))
    except csv.Error as exc:
        raise PlanFileError(f"{path} line {reader.line_num}: not valid CSV ({exc})") from None
    return rows


def _header(path: str, line: int, cells: list[str]) -> list[str]:
    names = [c.lower() for c in cells]
    for name in names:
        if name not in CSV_COLUMNS:
            raise PlanFileError(
                f"{path} line {line}: {name}: unknown column; a CSV plan takes {', '.join(CSV_COLUMNS)}"
            )
    if len(set(names)) != len(names):
        raise PlanFileError(f"{path} line {line}: a column is named twice")
    return names


def _first_row(text: str) -> int:
    """The line number of the first line that is not blank."""
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            return n
    return 0


def _text_pairs(path: str, text: str) -> list[tuple[int, str, str]]:
    """Lines `package/item` (split at the first `/`); blank lines and lines starting with # are skipped."""
    pairs: list[tuple[int, str, str]] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        package, slash, item = line.partition("/")
        if not slash:
            raise PlanFileError(f"{path} line {n}: expected package/item, found {line[:80]!r}")
        pairs.append((n, package.strip(), item.strip()))
    return pairs


def _where(exc: ValidationError, prefix: str) -> str:
    """The first validation error as `field: message`, the field under `prefix`."""
    first = exc.errors()[0]
    path = prefix
    for part in first["loc"]:
        if part in UNION_TAGS:
            continue
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return f"{path or 'plan'}: {first['msg']}"
