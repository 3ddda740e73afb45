"""SQL text of the SQLite store that more than one of its modules uses."""

from __future__ import annotations

from functools import cache

from matrix_mcp.models import STATUSES

# a run with its summed package counters, and when its last event was written (a finished run's
# updated_at: see rows.run_from)
RUN_SELECT = """
SELECT r.*, COUNT(p.id) AS packages,
       COALESCE(SUM(p.pending), 0) AS pending, COALESCE(SUM(p.generating), 0) AS generating,
       COALESCE(SUM(p.complete), 0) AS complete, COALESCE(SUM(p.failed), 0) AS failed,
       COALESCE(SUM(p.cancelled), 0) AS cancelled, COALESCE(SUM(p.blocked), 0) AS blocked,
       COALESCE(SUM(p.in_review), 0) AS in_review,
       (SELECT e.created_at FROM events e WHERE e.run_id = r.id ORDER BY e.seq DESC LIMIT 1) AS last_event_at
FROM runs r LEFT JOIN packages p ON p.run_id = r.id
"""


OUTCOME_SELECT = """
SELECT o.*, r.name AS run_name, r.max_attempts AS max_attempts, p.name AS package_name,
p.duration_hist AS package_duration_hist, p.has_dependents AS package_has_dependents,
r.review AS run_review, p.review AS package_review
FROM outcomes o JOIN runs r ON r.id = o.run_id JOIN packages p ON p.id = o.package_id
"""


COUNTER_COLUMNS = ("duration_sum", "duration_n", "lines_sum", "quality_sum", "quality_n")


# the statuses the packages table keeps a counter column for (REBUILD_COUNTERS_UPDATE_PACKAGES's order)
COUNTED_STATUSES = STATUSES


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
MOVE_CLOCK_SQL = {
    move: text.replace(" WHERE id = ?", ", last_claim = ? WHERE id = ?") for move, text in MOVE_SQL.items()
}


# a set-based move (rules.Move) of n items of one package
MOVE_N_SQL = {
    (a, b): "UPDATE packages SET " + a + " = " + a + " - ?, " + b + " = " + b + " + ? WHERE id = ?"
    for a in STATUSES
    for b in STATUSES
    if a != b
}


# the packages a claim serves (all of the run's, or the one named): highest priority first, then least
# recently served (rules.claim_order; max_item_priority bounds what a package's items can offer)
_CLAIMABLE = (
    "SELECT id, name, description, priority, max_item_priority, max_concurrent, generating, last_claim,"
    " position FROM packages WHERE run_id = ? AND pending > 0"
)


CLAIMABLE_PACKAGES = _CLAIMABLE + " ORDER BY priority DESC, max_item_priority DESC, last_claim, position"


CLAIMABLE_PACKAGE = _CLAIMABLE + " AND name = ?"


# what is left in a run's queue (or one package's) when a claim came back short: pending, leased, packages
QUEUE_COUNTS = (
    "SELECT COALESCE(SUM(pending),0), COALESCE(SUM(generating),0), COUNT(*), COALESCE(SUM(blocked),0),"
    " COALESCE(SUM(in_review),0) FROM packages WHERE run_id = ?"
)


QUEUE_COUNTS_OF_PACKAGE = QUEUE_COUNTS + " AND name = ?"


# when a short claim may ask again: the earliest time of the column rules.why_nothing names
EARLIEST = {
    "available_at": "SELECT MIN(available_at) FROM outcomes WHERE run_id = ? AND status = 'pending'",
    "lease_expires_at": "SELECT MIN(lease_expires_at) FROM outcomes WHERE run_id = ? AND status = 'generating'",
}


# EARLIEST narrowed to one package of the run (run_id, name)
IN_PACKAGE = " AND package_id IN (SELECT id FROM packages WHERE run_id = ? AND name = ?)"


@cache
def update_outcome(columns: tuple[str, ...]) -> str:
    """The UPDATE of one outcome row (by `n`) that a rules.Transition's values make: one text per transition
    shape, so each stays a cached prepared statement. Column names come from rules, never from input."""
    return "UPDATE outcomes SET " + ", ".join(c + " = ?" for c in columns) + " WHERE n = ?"


@cache
def update_run_outcomes(columns: tuple[str, ...]) -> str:
    """The UPDATE of a run's outcomes in one status (run_id, status bound last) that a rules.Move's values
    make."""
    return (
        "UPDATE outcomes SET " + ", ".join(c + " = ?" for c in columns) + " WHERE run_id = ? AND status = ?"
    )


COUNT_IN_STATUS = (
    "SELECT package_id, COUNT(*) FROM outcomes WHERE run_id = ? AND status = ? GROUP BY package_id"
)


