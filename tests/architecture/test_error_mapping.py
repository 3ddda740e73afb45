"""Errors reach clients by their type, never by their message text: each error type has its REST status and
code and its MCP answer, whatever its message says (a Conflict whose message reads "not found" stays a
409), and the message a client reads is the error's own text, field first."""

from __future__ import annotations

from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel

from matrix_mcp import engine as engine_package
from matrix_mcp import errors
from matrix_mcp.artifacts import ArtifactError
from matrix_mcp.config import Settings
from matrix_mcp.errors import (
    STARTING,
    Conflict,
    InputError,
    MatrixError,
    NotFound,
    StaleLease,
    StoreError,
    Unavailable,
)
from matrix_mcp.http.rest import classify
from matrix_mcp.mcp.server import create_server
from matrix_mcp.mcp.state import ServerState

pytestmark = pytest.mark.anyio

EXPECTED = [
    (InputError, 400, "invalid_argument"),
    (NotFound, 404, "not_found"),
    (Conflict, 409, "conflict"),
    (StaleLease, 409, "stale_lease"),
    (Unavailable, 503, "unavailable"),
    (ArtifactError, 400, "invalid_argument"),
    (MatrixError, 400, "invalid_argument"),
]
# messages that name another class's answer: a mapping that reads the text would be misled by them
MISLEADING = [
    "unknown outcome 'x' not found",
    "outcome 'x' has no stored content",
    "the server is starting or stopping; retry",
    "the lease is stale: a conflict",
    "retryable: the database is unavailable",
]


@pytest.fixture
def state(tmp_path: Path) -> ServerState:
    """A server's state before start-up (no engine): enough to map errors."""
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}", artifacts_dir=tmp_path / "artifacts")
    return create_server(settings).state


def _as_a_tool_raises(error: MatrixError) -> ToolError:
    """The chain a tool call leaves for REST: the SDK's ToolError above ours, above the error itself."""
    try:
        try:
            raise ToolError(f"{error.field}: {error}" if error.field else str(error)) from error
        except ToolError as ours:
            raise ToolError("Error executing tool x") from ours
    except ToolError as outer:
        return outer


@pytest.mark.parametrize(("kind", "status", "code"), EXPECTED)
@pytest.mark.parametrize("message", MISLEADING)
def test_rest_answers_each_error_type_with_its_status_whatever_the_message(
    kind: type[MatrixError], status: int, code: str, message: str
) -> None:
    error = kind(message, "outcome_id")
    for raised in (error, _as_a_tool_raises(error)):
        answer = classify(raised)
        assert (answer.status, answer.code, answer.field) == (status, code, "outcome_id")
        assert answer.message == f"outcome_id: {message}"  # the error's own text, unchanged
        assert (answer.headers or {}).get("Retry-After") == ("1" if status == 503 else None)


@pytest.mark.parametrize("message", MISLEADING)
def test_a_tool_error_of_no_matrix_type_is_a_bad_request_whatever_it_says(message: str) -> None:
    """An SDK ToolError (an unknown tool, arguments its schema refuses) has no type of ours: 400, even if its
    text reads like another answer's."""
    answer = classify(ToolError(message))
    assert (answer.status, answer.code, answer.message) == (400, "invalid_argument", message)


def test_the_starting_server_answers_unavailable_by_type(state: ServerState) -> None:
    with pytest.raises(ToolError) as raised:
        state.engine()
    assert str(raised.value) == STARTING  # the text an MCP client reads, as before
    assert isinstance(raised.value.__cause__, Unavailable)
    answer = classify(raised.value)
    assert (answer.status, answer.code, answer.message) == (503, "unavailable", STARTING)


async def test_a_rest_call_before_start_up_is_unavailable(tmp_path: Path) -> None:
    """The whole chain: the SDK runs the tool, the tool finds no engine, REST answers 503."""
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}", artifacts_dir=tmp_path / "artifacts")
    mcp = create_server(settings)
    with pytest.raises(Exception) as raised:
        await mcp.call_tool("list_runs", {})
    answer = classify(raised.value)
    assert (answer.status, answer.code, answer.message) == (503, "unavailable", STARTING)


async def _fails(error: BaseException) -> Any:
    raise error


def _model_call(state: ServerState, error: MatrixError) -> Awaitable[Any]:
    async def fail() -> BaseModel:
        raise error

    return state.call(fail())


@pytest.mark.parametrize(("kind", "status", "code"), EXPECTED)
@pytest.mark.parametrize("message", MISLEADING)
async def test_mcp_tools_and_resources_answer_each_error_type_whatever_the_message(
    state: ServerState, kind: type[MatrixError], status: int, code: str, message: str
) -> None:
    error = kind(message, "run")
    with pytest.raises(ToolError) as tool:
        await _model_call(state, error)
    expected = f"retryable: {message}" if kind is Unavailable else f"run: {message}"
    assert str(tool.value) == expected and tool.value.__cause__ is error

    with pytest.raises(Exception) as read:
        await state.read(_fails(kind(message, "run")))
    if kind is NotFound:
        assert type(read.value) is ResourceNotFoundError and str(read.value) == f"run: {message}"
    elif kind is InputError:
        assert isinstance(read.value, MCPError) and read.value.error.code == -32602
        assert read.value.error.message == f"run: {message}"
    else:
        assert type(read.value) is ResourceError and str(read.value) == message


def test_the_base_keeps_its_former_name_and_input_error_its_old_import() -> None:
    assert StoreError is MatrixError
    assert engine_package.InputError is InputError is errors.InputError
    assert all(issubclass(kind, MatrixError) for kind, _, _ in EXPECTED)
