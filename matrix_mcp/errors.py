"""The error vocabulary: what the store, the artifacts, the engine and the services raise on purpose.

Every message is one line and safe to show a client; `field` names the argument or setting at fault.
Each face maps these by type, never by message text: REST to a status code (`http/rest.py` `classify`),
MCP to a tool error or a resource error code (`server.py`). This module imports nothing of the project,
so any layer can raise these without importing a store.

| type          | meaning                                        | REST                    | MCP resource |
|---------------|------------------------------------------------|-------------------------|--------------|
| `InputError`  | a bad argument                                 | 400 invalid_argument    | -32602       |
| `NotFound`    | no such run, package, outcome (or its content) | 404 not_found           | -32602       |
| `Conflict`    | contradicts the current state                  | 409 conflict            | -32603       |
| `StaleLease`  | the lease token is not the current one         | 409 stale_lease         | -32603       |
| `Unavailable` | starting, stopping, or the database is away    | 503 unavailable         | -32603       |
| `MatrixError` | any other refusal (an unwritable artifact...)  | 400 invalid_argument    | -32603       |
"""

from __future__ import annotations


class MatrixError(Exception):
    """Base of every error raised on purpose. The message is safe to show a client."""

    field: str | None = None

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


StoreError = MatrixError
"""The base's former name, kept so code written against it keeps working."""


class InputError(MatrixError):
    """A bad argument: the message names the field."""


class NotFound(MatrixError):
    """A run, package or outcome that does not exist, or content an outcome does not have."""


class Conflict(MatrixError):
    """The request contradicts the current state (a different report for a finished item...)."""


class StaleLease(Conflict):
    """The lease token is not the item's current one: it expired and was re-claimed, or never was."""


class Unavailable(MatrixError):
    """The server is starting or stopping, or the database cannot be reached right now; the call may be
    retried."""

    retryable = True


# Each type's kind, the most specific first (a StaleLease is also a Conflict): the `kind` of a failed tool
# call's structured content (matrix_mcp.sdk.errors), the same word as the REST answer's `error` code.
KINDS: tuple[tuple[type[MatrixError], str], ...] = (
    (Unavailable, "unavailable"),
    (StaleLease, "stale_lease"),
    (Conflict, "conflict"),
    (NotFound, "not_found"),
    (InputError, "invalid_argument"),
    (MatrixError, "invalid_argument"),
)


def kind_of(error: MatrixError) -> str:
    """The kind of `error`, by its type (never by its message)."""
    return next(kind for cls, kind in KINDS if isinstance(error, cls))


STARTING = "the server is starting or stopping; retry"
"""What a call is told while the server has no engine (before start-up completes, or after shut-down)."""


def starting() -> Unavailable:
    """The error of a call made while the server is starting or stopping."""
    return Unavailable(STARTING)
