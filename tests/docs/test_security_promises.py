"""The security page (docs/design/security.md): every promise names a test, and every test it names exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
NODE = re.compile(r"(tests/[\w/]+\.py)::(\w+)")


def security_rows() -> list[str]:
    section = (ROOT / "docs" / "design" / "security.md").read_text(encoding="utf-8")
    return [line for line in section.splitlines() if line.startswith("| ") and "| promise |" not in line]


def test_every_security_promise_names_a_test_that_exists() -> None:
    rows = security_rows()
    assert len(rows) >= 40, "the security table went missing from docs/design/security.md"
    for row in rows:
        nodes = NODE.findall(row)
        assert nodes, f"a promise without a test: {row[:80]}"
        for path, name in nodes:
            tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
            defined = {
                n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
            }
            assert name in defined, f"{path}::{name} is named in docs/design/security.md but not defined"
