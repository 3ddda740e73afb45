"""Matrix MCP: durable N×M orchestration for AI agents over the Model Context Protocol."""

__version__ = "0.2.0"
