"""The command line face, `matrix-mcp`: a thin layer over the engine and the servers.

- `main`: the parser and the dispatch (`matrix-mcp` with no command serves stdio); `main.main` is the
  console script, re-exported here as `matrix_mcp.cli.main` (the function: import other names with
  `from matrix_mcp.cli.main import …`).
- `format`: what `status`, `demo` and `work` print, and `server_command`.
- `demo`, `work`, `keys`, `hooks` (webhooks and `dispatch`): one module per command group, imported only
  when that command runs.
- `progress`: the live progress line of `demo` and `work`.
"""

from matrix_mcp.cli.main import main

__all__ = ["main"]
