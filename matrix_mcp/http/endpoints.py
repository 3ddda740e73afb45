"""The REST API's endpoints under /api/v1: data, derived from the tool registry.

Each endpoint is one MCP tool over plain HTTP, declared in its `ToolSpec` (`mcp/registry.py`); the REST
handlers (`http/rest.py`) and the OpenAPI document (`http/openapi.py`) both read this table.
"""

from __future__ import annotations

from matrix_mcp.mcp import registry
from matrix_mcp.mcp.spec import Endpoint as Endpoint  # the type of each row, for the REST side

PREFIX = "/api/v1"
ENDPOINTS: tuple[Endpoint, ...] = registry.endpoints()
