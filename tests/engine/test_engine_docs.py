"""The engine is the one use-case layer every face calls: each public method says what it does, names
every argument under Args and, where it refuses anything on purpose, what it raises under Raises."""

from __future__ import annotations

import inspect
import re

from matrix_mcp import errors
from matrix_mcp.artifacts import ArtifactError
from matrix_mcp.engine import Engine

ERROR_NAMES = {name for name, value in vars(errors).items() if isinstance(value, type)} | {
    ArtifactError.__name__,
    ValueError.__name__,
}


def _public() -> dict[str, object]:
    return {
        name: fn
        for name, fn in inspect.getmembers(Engine, lambda m: inspect.isfunction(m) or inspect.ismethod(m))
        if not name.startswith("_")
    }


def _section(doc: str, title: str) -> list[str]:
    """The names a Google-style section lists (`name: what...`, indented under `title:`)."""
    match = re.search(rf"^{title}:\n((?:(?:    .*)?\n)+)", doc + "\n", re.MULTILINE)
    if match is None:
        return []
    return re.findall(r"^    (\w+):", match.group(1), re.MULTILINE)


def test_every_public_engine_method_documents_its_arguments_and_errors() -> None:
    methods = _public()
    assert {"plan_run", "claim_items", "complete_item", "fail_item", "run_status", "outcome_content"} <= set(
        methods
    )
    for name, fn in methods.items():
        doc = inspect.getdoc(fn)
        assert doc, f"Engine.{name} has no docstring"
        parameters = [p for p in inspect.signature(fn).parameters if p not in ("self", "cls")]
        if parameters:
            assert _section(doc, "Args") == parameters, f"Engine.{name}: Args must list {parameters} in order"
        raised = _section(doc, "Raises")
        assert set(raised) <= ERROR_NAMES, f"Engine.{name} raises unknown {set(raised) - ERROR_NAMES}"


def test_the_methods_that_refuse_input_say_so() -> None:
    """A method whose code raises an error type on purpose lists it (a raise the docs forgot fails here)."""
    for name, fn in _public().items():
        source = inspect.getsource(inspect.unwrap(fn))  # type: ignore[arg-type]
        raised = set(re.findall(r"raise (\w+)\(", source)) & ERROR_NAMES
        listed = set(_section(inspect.getdoc(fn) or "", "Raises"))
        assert raised <= listed, f"Engine.{name} raises {raised - listed} without saying so"
