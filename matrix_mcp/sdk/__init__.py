"""The adapter to the MCP SDK, below everything else of the project.

- `compat`: tool definitions built with the SDK's public API, their cache, and the checks every tool call
  passes (`ToolServer`).
- `errors`: a failed tool call's result with its error as structured content (kind by the error's type).
- `private`: every use of the SDK's internals, each pinned by a test (tests/sdk/test_sdk_private.py).
"""