START_ATTEMPT = (
    "INSERT INTO outcome_attempts (outcome_id, attempt, lease_token, worker, principal, status, started_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)


END_ATTEMPT = (
    "UPDATE outcome_attempts SET status = ?, error = ?, ended_at = ? WHERE outcome_id = ? AND lease_token = ?"
)


# an attempt's end with the usage its report gave (as reported: NULL where a field was not given)
END_ATTEMPT_USAGE = (
    "UPDATE outcome_attempts SET status = ?, error = ?, ended_at = ?, input_tokens = ?, output_tokens = ?,"
    " cache_read_tokens = ?, cache_creation_tokens = ?, cost_usd = ?, model = ?"
    " WHERE outcome_id = ? AND lease_token = ?"
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


# ---- runs.py ----------------------------------------------------------------------------------------


RESOLVE_RUN_ID = "SELECT id FROM runs WHERE id = ? OR name = ? ORDER BY id = ? DESC LIMIT 1"


PLAN_SELECT_RUNS = "SELECT id, state FROM runs WHERE name = ?"


PLAN_INSERT_RUNS = (
    "INSERT INTO runs (id, name, goal, outcome_type, lease_seconds, max_attempts, backoff_seconds, "
    "backoff_cap_seconds, outcome_schema, max_concurrent, on_dependency_failure, review, max_cost_usd,"
    " max_tokens, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


RUN_OUTCOME_TYPE = "SELECT outcome_type FROM runs WHERE id = ?"


NEXT_PACKAGE_POSITION = "SELECT COALESCE(MAX(position) + 1, 0) FROM packages WHERE run_id = ?"


PACKAGE_ID = "SELECT id FROM packages WHERE run_id = ? AND name = ?"


PLAN_INSERT_PACKAGES = (
    "INSERT INTO packages (run_id, name, description, position, priority, max_concurrent, after,"
    " max_item_priority, review) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


# a package a plan extends: its id and whether it is done for its dependents (policy.package_grew)
PLAN_PACKAGE = "SELECT id, complete, total, has_dependents FROM packages WHERE run_id = ? AND name = ?"


PLAN_ITEM_PRIORITY = "UPDATE packages SET max_item_priority = MAX(max_item_priority, ?) WHERE id = ?"


# the items a plan added to a package (positions from the package's next one on)
PLAN_NEW_ITEMS = "SELECT n, item FROM outcomes WHERE package_id = ? AND position >= ?"


NEXT_ITEM_POSITION = "SELECT COALESCE(MAX(position) + 1, 0) FROM outcomes WHERE package_id = ?"


PLAN_INSERT_OUTCOMES = (
    "INSERT OR IGNORE INTO outcomes (id, run_id, package_id, item, position, status, outcome_type, "
    "specifications, available_at, created_at, updated_at, priority, locks) VALUES (?, ?, ?, ?, ?, "
    "'pending', ?, ?, ?, ?, ?, ?, ?)"
)


PLAN_UPDATE_PACKAGES = "UPDATE packages SET total = total + ?, pending = pending + ? WHERE id = ?"


PLAN_UPDATE_RUNS = "UPDATE runs SET updated_at = ? WHERE id = ?"


RUN_STATE = "SELECT state FROM runs WHERE id = ?"


# a state set by hand says no reason (a budget's pause says its own: RUN_PAUSE_FOR_BUDGET)
CONTROL_RUN_UPDATE_RUNS = "UPDATE runs SET state = ?, updated_at = ?, paused_reason = NULL WHERE id = ?"


RUN_OVERVIEW_SELECT_OUTCOME_MINUTES = (
    "SELECT COALESCE(SUM(completed + failed), 0) FROM outcome_minutes WHERE run_id = ? AND minute >= ?"
)


LATEST_SEQ = "SELECT COALESCE(MAX(seq), 0) FROM events"


# ---- work.py ----------------------------------------------------------------------------------------


SWEEP_SELECT_OUTCOMES = (
    "SELECT o.n, o.id, o.run_id, o.item, o.package_id, o.attempts, o.lease_token, o.started_at, o.locks, "
    "o.priority, r.max_attempts, r.state, p.name AS package_name, p.has_dependents AS package_has_dependents FROM outcomes o JOIN runs r ON r.id = o.run_id "
    "JOIN packages p ON p.id = o.package_id WHERE o.run_id = ? AND o.status = 'generating' AND "
    "o.lease_expires_at <= ? LIMIT ?"
)


CLAIM_NOW_SELECT_RUNS = "SELECT name, state, lease_seconds, max_concurrent FROM runs WHERE id = ?"


RUN_GENERATING = "SELECT COALESCE(SUM(generating), 0) FROM packages WHERE run_id = ?"


# a package's items a claim may lease now, in rules.claim_order (index outcomes_claimable)
CLAIM_CANDIDATES = (
    "SELECT n, id, item, attempts, outcome_type, specifications, outcome_path, priority, locks, available_at,"
    " position, error_message IS NOT NULL AS retried FROM outcomes"
    " WHERE package_id = ? AND status = 'pending' AND available_at <= ?"
    " ORDER BY priority DESC, available_at, position LIMIT ?"
)


CLAIM_NEXT_SELECT_OUTCOME_ATTEMPTS = (
    "SELECT ended_at, worker FROM outcome_attempts WHERE outcome_id = ? AND lease_token = ?"
)


CLAIM_NEXT_SELECT_OUTCOMES = (
    "SELECT o.id, o.item, o.attempts, o.lease_token, o.lease_expires_at, o.outcome_type, "
    "o.specifications, o.outcome_path, o.error_message IS NOT NULL AS retried, p.name AS package_name, "
    "p.description AS package_description, r.name AS run_name FROM outcomes o JOIN packages p ON p.id = o.package_id JOIN runs r ON r.id = "
    "o.run_id WHERE o.run_id = ? AND o.status = 'generating' AND o.worker = ? AND o.started_at = ? "
    "ORDER BY o.n LIMIT ?"
)


WHY_NOTHING_SELECT_PACKAGES = "SELECT COALESCE(SUM(total),0) FROM packages WHERE run_id = ?"


HEARTBEAT_SELECT_OUTCOMES = (
    "SELECT o.n, o.status, o.lease_token, o.lease_expires_at, o.locks, r.state, r.lease_seconds"
    " FROM outcomes o JOIN runs r ON "
    "r.id = o.run_id WHERE o.id = ?"
)


COMPLETE_INSERT_CONTENTS = "INSERT INTO contents (sha256, body) VALUES (?, ?) ON CONFLICT DO NOTHING"


FAIL_SELECT_OUTCOME_ATTEMPTS = (
    "SELECT status, error FROM outcome_attempts WHERE outcome_id = ? AND lease_token = ?"
)


FAIL_SELECT_RUNS = "SELECT state, max_attempts FROM runs WHERE id = ?"


# a retry's candidates: the run's items in the status rules.retry moves (or one package's)
_RETRY_SELECT = (
    "SELECT o.n, o.id, o.package_id, o.priority FROM outcomes o WHERE o.run_id = ? AND o.status = ?"
)


RETRY_SELECT_OUTCOMES = _RETRY_SELECT + " ORDER BY o.n"


RETRY_SELECT_PACKAGE_OUTCOMES = _RETRY_SELECT + " AND o.package_id = ? ORDER BY o.n"


# ---- tracking.py ------------------------------------------------------------------------------------


SET_STATUS_SELECT_OUTCOMES = (
    "SELECT o.*, r.lease_seconds, p.name AS package_name, p.has_dependents AS package_has_dependents"
    " FROM outcomes o JOIN runs r ON r.id = o.run_id JOIN packages p ON p.id = o.package_id WHERE o.id = ?"
)


RECORD_OUTCOME_SELECT_RUNS = "SELECT outcome_type, state FROM runs WHERE id = ?"


RECORD_OUTCOME_INSERT_PACKAGES = "INSERT INTO packages (run_id, name, position) VALUES (?, ?, ?)"


RECORD_OUTCOME_SELECT_OUTCOMES = "SELECT id FROM outcomes WHERE package_id = ? AND item = ?"


RECORD_OUTCOME_INSERT_OUTCOMES = (
    "INSERT INTO outcomes (id, run_id, package_id, item, position, status, outcome_type, "
    "specifications, created_by, available_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, "
    "'pending', ?, ?, ?, ?, ?, ?)"
)


RECORD_OUTCOME_UPDATE_PACKAGES = "UPDATE packages SET total = total + 1, pending = pending + 1 WHERE id = ?"


RECORD_OUTCOME_SELECT_PACKAGE = "SELECT complete, total, has_dependents FROM packages WHERE id = ?"


RECORD_INTEGRATION_SELECT_OUTCOMES = "SELECT 1 FROM outcomes WHERE id = ?"


RECORD_INTEGRATION_INSERT_INTEGRATION_LOGS = (
    "INSERT INTO integration_logs (run_id, outcome_id, integration_type, action, status, details, "
    "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
)


RECORD_INTEGRATION_SELECT_INTEGRATION_LOGS = (
    "SELECT l.*, r.name AS run_name FROM integration_logs l LEFT JOIN runs r ON r.id = l.run_id "
    "WHERE l.id = ?"
)


GET_OUTCOME_SELECT_OUTCOME_ATTEMPTS = (
    "SELECT attempt, worker, principal, status, error, started_at, ended_at, note, input_tokens, output_tokens,"
    " cache_read_tokens, cache_creation_tokens, cost_usd, model, review_decision, review_note, reviewed_by"
    " FROM outcome_attempts "
    "WHERE outcome_id = ? ORDER BY started_at, attempt"
)


# exports: each outcome's usage summed over its attempts, the latest model named (SUM of NULLs is NULL)
OUTCOME_USAGE = (
    "SELECT a.outcome_id, SUM(a.input_tokens) AS input_tokens, SUM(a.output_tokens) AS output_tokens,"
    " SUM(a.cache_read_tokens) AS cache_read_tokens, SUM(a.cache_creation_tokens) AS cache_creation_tokens,"
    " SUM(a.cost_usd) AS cost_usd,"
    " (SELECT b.model FROM outcome_attempts b WHERE b.outcome_id = a.outcome_id AND b.model IS NOT NULL"
    " ORDER BY b.attempt DESC LIMIT 1) AS model"
    " FROM outcome_attempts a JOIN outcomes o ON o.id = a.outcome_id"
    " WHERE o.run_id = ? AND (a.input_tokens IS NOT NULL OR a.output_tokens IS NOT NULL"
    " OR a.cache_read_tokens IS NOT NULL OR a.cache_creation_tokens IS NOT NULL OR a.cost_usd IS NOT NULL"
    " OR a.model IS NOT NULL)"
    " GROUP BY a.outcome_id"
)


CELLS_SELECT_OUTCOMES = (
    "SELECT o.id, p.name, o.item, o.status FROM outcomes o JOIN packages p ON p.id = o.package_id "
    "WHERE o.run_id = ? ORDER BY o.n"
)


# ---- keys.py ----------------------------------------------------------------------------------------


CREATE_API_KEY_SELECT_API_KEYS = "SELECT 1 FROM api_keys WHERE name = ?"


CREATE_API_KEY_INSERT_API_KEYS = (
    "INSERT INTO api_keys (name, key_hash, scopes, created_at) VALUES (?, ?, ?, ?)"
)


LIST_API_KEYS_SELECT_API_KEYS = "SELECT * FROM api_keys ORDER BY name"


REVOKE_API_KEY_UPDATE_API_KEYS = "UPDATE api_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL"


REVOKE_API_KEY_SELECT_API_KEYS = "SELECT * FROM api_keys WHERE name = ?"


API_KEY_BY_HASH_SELECT_API_KEYS = "SELECT * FROM api_keys WHERE key_hash = ?"


TOUCH_API_KEY_UPDATE_API_KEYS = (
    "UPDATE api_keys SET last_used_at = MAX(COALESCE(last_used_at, 0), ?) WHERE name = ?"
)


# ---- content.py -------------------------------------------------------------------------------------


INLINE_CONTENT_SELECT_CONTENTS = "SELECT body FROM contents WHERE sha256 = ?"


CONTENT_HASHES_SELECT_OUTCOMES = (
    "SELECT DISTINCT content_sha256 FROM outcomes WHERE content_sha256 IS NOT NULL"
)


def delete_orphan_contents(n: int) -> str:
    """Delete `n` bound contents (the hashes bound twice) that no outcome refers to, returning their sizes."""
    marks = ", ".join("?" * n)  # placeholders only; the hashes are bound
    return (
        "DELETE FROM contents WHERE sha256 IN (" + marks + ") AND sha256 NOT IN"
        " (SELECT content_sha256 FROM outcomes WHERE content_sha256 IN ("
        + marks
        + ")) RETURNING length(body)"
    )


CONTENT_FILES_SELECT_EVENTS = (
    "SELECT e.seq, o.id, o.outcome_path, o.content_sha256 FROM events e JOIN outcomes o ON o.id = "
    "e.outcome_id WHERE e.seq > ? AND e.kind = 'completed' AND o.status = 'complete' AND "
    "o.content_sha256 IS NOT NULL AND o.outcome_path IS NOT NULL ORDER BY e.seq LIMIT ?"
)


# ---- counters.py ------------------------------------------------------------------------------------


ADD_HISTOGRAM_SELECT_PACKAGES = "SELECT duration_hist FROM packages WHERE id = ?"


SET_HISTOGRAM = "UPDATE packages SET duration_hist = ? WHERE id = ?"


ADD_CONTRIBUTION_UPDATE_PACKAGES = (
    "UPDATE packages SET duration_sum = duration_sum + ?, duration_n = duration_n + ?, lines_sum = "
    "lines_sum + ?, quality_sum = quality_sum + ?, quality_n = quality_n + ? WHERE id = ?"
)


ADD_MINUTE_INSERT_OUTCOME_MINUTES = (
    "INSERT INTO outcome_minutes (run_id, minute, completed, failed, duration_sum, duration_n) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, minute) DO UPDATE SET completed = completed + "
    "excluded.completed, failed = failed + excluded.failed, duration_sum = duration_sum + "
    "excluded.duration_sum, duration_n = duration_n + excluded.duration_n"
)


SUMMARIES_SELECT_PACKAGES = (
    "SELECT p.*, r.name AS run_name FROM packages p JOIN runs r ON r.id = p.run_id WHERE "
)


PACKAGE_TRUTH_SELECT_OUTCOMES = "SELECT status, COUNT(*) FROM outcomes WHERE package_id = ? GROUP BY status"


PACKAGE_TRUTH_SELECT_OUTCOMES_2 = (
    "SELECT metrics, duration_seconds FROM outcomes WHERE package_id = ? AND status = 'complete'"
)


RECOUNT_ROWS_SELECT_PACKAGES = (
    "SELECT p.*, r.name AS run_name FROM packages p JOIN runs r ON r.id = p.run_id "
)


RUN_MINUTES_SELECT_OUTCOME_MINUTES = (
    "SELECT minute, completed, failed FROM outcome_minutes WHERE run_id = ? AND minute >= ? ORDER BY minute"
)


SYSTEM_METRICS_SELECT_PACKAGES = (
    "SELECT COALESCE(SUM(pending),0) AS pending, COALESCE(SUM(generating),0) AS generating, "
    "COALESCE(SUM(complete),0) AS complete, COALESCE(SUM(failed),0) AS failed, "
    "COALESCE(SUM(cancelled),0) AS cancelled, COALESCE(SUM(blocked),0) AS blocked, "
    "COALESCE(SUM(in_review),0) AS in_review, COALESCE(SUM(duration_sum),0) AS ds, "
    "COALESCE(SUM(duration_n),0) AS dn, COALESCE(SUM(lines_sum),0) AS ls, "
    "COALESCE(SUM(quality_sum),0) AS qs, COALESCE(SUM(quality_n),0) AS qn, "
    "COALESCE(SUM(input_tokens),0) AS input_tokens, COALESCE(SUM(output_tokens),0) AS output_tokens, "
    "COALESCE(SUM(cache_read_tokens),0) AS cache_read_tokens, "
    "COALESCE(SUM(cache_creation_tokens),0) AS cache_creation_tokens, "
    "COALESCE(SUM(cost_usd),0) AS cost_usd FROM packages "
)


SYSTEM_METRICS_SELECT_OUTCOME_MINUTES = (
    "SELECT minute / 60 AS hour, SUM(completed) AS completed, SUM(failed) AS failed, "
    "SUM(duration_sum) AS ds, SUM(duration_n) AS dn FROM outcome_minutes WHERE minute >= ?"
)


SYSTEM_METRICS_SELECT_RUNS = "SELECT name FROM runs WHERE id = ?"


STATUS_COUNTS_SELECT_PACKAGES = (
    "SELECT name, SUM(pending) AS pending, SUM(generating) AS generating, SUM(complete) AS complete, "
    "SUM(failed) AS failed, SUM(cancelled) AS cancelled, SUM(blocked) AS blocked, SUM(in_review) AS in_review"
    " FROM packages GROUP BY name"
    " ORDER BY name"
)


# /metrics: totals over every package row, and the first `limit` names with unfinished work
STATUS_SUMS = (
    "SUM(pending) AS pending, SUM(generating) AS generating, SUM(complete) AS complete,"
    " SUM(failed) AS failed, SUM(cancelled) AS cancelled, SUM(blocked) AS blocked, SUM(in_review) AS in_review"
)


ACTIVE_TOTALS = f"SELECT {STATUS_SUMS} FROM packages"


# the first `limit` busy packages (the scan stops there)
ACTIVE_NAMES = (
    "SELECT p.name FROM packages p JOIN runs r ON r.id = p.run_id"
    " WHERE r.state <> 'cancelled' AND p.pending + p.generating + p.blocked + p.in_review > 0 LIMIT ?"
)


def active_counts(n: int) -> str:
    """The counts over all runs of `n` bound package names."""
    marks = ", ".join("?" * n)  # placeholders only; the names are bound
    return f"SELECT name, {STATUS_SUMS} FROM packages WHERE name IN ({marks}) GROUP BY name ORDER BY name"


REBUILD_COUNTERS_SELECT_PACKAGES = "SELECT id FROM packages "


REBUILD_COUNTERS_UPDATE_PACKAGES = (
    "UPDATE packages SET total = ?, pending = ?, generating = ?, complete = ?, failed = ?, cancelled "
    "= ?, blocked = ?, in_review = ?, duration_sum = ?, duration_n = ?, lines_sum = ?, quality_sum = ?,"
    " quality_n = ?, input_tokens = ?, output_tokens = ?, cache_read_tokens = ?, cache_creation_tokens = ?,"
    " cost_usd = ? WHERE id = ?"
)


OUTCOME_BY_ID = OUTCOME_SELECT + " WHERE o.id = ?"


@cache
def outcomes_page(pinned: tuple[str, ...]) -> str:
    """A page of outcomes after a cursor (`o.n > ?`), with the columns rows.outcome_filter pins bound."""
    where = " AND ".join(["o.n > ?", *(f"{column} = ?" for column in pinned)])
    return OUTCOME_SELECT + " WHERE " + where + " ORDER BY o.n LIMIT ?"


RUN_BY_ID = RUN_SELECT + " WHERE r.id = ? GROUP BY r.id"


RUN_LIST = RUN_SELECT + " GROUP BY r.id ORDER BY r.created_at, r.name"


# content kept in the store that no outcome refers to (the subquery is built once, not run per row)
ORPHAN_CONTENTS = (
    "SELECT sha256 FROM contents WHERE sha256 NOT IN"
    " (SELECT content_sha256 FROM outcomes WHERE content_sha256 IS NOT NULL)"
)


# the outcome whose readable file a path is (outcome_paths: one outcome per path)
PATH_HOLDER = (
    "SELECT o.id, o.run_id, p.name, o.item FROM outcome_paths h JOIN outcomes o ON o.id = h.outcome_id"
    " JOIN packages p ON p.id = o.package_id WHERE h.path = ?"
)


# ---- hooks.py ---------------------------------------------------------------------------------------


HOOKS_SUBSCRIPTION_BY_ID = "SELECT * FROM hook_subscriptions WHERE id = ?"


HOOKS_HOLDS = "SELECT 1 FROM hook_subscriptions WHERE id = ? AND lease_owner = ?"


HOOKS_LATEST_SEQ = "SELECT COALESCE(MAX(seq), 0) FROM events"


HOOKS_INSERT_SUBSCRIPTION = (
    "INSERT INTO hook_subscriptions (id, kind, target, description, events, run_name, config, "
    "credentials, active, cursor, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
    "?)"
)


HOOKS_ANY_ACTIVE = "SELECT 1 FROM hook_subscriptions WHERE active LIMIT 1"


HOOKS_REMOVE_SUBSCRIPTION = "DELETE FROM hook_subscriptions WHERE id = ?"


HOOKS_LEASE = (
    "UPDATE hook_subscriptions SET lease_owner = ?, lease_expires_at = ? WHERE id = ? AND active "
    "AND (lease_owner IS NULL OR lease_owner = ? OR lease_expires_at <= ?)"
)


HOOKS_RELEASE = (
    "UPDATE hook_subscriptions SET lease_owner = NULL, lease_expires_at = NULL WHERE id = ? AND "
    "lease_owner = ?"
)


HOOKS_MOVE_CURSOR = "UPDATE hook_subscriptions SET cursor = ? WHERE id = ? AND lease_owner = ? AND cursor = ?"


HOOKS_INSERT_DELIVERIES = (
    "INSERT OR IGNORE INTO hook_deliveries (id, subscription_id, seq, event_type, run_name, body, "
    "status, next_attempt_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)"
)


HOOKS_INSERT_DELIVERY = (
    "INSERT INTO hook_deliveries (id, subscription_id, seq, event_type, run_name, body, status, "
    "next_attempt_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)"
)


HOOKS_DUE_DELIVERIES = (
    "SELECT * FROM hook_deliveries WHERE subscription_id = ? AND status = 'pending' AND "
    "next_attempt_at <= ? ORDER BY next_attempt_at, seq LIMIT ?"
)


HOOKS_NEXT_DUE = (
    "SELECT MIN(next_attempt_at) FROM hook_deliveries WHERE subscription_id = ? AND status = 'pending'"
)


HOOKS_RECORD_RESULT = (
    "UPDATE hook_deliveries SET status = ?1, attempts = ?2, next_attempt_at = ?3, last_status_code "
    "= ?4, last_error = ?5, updated_at = ?6, delivered_at = CASE WHEN ?1 = 'succeeded' THEN ?6 ELSE "
    "delivered_at END WHERE id = ?7 AND subscription_id = ?8"
)


HOOKS_RECORD_ENDPOINT = (
    "UPDATE hook_subscriptions SET failures = ?, failing_since = ?, circuit_open_until = ?, "
    "last_success_at = ?, active = active AND ?, disabled_reason = COALESCE(?, disabled_reason), "
    "updated_at = ? WHERE id = ?"
)


HOOKS_INSERT_CALL_LOG = (
    "INSERT INTO integration_logs (run_id, outcome_id, integration_type, action, status, details, "
    "created_at) VALUES ((SELECT id FROM runs WHERE name = ?), NULL, ?, ?, ?, ?, ?)"
)


HOOKS_INSERT_SYSTEM_EVENT = (
    "INSERT INTO events (run_id, outcome_id, kind, data, created_at) VALUES (NULL, NULL, ?, ?, ?)"
)


_REDELIVER = (
    "UPDATE hook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?, updated_at = ?"
)


HOOKS_REDELIVER_ONE = _REDELIVER + " WHERE id = ?"


HOOKS_REDELIVER_SINCE = _REDELIVER + " WHERE subscription_id = ? AND created_at >= ?"


HOOKS_SUBSCRIPTIONS = "SELECT * FROM hook_subscriptions ORDER BY created_at, id"


HOOKS_ACTIVE_SUBSCRIPTIONS = "SELECT * FROM hook_subscriptions WHERE active ORDER BY created_at, id"


@cache
def hooks_update_subscription(columns: tuple[str, ...]) -> str:
    """The UPDATE of a subscription's changed columns (names from H.change_columns' closed set only)."""
    return (
        "UPDATE hook_subscriptions SET "
        + ", ".join(f"{name} = ?" for name in columns)
        + ", updated_at = ? WHERE id = ?"
    )


@cache
def hooks_deliveries_page(pinned: tuple[str, ...]) -> str:
    """A page of deliveries after a cursor (`n > ?`), with the columns H.delivery_filter pins bound."""
    where = " AND ".join(["n > ?", *(f"{column} = ?" for column in pinned)])
    return "SELECT * FROM hook_deliveries WHERE " + where + " ORDER BY n LIMIT ?"


def hooks_outcome_facts(n: int) -> str:
    """What an event's outcome says to a sink, for `n` bound outcome ids."""
    marks = ", ".join("?" * n)  # placeholders only; the ids are bound
    return (
        "SELECT o.id, o.item, o.attempts, o.metrics, o.error_message, p.name AS package_name"
        " FROM outcomes o JOIN packages p ON p.id = o.package_id WHERE o.id IN (" + marks + ")"
    )


HOOKS_GET_LINK = "SELECT value FROM hook_links WHERE subscription_id = ? AND ref = ?"


HOOKS_SET_LINK = (
    "INSERT INTO hook_links (subscription_id, ref, value) VALUES (?, ?, ?) ON CONFLICT "
    "(subscription_id, ref) DO UPDATE SET value = excluded.value"
)


HOOKS_ALL_CREDENTIALS = "SELECT id, credentials FROM hook_subscriptions ORDER BY id"


HOOKS_SET_CREDENTIALS = "UPDATE hook_subscriptions SET credentials = ?, updated_at = ? WHERE id = ?"


HOOKS_DELIVERY_BY_ID = "SELECT * FROM hook_deliveries WHERE id = ?"


# ---- connection.py: pragmas, migrations, transactions -----------------------------------------------


# every connection's settings (busy_timeout and wal_autocheckpoint take a number: busy_timeout(ms))
JOURNAL_WAL = "PRAGMA journal_mode = WAL"


SYNCHRONOUS_NORMAL = "PRAGMA synchronous = NORMAL"


FOREIGN_KEYS_ON = "PRAGMA foreign_keys = ON"


QUERY_ONLY = "PRAGMA query_only = ON"


CHECKPOINTER_BUSY_TIMEOUT = "PRAGMA busy_timeout = 1000"


CHECKPOINT_PASSIVE = "PRAGMA wal_checkpoint(PASSIVE)"


INTEGRITY_CHECK = "PRAGMA integrity_check"


def busy_timeout(ms: int) -> str:
    return "PRAGMA busy_timeout = " + str(int(ms))


def wal_autocheckpoint(pages: int) -> str:
    return "PRAGMA wal_autocheckpoint = " + str(int(pages))


CREATE_SCHEMA_MIGRATIONS = (
    "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL)"
)


APPLIED_MIGRATIONS = "SELECT version FROM schema_migrations"


MIGRATION_APPLIED = "SELECT 1 FROM schema_migrations WHERE version = ?"


RECORD_MIGRATION = "INSERT INTO schema_migrations VALUES (?, ?)"


SCHEMA_VERSION = "PRAGMA schema_version"


def set_schema_version(version: int) -> str:
    return "PRAGMA schema_version = " + str(int(version))


BEGIN = "BEGIN"


BEGIN_IMMEDIATE = "BEGIN IMMEDIATE"


COMMIT = "COMMIT"


ROLLBACK = "ROLLBACK"


# each request of a group-commit batch runs inside its own savepoint
SAVEPOINT = "SAVEPOINT op"


RELEASE = "RELEASE op"


ROLLBACK_TO = "ROLLBACK TO op"


# ---- events.py --------------------------------------------------------------------------------------


_EVENTS = "SELECT e.*, r.name AS run_name FROM events e LEFT JOIN runs r ON r.id = e.run_id WHERE e.seq > ?"


EVENTS_AFTER = _EVENTS + " ORDER BY e.seq LIMIT ?"


EVENTS_AFTER_IN_RUN = _EVENTS + " AND e.run_id = ? ORDER BY e.seq LIMIT ?"


# ---- policy.py: dependencies, lock keys ------------------------------------------------------------


_DEPENDENT = "n, id, run_id, status, waiting, package_id, item, priority"


# an item's dependents' counts of unmet prerequisites moved by one (bound: +1 or -1, the item's n)
ITEM_DEPENDENTS_WAITING = (
    "UPDATE outcomes SET waiting = waiting + ? WHERE n IN (SELECT after_n FROM outcome_deps WHERE before_n = ?)"
    " RETURNING " + _DEPENDENT
)


PACKAGE_DEPENDENTS_WAITING = (
    "UPDATE outcomes SET waiting = waiting + ?"
    " WHERE n IN (SELECT after_n FROM package_deps WHERE package_id = ?) RETURNING " + _DEPENDENT
)


PACKAGE_DONE = "SELECT complete, total, has_dependents FROM packages WHERE id = ?"


PACKAGE_NAME = "SELECT name FROM packages WHERE id = ?"


PACKAGE_HAS_DEPENDENTS = "SELECT has_dependents FROM packages WHERE id = ?"


RUN_DEPENDENCY_FAILURE = "SELECT on_dependency_failure FROM runs WHERE id = ?"


ITEM_DEPENDENTS = "SELECT after_n FROM outcome_deps WHERE before_n = ?"


HAS_ITEM_DEPENDENTS = "SELECT 1 FROM outcome_deps WHERE before_n = ? LIMIT 1"


# a package's bound on its pending items' priority: the highest now (outcomes_claimable), lowered, raised
TOP_PENDING_PRIORITY = (
    "SELECT priority FROM outcomes WHERE package_id = ? AND status = 'pending' ORDER BY priority DESC LIMIT 1"
)


SET_TOP = "UPDATE packages SET max_item_priority = ? WHERE id = ?"


RAISE_TOP = "UPDATE packages SET max_item_priority = ? WHERE id = ? AND max_item_priority < ?"


PACKAGE_DEPENDENTS = "SELECT after_n FROM package_deps WHERE package_id = ?"


DEPENDENT_BY_N = "SELECT " + _DEPENDENT + " FROM outcomes WHERE n = ?"


CANCELLED_BY = (
    "SELECT " + _DEPENDENT + " FROM outcomes WHERE cancelled_by = ? AND status = 'cancelled' ORDER BY n"
)


PACKAGE_BY_NAME = "SELECT id, complete, total FROM packages WHERE run_id = ? AND name = ?"


ITEM_BY_NAME = (
    "SELECT o.n, o.status FROM outcomes o JOIN packages p ON p.id = o.package_id"
    " WHERE p.run_id = ? AND p.name = ? AND o.item = ?"
)


INSERT_ITEM_EDGE = "INSERT OR IGNORE INTO outcome_deps (before_n, after_n) VALUES (?, ?)"


INSERT_PACKAGE_EDGE = "INSERT OR IGNORE INTO package_deps (package_id, after_n) VALUES (?, ?)"


MARK_HAS_DEPENDENTS = "UPDATE packages SET has_dependents = 1 WHERE id = ? AND NOT has_dependents"


BLOCK_NEW = "UPDATE outcomes SET waiting = ?, status = 'blocked' WHERE n = ?"


# the holder of a lock key, with its outcome's lease as it stands (rules.lock_held decides)
LOCK_HOLDER = (
    "SELECT l.lease_token AS lock_token, o.status, o.lease_token, o.lease_expires_at FROM resource_locks l"
    " LEFT JOIN outcomes o ON o.n = l.n WHERE l.key = ?"
)


TAKE_LOCK = "INSERT OR REPLACE INTO resource_locks (key, n, lease_token, run_id) VALUES (?, ?, ?, ?)"


RELEASE_LOCKS = "DELETE FROM resource_locks WHERE n = ?"


LOCKS_OF = "SELECT key FROM resource_locks WHERE n = ? AND lease_token = ? ORDER BY key"


READY_IN_PACKAGE = (
    "SELECT 1 FROM outcomes WHERE package_id = ? AND status = 'pending' AND available_at <= ? LIMIT 1"
)


READY_IN_RUN = "SELECT 1 FROM outcomes WHERE run_id = ? AND status = 'pending' AND available_at <= ? LIMIT 1"


EARLIEST_LEASE_IN_PACKAGE = (
    "SELECT MIN(lease_expires_at) FROM outcomes WHERE run_id = ? AND status = 'generating' AND package_id = ?"
)


UNMET_ITEMS = (
    "SELECT p.name, o.item FROM outcome_deps d JOIN outcomes o ON o.n = d.before_n"
    " JOIN packages p ON p.id = o.package_id WHERE d.after_n = ? AND o.status <> 'complete'"
    " ORDER BY d.before_n LIMIT ?"
)


UNMET_PACKAGES = (
    "SELECT p.name FROM package_deps d JOIN packages p ON p.id = d.package_id"
    " WHERE d.after_n = ? AND p.complete < p.total ORDER BY p.position LIMIT ?"
)


# each item with prerequisites (or a count, or blocked): its count beside the prerequisites not met now
_WAITING_TRUTH = (
    "SELECT r.name AS run_name, p.name AS package, o.item, o.status, o.waiting,"
    " (SELECT COUNT(*) FROM outcome_deps d JOIN outcomes b ON b.n = d.before_n"
    "  WHERE d.after_n = o.n AND b.status <> 'complete')"
    " + (SELECT COUNT(*) FROM package_deps d JOIN packages q ON q.id = d.package_id"
    "  WHERE d.after_n = o.n AND q.complete < q.total) AS unmet"
    " FROM outcomes o JOIN packages p ON p.id = o.package_id JOIN runs r ON r.id = o.run_id"
    " WHERE (o.waiting <> 0 OR o.status = 'blocked' OR o.n IN (SELECT after_n FROM outcome_deps)"
    " OR o.n IN (SELECT after_n FROM package_deps))"
)


WAITING_TRUTH = _WAITING_TRUTH + " ORDER BY o.n"


WAITING_TRUTH_OF_RUN = _WAITING_TRUTH + " AND o.run_id = ? ORDER BY o.n"


# what an item waits for, as stored (policy.check_acyclic): items, packages, a package's items
PREREQUISITE_ITEMS = "SELECT before_n FROM outcome_deps WHERE after_n = ?"


PREREQUISITE_PACKAGES = "SELECT package_id FROM package_deps WHERE after_n = ?"


ITEMS_OF_PACKAGE = "SELECT n FROM outcomes WHERE package_id = ?"


ITEM_NAME = "SELECT p.name, o.item FROM outcomes o JOIN packages p ON p.id = o.package_id WHERE o.n = ?"


# ---- review gates, notes, usage, budgets -----------------------------------------------------------

SET_NOTE = "UPDATE outcome_attempts SET note = ? WHERE outcome_id = ? AND lease_token = ?"


# review_item's item with what rules.review reads (its run's state) and its package's histogram (counters.apply
# moves an approval's counters, sums and histogram in one statement)
REVIEW_ROW = """
SELECT o.*, r.name AS run_name, r.max_attempts AS max_attempts, r.state AS run_state, p.name AS package_name,
p.duration_hist AS package_duration_hist, p.has_dependents AS package_has_dependents
FROM outcomes o JOIN runs r ON r.id = o.run_id JOIN packages p ON p.id = o.package_id WHERE o.id = ?
"""


ATTEMPT_REVIEW = (
    "UPDATE outcome_attempts SET status = ?, error = ?, review_decision = ?, review_note = ?, reviewed_by = ?"
    " WHERE outcome_id = ? AND lease_token = ?"
)


PACKAGE_USAGE = (
    "UPDATE packages SET input_tokens = input_tokens + ?, output_tokens = output_tokens + ?,"
    " cache_read_tokens = cache_read_tokens + ?, cache_creation_tokens = cache_creation_tokens + ?,"
    " cost_usd = cost_usd + ? WHERE id = ?"
)


WORKER_USAGE = (
    "INSERT INTO worker_usage (run_id, worker, input_tokens, output_tokens, cache_read_tokens,"
    " cache_creation_tokens, cost_usd) VALUES (?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (run_id, worker) DO UPDATE SET input_tokens = input_tokens + excluded.input_tokens,"
    " output_tokens = output_tokens + excluded.output_tokens,"
    " cache_read_tokens = cache_read_tokens + excluded.cache_read_tokens,"
    " cache_creation_tokens = cache_creation_tokens + excluded.cache_creation_tokens,"
    " cost_usd = cost_usd + excluded.cost_usd"
)


# a run's workers by what they spent, most first
WORKERS_OF_RUN = (
    "SELECT worker, input_tokens, output_tokens, cache_read_tokens, cache_creation_tokens, cost_usd"
    " FROM worker_usage WHERE run_id = ?"
    " ORDER BY cost_usd DESC, input_tokens + output_tokens + cache_read_tokens + cache_creation_tokens DESC,"
    " worker LIMIT ?"
)


RUN_BUDGET = "SELECT state, max_cost_usd, max_tokens, spent_cost_usd, spent_tokens FROM runs WHERE id = ?"


RUN_SPEND = (
    "UPDATE runs SET spent_cost_usd = spent_cost_usd + ?, spent_tokens = spent_tokens + ? WHERE id = ?"
)


RUN_PAUSE_FOR_BUDGET = "UPDATE runs SET state = 'paused', paused_reason = ?, updated_at = ? WHERE id = ?"


# what the run's packages spent in all (a budget set later starts from it)
RUN_SPENT_TRUTH = (
    "SELECT COALESCE(SUM(cost_usd), 0.0),"
    " COALESCE(SUM(input_tokens + output_tokens + cache_read_tokens + cache_creation_tokens), 0)"
    " FROM packages WHERE run_id = ?"
)


SET_RUN_SPENT = "UPDATE runs SET spent_cost_usd = ?, spent_tokens = ? WHERE id = ?"


# an item's earlier attempts as its next claim shows them (the one just started left out), newest first
PREVIOUS_ATTEMPTS = (
    "SELECT attempt, status, error, note, review_note FROM outcome_attempts"
    " WHERE outcome_id = ? AND lease_token <> ? ORDER BY started_at DESC, attempt DESC LIMIT ?"
)


# a recount of a package's usage sums from its items' attempts
PACKAGE_USAGE_TRUTH = (
    "SELECT COALESCE(SUM(a.input_tokens), 0), COALESCE(SUM(a.output_tokens), 0),"
    " COALESCE(SUM(a.cache_read_tokens), 0), COALESCE(SUM(a.cache_creation_tokens), 0),"
    " COALESCE(SUM(a.cost_usd), 0.0) FROM outcome_attempts a JOIN outcomes o ON o.id = a.outcome_id"
    " WHERE o.package_id = ?"
)


RUN_POLICY_ROW = "SELECT id, max_cost_usd, max_tokens FROM runs WHERE id = ?"


@cache
def update_run_policy(columns: tuple[str, ...]) -> str:
    """Set these policy columns of a run (bound values, then its id); a closed set of names (PolicyUpdate)."""
    return "UPDATE runs SET " + ", ".join(f"{c} = ?" for c in columns) + ", updated_at = ? WHERE id = ?"


# the recount of each worker's usage sums of a run (all runs when the run id is NULL) from its attempts, and the
# sums as kept; a worker is the one its attempts name ('' for none, as a report's spend names it)
WORKER_USAGE_TRUTH = (
    "SELECT r.name AS run_name, COALESCE(a.worker, '') AS worker,"
    " COALESCE(SUM(a.input_tokens), 0) AS input_tokens, COALESCE(SUM(a.output_tokens), 0) AS output_tokens,"
    " COALESCE(SUM(a.cache_read_tokens), 0) AS cache_read_tokens,"
    " COALESCE(SUM(a.cache_creation_tokens), 0) AS cache_creation_tokens,"
    " COALESCE(SUM(a.cost_usd), 0.0) AS cost_usd"
    " FROM outcome_attempts a JOIN outcomes o ON o.id = a.outcome_id JOIN runs r ON r.id = o.run_id"
    " WHERE (?1 IS NULL OR o.run_id = ?1) GROUP BY o.run_id, COALESCE(a.worker, '')"
)


WORKER_USAGE_ROWS = (
    "SELECT r.name AS run_name, w.* FROM worker_usage w JOIN runs r ON r.id = w.run_id"
    " WHERE ?1 IS NULL OR w.run_id = ?1"
)


# a run's spent totals beside what its packages spent, for the runs that keep them (those with a budget)
RECOUNT_RUN_SPENT = (
    "SELECT r.name AS run_name, r.spent_cost_usd, r.spent_tokens, COALESCE(SUM(p.cost_usd), 0.0) AS cost,"
    " COALESCE(SUM(p.input_tokens + p.output_tokens + p.cache_read_tokens + p.cache_creation_tokens), 0)"
    " AS tokens FROM runs r LEFT JOIN packages p ON p.run_id = r.id"
    " WHERE (r.max_cost_usd IS NOT NULL OR r.max_tokens IS NOT NULL) AND (?1 IS NULL OR r.id = ?1) GROUP BY r.id"
)


# the rebuild of the workers' usage sums and the budgeted runs' totals (after the packages' sums)
DELETE_WORKER_USAGE = "DELETE FROM worker_usage WHERE ?1 IS NULL OR run_id = ?1"


REBUILD_WORKER_USAGE = (
    "INSERT INTO worker_usage (run_id, worker, input_tokens, output_tokens, cache_read_tokens,"
    " cache_creation_tokens, cost_usd)"
    " SELECT o.run_id, COALESCE(a.worker, ''), COALESCE(SUM(a.input_tokens), 0), COALESCE(SUM(a.output_tokens), 0),"
    " COALESCE(SUM(a.cache_read_tokens), 0), COALESCE(SUM(a.cache_creation_tokens), 0),"
    " COALESCE(SUM(a.cost_usd), 0.0) FROM outcome_attempts a JOIN outcomes o ON o.id = a.outcome_id"
    " WHERE (?1 IS NULL OR o.run_id = ?1) GROUP BY o.run_id, COALESCE(a.worker, '')"
    " HAVING COALESCE(SUM(a.input_tokens), 0) + COALESCE(SUM(a.output_tokens), 0)"
    " + COALESCE(SUM(a.cache_read_tokens), 0) + COALESCE(SUM(a.cache_creation_tokens), 0) > 0"
    " OR COALESCE(SUM(a.cost_usd), 0.0) > 0"
)


REBUILD_RUN_SPENT = (
    "UPDATE runs SET spent_cost_usd = (SELECT COALESCE(SUM(cost_usd), 0.0) FROM packages WHERE run_id = runs.id),"
    " spent_tokens = (SELECT COALESCE(SUM(input_tokens + output_tokens + cache_read_tokens + cache_creation_tokens),"
    " 0) FROM packages WHERE run_id = runs.id)"
    " WHERE (max_cost_usd IS NOT NULL OR max_tokens IS NOT NULL) AND (?1 IS NULL OR id = ?1)"
)
