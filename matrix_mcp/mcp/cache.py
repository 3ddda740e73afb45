"""`python -m matrix_mcp.mcp.cache`: write the tool definition cache of both servers ahead of time (in a
container image, say), so that their first start builds no tool the SDK's way (`sdk.compat.build_tools`)."""

from __future__ import annotations

import sys

from matrix_mcp.mcp import registry
from matrix_mcp.mcp.tools import schema
from matrix_mcp.sdk.compat import write_cache


def warm_cache() -> None:
    for name, specs in (("matrix", registry.TOOLS), ("database-schema", schema.SPECS)):
        path = write_cache(name, specs)
        print(
            f"{name}: {len(specs)} tools {'cached in ' + str(path) if path is not None else 'not cached'}",
            file=sys.stderr,
        )


if __name__ == "__main__":
    warm_cache()
