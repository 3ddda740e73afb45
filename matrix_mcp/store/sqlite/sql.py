"""SQL text of the SQLite store that more than one of its modules uses."""

from __future__ import annotations

from functools import cache

from matrix_mcp.models import (
    STATUSES,
)

RUN_SELECT = """
SELECT r.*, COUNT(p.id) AS packages,
       COALESCE(SUM(p.pending), 0) AS pending, COALESCE(SUM(p.generating), 0) AS generating,
       COALESCE(SUM(p.complete), 0) AS complete, COALESCE(SUM(p.failed), 0) AS failed,
       COALESCE(SUM(p.cancelled), 0) AS cancelled
FROM runs r LEFT JOIN packages p ON p.run_id = r.id
"""


OUTCOME_SELECT = """
SELECT o.*, r.name AS run_name, r.max_attempts AS max_attempts, p.name AS package_name,
p.duration_hist AS package_duration_hist
FROM outcomes o JOIN runs r ON r.id = o.run_id JOIN packages p ON p.id = o.package_id
"""


COUNTER_COLUMNS = ("duration_sum", "duration_n", "lines_sum", "quality_sum", "quality_n")


# Status counter columns are a closed set: one prepared statement per (from, to) pair.
MOVE_SQL = {
    (a, b): "UPDATE packages SET " + a + " = " + a + " - 1, " + b + " = " + b + " + 1 WHERE id = ?"
    for a in STATUSES
    for b in STATUSES
    if a != b
}


MOVE_CONTRIB_SQL = {
    (a, b): "UPDATE packages SET "
    + a
    + " = "
    + a
    + " - 1, "
    + b
    + " = "
    + b
    + " + 1, duration_sum = duration_sum + ?,"
    " duration_n = duration_n + ?, lines_sum = lines_sum + ?, quality_sum = quality_sum + ?,"
    " quality_n = quality_n + ? WHERE id = ?"
    for a in STATUSES
    for b in STATUSES
    if a != b
}


# a completion with a duration: status move, summary sums and the duration histogram in one statement
COMPLETE_SQL = {
    move: text.replace(" WHERE id = ?", ", duration_hist = ? WHERE id = ?")
    for move, text in MOVE_CONTRIB_SQL.items()
}


# a claim's counter move (rules.CLAIMED_MOVE) with the package's fairness clock
CLAIM_MOVE_SQL = (
    "UPDATE packages SET pending = pending - 1, generating = generating + 1, last_claim = ? WHERE id = ?"
)


# when a short claim may ask again: the earliest time of the column rules.why_nothing names
EARLIEST = {
    "available_at": "SELECT MIN(available_at) FROM outcomes WHERE run_id = ? AND status = 'pending'",
    "lease_expires_at": "SELECT MIN(lease_expires_at) FROM outcomes WHERE run_id = ? AND status = 'generating'",
}


@cache
def update_outcome(columns: tuple[str, ...]) -> str:
    """The UPDATE of one outcome row (by `n`) that a rules.Transition's values make: one text per transition
    shape, so each stays a cached prepared statement. Column names come from rules, never from input."""
    return "UPDATE outcomes SET " + ", ".join(c + " = ?" for c in columns) + " WHERE n = ?"


END_ATTEMPT = (
    "UPDATE outcome_attempts SET status = ?, error = ?, ended_at = ? WHERE outcome_id = ? AND lease_token = ?"
)


CLEAR_METRICS = "DELETE FROM outcome_metrics WHERE outcome_id = ?"


INSERT_METRIC = "INSERT INTO outcome_metrics (outcome_id, name, value) VALUES (?, ?, ?)"


INSERT_EVENT = "INSERT INTO events (run_id, outcome_id, kind, data, created_at) VALUES (?, ?, ?, ?, ?)"


# a run's finished items, their earliest start and latest finish (run_status of a finished run)
FINISHED_SPAN = (
    "SELECT COUNT(*), MIN(started_at), MAX(completed_at) FROM outcomes"
    " WHERE run_id = ? AND status IN ('complete', 'failed')"
)


FORGET_REVOKED_SESSIONS = "DELETE FROM revoked_sessions WHERE expires_at < ?"


REVOKE_SESSION = "INSERT OR IGNORE INTO revoked_sessions (session_id, expires_at) VALUES (?, ?)"


SESSION_REVOKED = "SELECT 1 FROM revoked_sessions WHERE session_id = ?"
