"""Tool definitions for our servers, built with mcp 2.3's public API, and the checks every tool call passes.

- `compact_schema` / `inline_refs` / `lean_result_schema`: drop pydantic's auto-generated titles, validation-only
  keywords of results and the `null` branch of optional inputs — tool definitions cost the client's context.
  Nothing emits a type array (`["string", "null"]`): Gemini's function declarations (an OpenAPI 3.0 subset)
  reject them.
- `StrictFuncMetadata`: text arguments kept verbatim, unknown arguments refused.
- `build_tools`: `Tool` objects for `MCPServer(tools=[...])`, from a definition cache keyed by what shaped
  them (see below), else the SDK's own `Tool.from_function`; page-size bounds from `Limits`.
- `ToolServer`: an `MCPServer` whose `call_tool` (what `tools/call` and the REST API both reach) refuses lone
  surrogates and page sizes above the configured bound with one line naming the field.

What still needs mcp internals is in `matrix_mcp.sdk.private`, and nowhere else.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import sys
import tempfile
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcp.server import MCPServer
from mcp.server.lowlevel.server import LifespanResultT
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.tools import Tool
from mcp.server.mcpserver.utilities.func_metadata import ArgModelBase, FuncMetadata, func_metadata
from mcp_types import CallToolResult, InputRequiredResult, ToolAnnotations
from pydantic import PrivateAttr, ValidationError
from pydantic_core import PydanticCustomError

from matrix_mcp.sdk.errors import StructuredErrors, record

log = logging.getLogger("matrix_mcp.sdk_compat")

# validation-only keywords that say nothing a reader of a result needs
_INPUT_ONLY = frozenset(
    {
        "required",
        "default",
        "additionalProperties",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "minLength",
        "maxLength",
        "format",  # date-time: the field names (`…_at`) say so
    }
)
# keywords whose value is a map of name -> schema (the names are data, not keywords)
_SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_VALUES = ("items", "additionalProperties", "not", "if", "then", "else", "contains")


def compact_schema(schema: Any, output: bool = False) -> Any:
    """A smaller, equivalent schema. For output schemas (`output=True`) validation-only keywords go too:
    `required` only repeats property names (every field of our results is always present), and bounds and
    defaults describe inputs, not results; long enums (a result's type vocabulary) are left to the text."""
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if (
            key == "title"
            or (key == "additionalProperties" and value is True)
            or (key == "default" and value is None)
        ):
            continue
        if output and (key in _INPUT_ONLY or (key == "enum" and isinstance(value, list) and len(value) > 8)):
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: compact_schema(sub, output) for name, sub in value.items()}
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            out[key] = [compact_schema(sub, output) for sub in value]
        elif key in _SCHEMA_VALUES:
            out[key] = compact_schema(value, output)
        else:
            out[key] = value
    if isinstance(out.get("properties"), dict):
        # inputs: an optional one is left out for None; results: an optional one is left out when None
        # (model_dump(exclude_none=True)); a required nullable property keeps its null branch
        required = set(schema.get("required", ()))
        out["properties"] = {
            name: sub if name in required else _without_null(sub) for name, sub in out["properties"].items()
        }
    return out


_NULL = {"type": "null"}


