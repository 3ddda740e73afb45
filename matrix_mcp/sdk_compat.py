"""The few places we reach into mcp 2.3 internals, kept in one module with its own tests.

- `use_dynamic_mime`: serve a template resource with the mime type of the content it returns.
- `compact_tool_schemas`: drop pydantic's auto-generated titles, validation-only keywords of results and
  the `null` branch of optional inputs — tool definitions cost the client's context. Nothing emits a type
  array (`["string", "null"]`): Gemini's function declarations (an OpenAPI 3.0 subset) reject them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import types
import typing
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from mcp.server import MCPServer
from mcp.server.mcpserver.resources.base import Resource
from mcp.server.mcpserver.resources.templates import ResourceTemplate
from mcp.server.mcpserver.resources.types import FunctionResource
from mcp.server.mcpserver.tools.base import Tool
from mcp.server.mcpserver.utilities.context_injection import find_context_parameter
from mcp.server.mcpserver.utilities.func_metadata import ArgModelBase, FuncMetadata, func_metadata
from mcp.shared._callable_inspection import is_async_callable
from mcp_types import CallToolResult, Icon, ToolAnnotations
from pydantic import PrivateAttr, ValidationError
from pydantic_core import PydanticCustomError

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


def harden_arguments(server: MCPServer[Any]) -> None:
    """Every tool: text arguments kept verbatim, unknown arguments refused (and the input schema says so)."""
    for tool in server._tool_manager.list_tools():
        if type(tool.fn_metadata) is FuncMetadata:
            tool.fn_metadata.__class__ = StrictFuncMetadata
            tool.parameters["additionalProperties"] = False


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


def compact_tool_schemas(server: MCPServer[Any], null_free: Collection[str] = ()) -> None:
    """Compact every tool's schemas (single-use input definitions inlined too); the output schemas of
    tools named in `null_free` (whose results never carry a null) are made lean (`lean_result_schema`)."""
    for tool in server._tool_manager.list_tools():
        if isinstance(tool.fn_metadata, CachedFuncMetadata):
            continue  # precomputed in its final form
        if tool.description:
            tool.description = " ".join(tool.description.split())  # docstring indentation costs context
        tool.parameters = inline_refs(compact_schema(tool.parameters))
        if tool.fn_metadata.output_schema is not None:
            output = inline_refs(compact_schema(tool.fn_metadata.output_schema, output=True))
            tool.fn_metadata.output_schema = lean_result_schema(output) if tool.name in null_free else output


class DynamicMimeTemplate(ResourceTemplate):
    """A resource template whose function returns a `Resource`, served with that resource's mime type."""

    async def create_resource(self, uri: str, params: dict[str, Any], context: Any) -> Any:
        made = await super().create_resource(uri, params, context)
        if isinstance(made, FunctionResource):
            inner = made.fn()
            if isinstance(inner, Resource):
                return inner
        return made


def use_dynamic_mime(server: MCPServer[Any], uri_template: str) -> None:
    templates = server._resource_manager._templates
    templates[uri_template].__class__ = DynamicMimeTemplate


# ---- precomputed tool definitions ----------------------------------------------------------------
#
# Registering a tool makes the SDK build a pydantic argument model and generate two JSON schemas; for our
# 21 tools that is ~65 ms of every start-up, most of the cold start we add to the SDK's own. The final
# (compacted, hardened) definitions are generated once into tool_schemas.json (`python -m
# matrix_mcp.sdk_compat`) and used while its fingerprints match: our sources that shape them (a test
# fails until the file is regenerated) and the SDK's schema code with pydantic's version (another
# release of either simply means tools register the SDK's way). Argument models are built on first call.

TOOL_CACHE = Path(__file__).with_name("tool_schemas.json")
_SHAPING_SOURCES = (
    "server.py",
    "models.py",
    "sdk_compat.py",
    "schema/tools.py",
    "schema/model.py",
    "integrations/tools.py",
    "integrations/models.py",
)
_cache: dict[str, Any] | None = None


