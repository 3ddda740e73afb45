"""The run grid as an MCP App (`io.modelcontextprotocol/ui`): hosts that render MCP Apps (Claude Desktop,
VS Code, ChatGPT, Goose, Cursor) show a run's N×M grid, its failures and an item's detail beside a
`run_status` result; hosts without Apps support read the same result as before.

- `GRID_URI` is a `ui://` resource, `text/html;profile=mcp-app`: one self-contained document (inline script
  and style, no URL outside itself), whose `_meta.ui.csp` asks for no network at all.
- `run_status` carries `_meta.ui.resourceUri` (and the older flat `ui/resourceUri` key) pointing at it.
- The view calls the server's tools through the host (`tools/call`), and only those the reader may call:
  the document is rendered per read with the names of the tools this connection lists and the caller's
  scopes allow (`audit.current_tool_access`, set by the HTTP scope gate), so a read-only caller gets a
  view without action buttons, and retry appears only where `retry_items` is listed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import cache
from importlib import resources
from typing import Any

from mcp.server.apps import APP_MIME_TYPE, Apps, ResourceCsp

from matrix_mcp.audit import current_tool_access
from matrix_mcp.mcp.spec import READ, ResourceSpec

GRID_URI = "ui://matrix/grid.html"
# the view's resource; whoever may read a run may read its view (mcp/registry.py lists it)
GRID = ResourceSpec(
    uri=GRID_URI,
    name="run_grid",
    title="Run grid",
    description="A run's N×M grid, failures and item detail (MCP Apps view for run_status).",
    mime_type=APP_MIME_TYPE,
    scope=READ,
)
# the tools the view may call, in the order it uses them; the document names only those the reader may call
VIEW_TOOLS = ("run_status", "list_outcomes", "get_outcome", "retry_items")
# where the document's own script reads the tool names from (a JSON island, never executed)
_TOOLS_SLOT = '<script type="application/json" id="matrix-tools">[]</script>'


def grid_tool_meta() -> dict[str, Any]:
    """The `_meta` of a tool whose results the grid view renders: the Apps extension's `ui.resourceUri`,
    and the flat `ui/resourceUri` key hosts from before the nested form still read."""
    return {"ui": {"resourceUri": GRID_URI}, "ui/resourceUri": GRID_URI}


@cache
def grid_template() -> str:
    """The view's document as shipped (package data beside this module), read once."""
    text = resources.files(__name__).joinpath("grid.html").read_text(encoding="utf-8")
    if text.count(_TOOLS_SLOT) != 1:
        raise RuntimeError(f"{__name__}/grid.html: expected one {_TOOLS_SLOT!r}")
    return text


def grid_html(listed: Iterable[str]) -> str:
    """The view's document for the caller of this request: it names the view's tools that the connection
    lists (`listed`) and the caller may call. JSON inside a script element: `<` is escaped so no name can
    close the element."""
    may_call = current_tool_access.get()
    available = set(listed)
    names = [n for n in VIEW_TOOLS if n in available and (may_call is None or may_call(n))]
    island = json.dumps(names).replace("<", "\\u003c")
    return grid_template().replace(_TOOLS_SLOT, _TOOLS_SLOT.replace("[]", island))


def grid_app(listed: Iterable[str]) -> Apps:
    """The Apps extension with the grid view: advertised under `capabilities.extensions` and listed
    among the resources. `listed`: the names of the tools this server lists."""
    names = frozenset(listed)
    apps = Apps()
    apps.add_resource(
        GRID.resource(
            lambda: grid_html(names),
            # no domains: no fetch, no external script, style, image or frame
            meta={
                "ui": {
                    "csp": ResourceCsp(connect_domains=[], resource_domains=[]).model_dump(
                        by_alias=True, exclude_none=True
                    )
                }
            },
        )
    )
    return apps
