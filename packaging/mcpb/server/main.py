"""Start Matrix MCP (stdio) from its MCPB bundle.

Everything the server imports is in `lib/` beside this file (the manifest also puts it on PYTHONPATH). Its
compiled parts (pydantic-core, cryptography, psycopg's binary build) match one platform and one Python minor,
named in `bundle.json`: another Python is refused in one line here, not with an import error from deep inside
a dependency.
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def check_python() -> None:
    built = json.loads((HERE / "bundle.json").read_text(encoding="utf-8"))
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    if running != built["python"]:
        sys.exit(
            f"matrix-mcp bundle: built for Python {built['python']} ({built['platform']}), "
            f"started with Python {running} ({sys.executable}); install Python {built['python']}, "
            "or install the matrix-mcp package from PyPI instead of this bundle"
        )


if __name__ == "__main__":
    check_python()
    sys.path.insert(0, str(HERE / "lib"))
    from matrix_mcp.cli import main

    main()