def _without_null(schema: Any) -> Any:
    """An optional property without its `null` branch: leaving it out means None (inputs) or is how None is
    sent (results), so the branch only costs context. What stays is portable: a single `type`, or `anyOf` of the other branches — never a type
    array such as ["string", "null"], which Gemini-style (OpenAPI subset) function declarations reject."""
    if not isinstance(schema, dict):
        return schema
    variants = schema.get("anyOf")
    if not (isinstance(variants, list) and _NULL in variants):
        return schema
    others = [v for v in variants if v != _NULL]
    rest = {k: v for k, v in schema.items() if k != "anyOf"}
    if len(others) == 1 and isinstance(others[0], dict):
        return {**others[0], **rest}
    return {"anyOf": others, **rest}


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """Replace local `$ref`s used once by the definition itself (our result models are not recursive):
    validators then follow fewer references, and the SDK client validates every result. Definitions used
    more than once stay in `$defs`, so nothing is duplicated."""
    defs: dict[str, Any] = schema.get("$defs", {})
    uses: dict[str, int] = {}

    def count(node: Any) -> None:
        if isinstance(node, list):
            for n in node:
                count(n)
        elif isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                uses[ref[8:]] = uses.get(ref[8:], 0) + 1
            for k, v in node.items():
                if k != "$defs":
                    count(v)

    count(schema)
    for d in defs.values():
        count(d)

    def walk(node: Any, depth: int) -> Any:
        if isinstance(node, list):
            return [walk(n, depth) for n in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/") and uses.get(ref[8:]) == 1 and depth < 20:
            target = defs.get(ref[8:])
            if target is not None:
                rest = {k: v for k, v in node.items() if k != "$ref"}
                return {**walk(target, depth + 1), **walk(rest, depth)}
        return {k: walk(v, depth) for k, v in node.items() if k != "$defs"}

    out: dict[str, Any] = walk(schema, 0)
    kept = {name: walk(d, 1) for name, d in defs.items() if uses.get(name, 0) > 1}
    if kept:
        out["$defs"] = kept
    return out


def _text_only(annotation: Any) -> bool:
    """`str | None` (and Literal/str unions): a value that must stay the text the client sent."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType) or not args:
        return False
    return all(a is str or a is type(None) for a in args)


class ModelResult(CallToolResult):
    """A tool result whose structured content is the JSON dump of the tool's own output model: valid by
    construction, so the SDK's re-validation of it against that model is skipped."""


class StrictFuncMetadata(FuncMetadata):
    """Two fixes to the SDK's argument handling:
    - it parses any string argument that looks like JSON unless its annotation is exactly `str`, so
      `content='{"a": 1}'` for a `str | None` parameter arrives as a dict and fails validation (and a
      package named "true" becomes a bool): optional text parameters are kept verbatim here;
    - it drops arguments the tool does not take, so a misspelt option (`lease_second=5`) silently
      does nothing: here it is a validation error naming the arguments the tool takes."""

    def convert_result(self, result: Any) -> Any:
        if type(result) is ModelResult:
            return result
        return super().convert_result(result)

    def pre_parse_json(self, data: dict[str, Any]) -> dict[str, Any]:
        fields = self.arg_model.model_fields
        accepted = {f.alias or name for name, f in fields.items()} | set(fields)
        unknown = [key for key in data if key not in accepted]
        if unknown:
            takes = ", ".join(f.alias or name for name, f in fields.items())
            raise ValidationError.from_exception_data(
                self.arg_model.__name__,
                [
                    {
                        "type": PydanticCustomError(
                            "unknown_argument", "unknown argument; this tool takes: {takes}", {"takes": takes}
                        ),
                        "loc": (key,),
                        "input": data[key],
                    }
                    for key in unknown
                ],
            )
        keep = {
            key: value
            for key, value in data.items()
            if isinstance(value, str)
            and key in self.arg_model.model_fields
            and _text_only(self.arg_model.model_fields[key].annotation)
        }
        parsed = super().pre_parse_json(data)
        parsed.update(keep)
        return parsed


def lean_result_schema(schema: Any) -> Any:
    """A result schema for results dumped without their null fields (`exclude_none`): `null` leaves every
    type list (an absent field already says it), and enums go (a result's values speak for themselves:
    `"status": "complete"`); a worker's connection re-reads these definitions every turn."""
    if isinstance(schema, list):
        return [lean_result_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "enum":
            continue
        if key == "type" and isinstance(value, list) and "null" in value:
            kept = [t for t in value if t != "null"]
            out[key] = kept[0] if len(kept) == 1 else kept
        elif key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: lean_result_schema(sub) for name, sub in value.items()}
        else:
            out[key] = lean_result_schema(value) if isinstance(value, dict | list) else value
    return out


def compact_definition(tool: Tool, null_free: bool) -> dict[str, Any]:
    """A tool's final definition: description on one line (docstring indentation costs context), schemas
    compacted with single-use definitions inlined, unknown arguments refused; the result schema lean when
    results carry no null."""
    output = tool.output_schema
    if output is not None:
        output = inline_refs(compact_schema(output, output=True))
        if null_free:
            output = lean_result_schema(output)
    parameters = inline_refs(compact_schema(tool.parameters))
    parameters["additionalProperties"] = False  # StrictFuncMetadata refuses unknown arguments: say so
    return {
        "description": " ".join((tool.description or "").split()),
        "parameters": parameters,
        "output_schema": output,
        "context_kwarg": tool.context_kwarg,
    }


# ---- page-size bounds ----------------------------------------------------------------------------


class PageBound:
    """Marker in a parameter's `Annotated[...]`: its maximum is the server's `Limits.max_page_size`
    (MATRIX_MAX_PAGE_SIZE), enforced by `ToolServer.call_tool` and, when `advertised`, stated as the input
    schema's `maximum`."""

    def __init__(self, advertised: bool = True) -> None:
        self.advertised = advertised

    def __repr__(self) -> str:
        return "PAGE_BOUND" if self.advertised else "PAGE_BOUND_UNADVERTISED"


PAGE_BOUND = PageBound()
# enforced alike, not stated in the schema: where the bytes of a worker's tool definitions are counted
PAGE_BOUND_UNADVERTISED = PageBound(advertised=False)


def _bounded_parameters(fn: Callable[..., Any]) -> dict[str, bool]:
    """{parameter marked with a PageBound: whether its bound is advertised}."""
    bounded: dict[str, bool] = {}
    for name, hint in typing.get_type_hints(fn, include_extras=True).items():
        if name != "return" and typing.get_origin(hint) is typing.Annotated:
            for mark in hint.__metadata__:
                if isinstance(mark, PageBound):
                    bounded[name] = mark.advertised
    return bounded


# ---- which sources shape a definition ------------------------------------------------------------


def _package_files(specs: Sequence[ToolSpec]) -> list[str]:
    """Every loaded module of the packages the tool functions belong to: whatever shapes a definition (a
    signature, a docstring, a result model, a Literal alias, a default imported from elsewhere in the package)
    has been imported by the time the tools are built, so this superset cannot miss one."""
    packages = {spec.fn.__module__.split(".")[0] for spec in specs}
    files = {
        str(module.__file__)
        for name, module in list(sys.modules.items())
        if name.split(".")[0] in packages and getattr(module, "__file__", None)
    }
    return sorted(files)


def _sdk_files() -> list[str]:
    """Our schema shaping code, and the SDK's and pydantic's that build a definition."""
    import mcp.server.mcpserver.tools.base as tool_base
    import mcp.server.mcpserver.utilities.func_metadata as fm
    import pydantic.json_schema as pjs

    return [__file__, fm.__file__, tool_base.__file__, pjs.__file__]


def _digest(files: Sequence[str]) -> str | None:
    """Of the files' names and contents, and of pydantic's and Python's versions."""
    import pydantic
    import pydantic_core

    h = hashlib.sha256(f"{pydantic.VERSION}|{pydantic_core.__version__}|{sys.version}".encode())
    try:
        for name in files:
            h.update(name.encode())
            h.update(Path(name).read_bytes())
    except OSError:
        return None
    return h.hexdigest()[:24]


# ---- the definition cache ------------------------------------------------------------------------
#
# Building a tool the SDK's way (an argument model and two JSON schemas per tool) is ~65 ms of every start
# for our 32 tools, most of the cold start we add to the SDK's own. The first start writes the final
# definitions to a cache file; later starts use them while the digest of every file that could have shaped
# them (each loaded module of the tools' package when the file was written, the SDK's and pydantic's schema
# code, their versions) is unchanged. Argument models are then built on a tool's first call. Nothing is committed: an edited
# docstring changes a digest and the next start rebuilds. MATRIX_CACHE_DIR sets the directory (default
# $XDG_CACHE_HOME/matrix-mcp, else ~/.cache/matrix-mcp); MATRIX_TOOL_CACHE=0 turns the cache off. An
# unwritable directory only means every start builds the SDK's way.


def cache_dir() -> Path | None:
    if os.environ.get("MATRIX_TOOL_CACHE", "1") == "0":
        return None
    configured = os.environ.get("MATRIX_CACHE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "matrix-mcp"


def cache_file(server_name: str) -> Path | None:
    """One file per server and installation (two checkouts sharing a cache directory do not take turns)."""
    directory = cache_dir()
    if directory is None:
        return None
    where = hashlib.sha256(f"{Path(__file__).resolve()}|{sys.version}".encode()).hexdigest()[:12]
    return directory / f"tools-{server_name}-{where}.json"


def _read_cache(path: Path | None, names: Sequence[str]) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        tools: dict[str, Any] = data["tools"]
        files: list[str] = data["files"]
        if data["digest"] != _digest(files) or any(n not in tools for n in names):
            log.debug("tool definition cache %s is out of date", path)
            return None
        return tools
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_cache(path: Path | None, files: Sequence[str], tools: dict[str, Any]) -> None:
    if path is None:
        return
    digest = _digest(files)
    if digest is None:
        return
    text = json.dumps({"digest": digest, "files": list(files), "tools": tools}, ensure_ascii=False)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)  # readers see the old file or the new one, never half of one
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        log.debug("tool definition cache not written (%s): building tools at every start", exc)


# ---- building the tools --------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolSpec:
    """A tool function (named after it) and how it is registered. `null_free`: its results are dumped
    without null fields, so its result schema is made lean. `meta`: the definition's `_meta` (such as the
    MCP Apps view its results are shown in), added at every build, never cached."""

    fn: Callable[..., Any]
    annotations: ToolAnnotations | None = None
    null_free: bool = False
    meta: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return self.fn.__name__


@dataclass
class ToolSet:
    """The tools to hand to `MCPServer(tools=...)`, and the page-size bound of each bounded argument."""

    tools: list[Tool]
    bounds: dict[str, dict[str, int]] = field(default_factory=dict)


def sdk_definitions(specs: Sequence[ToolSpec]) -> tuple[dict[str, Any], list[str]]:
    """Definitions the SDK's way (`Tool.from_function`), compacted; and the files that shaped them."""
    definitions: dict[str, Any] = {}
    for spec in specs:
        tool = Tool.from_function(spec.fn, annotations=spec.annotations)
        definitions[spec.name] = {
            **compact_definition(tool, spec.null_free),
            "bounded": _bounded_parameters(spec.fn),
        }
    return definitions, _sdk_files() + [f for f in _package_files(specs) if f != __file__]


def write_cache(server_name: str, specs: Sequence[ToolSpec]) -> Path | None:
    """Write the definition cache of one server now (ahead of its first start, e.g. in a container image);
    the file written, or None when the cache is off or cannot be written."""
    path = cache_file(server_name)
    definitions, files = sdk_definitions(specs)
    _write_cache(path, files, definitions)
    return path if path is not None and _read_cache(path, list(definitions)) is not None else None


def build_tools(
    server_name: str, specs: Sequence[ToolSpec], page_size: int, keep: Callable[[str], bool] = lambda _: True
) -> ToolSet:
    """The tools of `specs` that `keep` admits, in order, with `page_size` as the bound of every argument
    marked with a PageBound."""
    path = cache_file(server_name)
    definitions = _read_cache(path, [s.name for s in specs])
    if definitions is None:
        definitions, files = sdk_definitions(specs)
        _write_cache(path, files, definitions)
    out = ToolSet(tools=[])
    for spec in specs:
        if not keep(spec.name):
            continue
        entry = definitions[spec.name]
        parameters = entry["parameters"]
        bounded: dict[str, bool] = entry["bounded"]
        if bounded:
            properties = dict(parameters["properties"])
            for name, advertised in bounded.items():
                if advertised:
                    properties[name] = {**properties[name], "maximum": page_size}
            parameters = {**parameters, "properties": properties}
            out.bounds[spec.name] = dict.fromkeys(bounded, page_size)
        context_kwarg = entry["context_kwarg"]
        meta = LazyFuncMetadata(arg_model=ArgModelBase, output_schema=entry["output_schema"])
        meta._fn = spec.fn
        meta._skip = [context_kwarg] if context_kwarg else []
        out.tools.append(
            Tool(
                fn=spec.fn,
                name=spec.name,
                title=None,
                description=entry["description"],
                parameters=parameters,
                fn_metadata=meta,
                is_async=inspect.iscoroutinefunction(spec.fn),
                context_kwarg=context_kwarg,
                annotations=spec.annotations,
                meta=spec.meta,
            )
        )
    return out


class LazyFuncMetadata(StrictFuncMetadata):
    """Metadata of a tool built from its final definition: the argument model (and the output model results
    are checked against) are built on the tool's first call."""

    _fn: Any = PrivateAttr(default=None)
    _skip: list[str] = PrivateAttr(default_factory=list)

    def _ready(self) -> None:
        fn, self._fn = self._fn, None
        if fn is None:
            return
        built = func_metadata(fn, skip_names=self._skip, structured_output=False)
        self.arg_model = built.arg_model
        ret = typing.get_type_hints(fn, include_extras=True).get("return")
        args = typing.get_args(ret) if typing.get_origin(ret) is typing.Annotated else ()
        if len(args) == 2 and isinstance(args[0], type) and issubclass(args[0], CallToolResult):
            self.output_model = args[1]
        else:  # any other return annotation: let the SDK derive the output model
            full = func_metadata(fn, skip_names=self._skip)
            self.output_model, self.wrap_output = full.output_model, full.wrap_output

    def validate_arguments(self, arguments_to_validate: dict[str, Any]) -> dict[str, Any]:
        self._ready()
        return super().validate_arguments(arguments_to_validate)

    def convert_result(self, result: Any) -> Any:
        self._ready()
        return super().convert_result(result)


# ---- the checks every tool call passes -----------------------------------------------------------


class ToolServer(MCPServer[LifespanResultT]):
    """An MCPServer built from a `ToolSet`, with an explicit state object (what its lifespan yields; tools
    reach it as `ctx.mcp_server.state`). Its `call_tool` is where both `tools/call` and the REST API arrive:
    text that is not valid Unicode and page sizes above the bound are refused there, before any tool runs,
    with one line naming the field. A failed tools/call's result carries the error as structured content
    (`matrix_mcp.sdk.errors`); the REST API, which calls `call_tool` directly, sees the exception."""

    def __init__(self, name: str, toolset: ToolSet, state: LifespanResultT, **kwargs: Any) -> None:
        # outermost of the server's own middleware: every failed tools/call leaves with structured content
        kwargs["middleware"] = [StructuredErrors(), *(kwargs.get("middleware") or ())]
        super().__init__(name, tools=list(toolset.tools), **kwargs)
        self.toolset = toolset
        self.state = state

    def tool_definitions(self) -> dict[str, Tool]:
        """The tools this server was built with, by name."""
        return {t.name: t for t in self.toolset.tools}

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[LifespanResultT, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        try:
            where = lone_surrogate(arguments)
            if where is not None:
                raise ToolError(
                    f"{where}: is not valid Unicode text (lone surrogate); send binary content base64-encoded"
                )
            for key, maximum in self.toolset.bounds.get(name, {}).items():
                if _above(arguments.get(key), maximum):
                    raise ToolError(f"{key}: must be at most {maximum}")
            return await super().call_tool(name, arguments, context)
        except Exception as exc:  # what it was, for the error's structured content (sdk.errors)
            record(exc)
            raise


def _above(value: Any, maximum: int) -> bool:
    """A number (or numeric text, which lax validation would accept) above `maximum`."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return False  # not a number: the argument model says so
    return isinstance(value, int | float) and not isinstance(value, bool) and value > maximum


def lone_surrogate(value: Any) -> str | None:
    """The path of the first string (or key) holding a lone surrogate, else None. Iterative: deep JSON is fine."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        v, path = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return path or "input"
        elif isinstance(v, dict):
            for k, child in v.items():
                key = str(k)
                try:
                    key.encode("utf-8")
                except UnicodeEncodeError:
                    return path or "input"
                stack.append((child, f"{path}.{key}" if path else key))
        elif isinstance(v, list | tuple):
            stack.extend((child, f"{path}[{i}]") for i, child in enumerate(v))
    return None
