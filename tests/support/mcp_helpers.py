"""Calls through the MCP face (the SDK's in-memory Client) that check the result's shape: a tool's
structured result, or its error as one JSON object that is also the text content."""

from __future__ import annotations

import json
from typing import Any

from mcp.client import Client


async def call(client: Client, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return dict(result.structured_content)


async def call_error(client: Client, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    assert result.is_error and result.structured_content is not None, result.content
    assert json.loads(getattr(result.content[0], "text", "")) == result.structured_content
    return dict(result.structured_content)