def tool_fingerprint() -> dict[str, str]:
    """{"sources": our code that shapes the definitions, "sdk": the SDK's schema code and pydantic}."""
    import mcp.server.mcpserver.tools.base as tool_base
    import mcp.server.mcpserver.utilities.func_metadata as fm
    import pydantic

    here = Path(__file__).parent
    ours = hashlib.sha256()
    for name in _SHAPING_SOURCES:
        ours.update((here / name).read_bytes())
    sdk = hashlib.sha256(pydantic.VERSION.encode())
    for path in (Path(fm.__file__), Path(tool_base.__file__)):
        sdk.update(path.read_bytes())
    return {"sources": ours.hexdigest()[:20], "sdk": sdk.hexdigest()[:20]}


def _cached_definitions(server_name: str) -> dict[str, Any] | None:
    global _cache
    if os.environ.get("MATRIX_TOOL_CACHE", "1") == "0":
        return None
    if _cache is None:
        try:
            data = json.loads(TOOL_CACHE.read_text(encoding="utf-8"))
            _cache = data if data.get("fingerprint") == tool_fingerprint() else {}
        except (OSError, ValueError):
            _cache = {}
        if not _cache:
            log.debug("tool definitions not precomputed for these sources; registering the SDK's way")
    servers = _cache.get("servers", {})
    found: dict[str, Any] | None = servers.get(server_name)
    return found


class CachedFuncMetadata(StrictFuncMetadata):
    """Metadata of a tool registered from precomputed definitions: the argument model (and the output
    model results are checked against) are built on the tool's first call."""

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


def use_tool_cache(server: MCPServer[Any]) -> None:
    """Call right after creating the server: tools it then registers come from tool_schemas.json when
    their definitions there are current."""
    defs = _cached_definitions(server.name)
    if not defs:
        return
    manager = server._tool_manager
    register = manager.add_tool

    def add_tool(
        fn: Callable[..., Any],
        name: str | None = None,
        title: str | None = None,
        description: str | None = None,
        annotations: ToolAnnotations | None = None,
        icons: list[Icon] | None = None,
        meta: dict[str, Any] | None = None,
        structured_output: bool | None = None,
    ) -> Tool:
        entry = defs.get(name or fn.__name__)
        if entry is None or title or description or icons or meta or structured_output is not None:
            return register(fn, name, title, description, annotations, icons, meta, structured_output)
        # recorded with the definitions: finding it means evaluating every annotation of the function
        context_kwarg = entry["context_kwarg"] if "context_kwarg" in entry else find_context_parameter(fn)
        fn_meta = CachedFuncMetadata(arg_model=ArgModelBase, output_schema=entry["output_schema"])
        fn_meta._fn = fn
        fn_meta._skip = [context_kwarg] if context_kwarg else []
        tool = Tool(
            fn=fn,
            name=name or fn.__name__,
            title=None,
            description=entry["description"],
            parameters=entry["parameters"],
            fn_metadata=fn_meta,
            is_async=is_async_callable(fn),
            context_kwarg=context_kwarg,
            annotations=annotations,
        )
        manager._tools.setdefault(tool.name, tool)
        return manager._tools[tool.name]

    manager.add_tool = add_tool  # type: ignore[method-assign]


def tool_definitions(server: MCPServer[Any]) -> dict[str, Any]:
    return {
        t.name: {
            "description": t.description,
            "parameters": t.parameters,
            "output_schema": t.output_schema,
            "context_kwarg": t.context_kwarg,
        }
        for t in server._tool_manager.list_tools()
    }


def write_tool_cache() -> None:
    """Regenerate tool_schemas.json from the code (the SDK's own registration path)."""
    os.environ["MATRIX_TOOL_CACHE"] = "0"
    from matrix_mcp.config import Settings
    from matrix_mcp.server import create_server
    from servers.database_schema import build_server

    servers = {
        "matrix": tool_definitions(create_server(Settings(database_url="sqlite:///:memory:"))),
        "database-schema": tool_definitions(build_server("sqlite:///:memory:")),
    }
    data = {"fingerprint": tool_fingerprint(), "servers": servers}
    TOOL_CACHE.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    log.warning("wrote %s (%d tools)", TOOL_CACHE, sum(len(s) for s in servers.values()))


if __name__ == "__main__":
    write_tool_cache()
