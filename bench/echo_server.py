"""The SDK's floor: a stdio MCPServer with one trivial async tool. Used by bench_stdio.py."""

from mcp.server import MCPServer

mcp = MCPServer("echo")


@mcp.tool()
async def echo(text: str) -> str:
    """Return the text."""
    return text


if __name__ == "__main__":
    mcp.run()
