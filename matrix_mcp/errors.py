"""The error vocabulary: what the store, the artifacts and the engine raise on purpose.

Every message is one line and safe to show a client; `field` names the argument or setting at fault.
This module imports nothing of the project, so any layer can raise these without importing a store.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base of every error raised on purpose. The message is safe to show a client."""

    field: str | None = None

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NotFound(StoreError):
    """A run, package or outcome that does not exist."""


class Conflict(StoreError):
    """The request contradicts the current state (a different report for a finished item...)."""


class StaleLease(Conflict):
    """The lease token is not the item's current one: it expired and was re-claimed, or never was."""


class Unavailable(StoreError):
    """The database cannot be reached right now; the call may be retried."""

    retryable = True
