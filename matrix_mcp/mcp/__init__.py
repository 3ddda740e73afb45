"""The MCP face: the Matrix server (`server`), its state (`state`), the tool registry (`registry`, with the
tools in `tools/`), resources, prompts, notifications and toolsets.

Named `matrix_mcp.mcp`, beside the SDK's top-level `mcp` package: every import here is absolute, so
`import mcp` / `from mcp.server import …` always mean the SDK.
"""
