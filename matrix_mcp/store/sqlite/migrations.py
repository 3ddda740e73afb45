"""Versioned migrations for the SQLite outcome store. Append new versions; never edit old ones."""

from __future__ import annotations


def _after_host(col: str) -> str:
    """SQL: the part of the URL `col` after `scheme://`."""
    return f"substr({col}, instr({col}, '://') + 3)"


def _has_path(col: str) -> str:
    """SQL: `col` is a URL with something after the slash that ends its host, not already redacted."""
    slash = f"instr({_after_host(col)}, '/')"
    return (
        f"(instr({col}, '://') > 0 AND {slash} > 0"
        f" AND substr({_after_host(col)}, {slash} + 1) NOT IN ('', '\u2026'))"
    )


def _redacted(col: str) -> str:
    """SQL: `scheme://host/…` of the URL `col` (when _has_path)."""
    return f"substr({col}, 1, instr({col}, '://') + 2 + instr({_after_host(col)}, '/')) || '\u2026'"


_LOGGED = "json_extract(details, '$.target')"

# A statement the runner (connection.migrate) carries out itself: schema_version one higher, so that every
# connection reloads a schema changed through writable_schema (SQLite's ALTER TABLE docs: PRAGMA
# schema_version takes a literal).
SCHEMA_VERSION_BUMP = "PRAGMA schema_version = schema_version + 1"

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    goal TEXT,
    state TEXT NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'paused', 'cancelled')),
    outcome_type TEXT NOT NULL,
    lease_seconds REAL NOT NULL,
    max_attempts INTEGER NOT NULL,
    backoff_seconds REAL NOT NULL,
    backoff_cap_seconds REAL NOT NULL,
    outcome_schema TEXT,
    claim_clock INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);

CREATE TABLE packages (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    description TEXT,
    position INTEGER NOT NULL,
    last_claim INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    pending INTEGER NOT NULL DEFAULT 0,
    generating INTEGER NOT NULL DEFAULT 0,
    complete INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    cancelled INTEGER NOT NULL DEFAULT 0,
    duration_sum REAL NOT NULL DEFAULT 0,
    duration_n INTEGER NOT NULL DEFAULT 0,
    lines_sum REAL NOT NULL DEFAULT 0,
    quality_sum REAL NOT NULL DEFAULT 0,
    quality_n INTEGER NOT NULL DEFAULT 0,
    UNIQUE (run_id, name)
);

CREATE TABLE package_durations (
    package_id INTEGER NOT NULL REFERENCES packages(id) ON DELETE CASCADE,
    bucket INTEGER NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (package_id, bucket)
) WITHOUT ROWID;

CREATE TABLE outcomes (
    n INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    package_id INTEGER NOT NULL REFERENCES packages(id) ON DELETE CASCADE,
    item TEXT NOT NULL,
    position INTEGER NOT NULL,
    status TEXT NOT NULL
        CHECK (status IN ('pending', 'generating', 'complete', 'failed', 'cancelled')),
    outcome_type TEXT NOT NULL,
    outcome_path TEXT,
    specifications TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    created_by TEXT,
    error_message TEXT,
    metrics TEXT NOT NULL DEFAULT '{}',
    metadata TEXT NOT NULL DEFAULT '{}',
    content_sha256 TEXT,
    content_bytes INTEGER,
    mime_type TEXT,
    lease_token TEXT,
    lease_expires_at REAL,
    available_at REAL NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    started_at REAL,
    completed_at REAL,
    duration_seconds REAL,
    UNIQUE (package_id, item)
);
CREATE INDEX outcomes_claimable ON outcomes (package_id, available_at, position) WHERE status = 'pending';
CREATE INDEX outcomes_leased ON outcomes (run_id, lease_expires_at) WHERE status = 'generating';
CREATE INDEX outcomes_run_status ON outcomes (run_id, status, n);

CREATE TABLE outcome_attempts (
    outcome_id TEXT NOT NULL REFERENCES outcomes(id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    lease_token TEXT NOT NULL,
    worker TEXT,
    status TEXT NOT NULL,
    error TEXT,
    started_at REAL,
    ended_at REAL,
    PRIMARY KEY (outcome_id, lease_token)
) WITHOUT ROWID;

CREATE TABLE outcome_metrics (
    outcome_id TEXT NOT NULL REFERENCES outcomes(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (outcome_id, name)
) WITHOUT ROWID;
CREATE INDEX outcome_metrics_name ON outcome_metrics (name, value);

CREATE TABLE outcome_minutes (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    minute INTEGER NOT NULL,
    completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    duration_sum REAL NOT NULL DEFAULT 0,
    duration_n INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, minute)
) WITHOUT ROWID;

CREATE TABLE integration_logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT REFERENCES runs(id) ON DELETE CASCADE,
    outcome_id TEXT,
    integration_type TEXT NOT NULL,
    action TEXT NOT NULL,
    status TEXT NOT NULL,
    details TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL
);
CREATE INDEX integration_logs_run ON integration_logs (run_id, id);

CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT,
    outcome_id TEXT,
    kind TEXT NOT NULL,
    data TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL
);
CREATE INDEX events_run ON events (run_id, seq);
""",
    ),
    (
        2,
        """
ALTER TABLE packages ADD COLUMN duration_hist TEXT NOT NULL DEFAULT '[]';
UPDATE packages SET duration_hist = COALESCE(
    (SELECT json_group_array(json_array(bucket, n)) FROM
        (SELECT bucket, n FROM package_durations d WHERE d.package_id = packages.id AND d.n != 0 ORDER BY bucket)),
    '[]');
DROP TABLE package_durations
""",
    ),
    (
        3,
        # API keys for the HTTP service: only a SHA-256 of each key is kept (keys are 256-bit random)
        """
CREATE TABLE api_keys (
    name TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL UNIQUE,
    scopes TEXT NOT NULL,
    created_at REAL NOT NULL,
    last_used_at REAL,
    revoked_at REAL
)
""",
    ),
    (
        # issue 14, events out: webhook subscriptions with a cursor into `events`, their deliveries, and
        # what a sink remembers between calls (a Slack thread, a Jira issue key, a GitHub pull request)
        4,
        """
CREATE TABLE hook_subscriptions (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    description TEXT,
    events TEXT NOT NULL DEFAULT '["*"]',
    run_name TEXT,
    config TEXT NOT NULL DEFAULT '{}',
    credentials TEXT NOT NULL,
    active INTEGER NOT NULL DEFAULT 1,
    disabled_reason TEXT,
    cursor INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_expires_at REAL,
    failures INTEGER NOT NULL DEFAULT 0,
    failing_since REAL,
    circuit_open_until REAL,
    last_success_at REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);

CREATE TABLE hook_deliveries (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    subscription_id TEXT NOT NULL REFERENCES hook_subscriptions(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    event_type TEXT NOT NULL,
    run_name TEXT,
    body TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_status_code INTEGER,
    last_error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    delivered_at REAL
);
CREATE INDEX hook_deliveries_due ON hook_deliveries (subscription_id, next_attempt_at, seq) WHERE status = 'pending';
CREATE INDEX hook_deliveries_by_subscription ON hook_deliveries (subscription_id, n);

CREATE TABLE hook_links (
    subscription_id TEXT NOT NULL REFERENCES hook_subscriptions(id) ON DELETE CASCADE,
    ref TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (subscription_id, ref)
) WITHOUT ROWID
""",
    ),
    (
        5,
        # small content, kept in the store with the report that brought it (one transaction, one sync);
        # the file under the artifacts root is a copy, rebuilt from here when missing
        """
CREATE TABLE contents (
    sha256 TEXT PRIMARY KEY,
    body BLOB NOT NULL
) WITHOUT ROWID
""",
    ),
    (
        6,
        # who claimed each attempt (`key:NAME` / `jwt:SUB`; NULL on an open service or stdio)
        "ALTER TABLE outcome_attempts ADD COLUMN principal TEXT",
    ),
    (
        7,
        # board sessions ended by sign-out, refused by every replica until the cookie would have expired
        # anyway (`expires_at`); the id is a SHA-256 of the sealed cookie, never the cookie
        """
CREATE TABLE revoked_sessions (
    session_id TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
) WITHOUT ROWID
""",
    ),
    (
        8,
        # one outcome per readable file: the key on `path` refuses a second outcome's path in the writing
        # statement itself, so of two reports racing for one path exactly one commits. Kept by triggers,
        # so every statement that sets outcome_path obeys it. Paths two outcomes shared before this
        # version are held by the first completed (the file a person saw first); the others keep theirs.
        # (Trigger bodies stay on one line: migrations are split at ';' + newline.)
        """
CREATE TABLE outcome_paths (
    path TEXT PRIMARY KEY,
    outcome_id TEXT NOT NULL REFERENCES outcomes(id) ON DELETE CASCADE
) WITHOUT ROWID;
CREATE INDEX outcome_paths_by_outcome ON outcome_paths (outcome_id);
INSERT OR IGNORE INTO outcome_paths (path, outcome_id)
    SELECT outcome_path, id FROM outcomes WHERE outcome_path IS NOT NULL
    ORDER BY completed_at IS NULL, completed_at, n;
CREATE TRIGGER outcome_path_added AFTER INSERT ON outcomes WHEN NEW.outcome_path IS NOT NULL BEGIN INSERT INTO outcome_paths (path, outcome_id) VALUES (NEW.outcome_path, NEW.id); END;
CREATE TRIGGER outcome_path_moved AFTER UPDATE OF outcome_path ON outcomes WHEN NEW.outcome_path IS NOT OLD.outcome_path BEGIN DELETE FROM outcome_paths WHERE path = OLD.outcome_path AND outcome_id = OLD.id; INSERT INTO outcome_paths (path, outcome_id) SELECT NEW.outcome_path, NEW.id WHERE NEW.outcome_path IS NOT NULL; END
""",
    ),
    (
        9,
        # a webhook URL's path may be its secret (Discord, Teams, Slack): the shown target keeps the scheme and
        # host only (`https://host/…`), here and in the integration_logs rows that copied it
        f"""
UPDATE hook_subscriptions SET target = {_redacted("target")} WHERE {_has_path("target")};
UPDATE integration_logs SET details = json_set(details, '$.target', {_redacted(_LOGGED)})
WHERE json_valid(details) AND json_type(details, '$.target') = 'text' AND {_has_path(_LOGGED)}
""",
    ),
    (
        10,
        # the claim policy: status 'blocked' (the CHECK is rewritten in place through writable_schema: a
        # rebuild of outcomes would need foreign keys off, outside any transaction), priorities, lock keys,
        # caps; the dependency edges (an item waits for an item: outcome_deps; for every item of a package:
        # package_deps); the store-wide holder of each lock key (resource_locks)
        f"""
ALTER TABLE outcomes ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE outcomes ADD COLUMN waiting INTEGER NOT NULL DEFAULT 0;
ALTER TABLE outcomes ADD COLUMN locks TEXT;
ALTER TABLE outcomes ADD COLUMN cancelled_by INTEGER;
ALTER TABLE packages ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE packages ADD COLUMN max_concurrent INTEGER;
ALTER TABLE packages ADD COLUMN after TEXT;
ALTER TABLE packages ADD COLUMN blocked INTEGER NOT NULL DEFAULT 0;
ALTER TABLE packages ADD COLUMN has_dependents INTEGER NOT NULL DEFAULT 0;
ALTER TABLE packages ADD COLUMN max_item_priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN max_concurrent INTEGER;
ALTER TABLE runs ADD COLUMN on_dependency_failure TEXT NOT NULL DEFAULT 'cancel';
CREATE TABLE outcome_deps (
    before_n INTEGER NOT NULL REFERENCES outcomes(n) ON DELETE CASCADE,
    after_n INTEGER NOT NULL REFERENCES outcomes(n) ON DELETE CASCADE,
    PRIMARY KEY (before_n, after_n)
) WITHOUT ROWID;
CREATE INDEX outcome_deps_after ON outcome_deps (after_n);
CREATE TABLE package_deps (
    package_id INTEGER NOT NULL REFERENCES packages(id) ON DELETE CASCADE,
    after_n INTEGER NOT NULL REFERENCES outcomes(n) ON DELETE CASCADE,
    PRIMARY KEY (package_id, after_n)
) WITHOUT ROWID;
CREATE INDEX package_deps_after ON package_deps (after_n);
CREATE TABLE resource_locks (
    key TEXT PRIMARY KEY,
    n INTEGER NOT NULL,
    lease_token TEXT NOT NULL,
    run_id TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX resource_locks_by_outcome ON resource_locks (n);
CREATE INDEX outcomes_cancelled_by ON outcomes (cancelled_by) WHERE cancelled_by IS NOT NULL;
DROP INDEX outcomes_claimable;
CREATE INDEX outcomes_claimable ON outcomes (package_id, priority DESC, available_at, position) WHERE status = 'pending';
PRAGMA writable_schema = ON;
UPDATE sqlite_master SET sql = replace(sql, '''cancelled''))', '''cancelled'', ''blocked''))')
    WHERE type = 'table' AND name = 'outcomes';
{SCHEMA_VERSION_BUMP};
PRAGMA writable_schema = OFF
""",
    ),
    (
        11,
        # review gates, carried-over notes, usage and budgets: status 'in_review' (the CHECK rewritten in place
        # as in 10), each attempt's note, usage and review; usage sums per package, per worker of a run (the
        # run's own: spent_*, kept only while it has a budget), the run's review setting, budgets and why it
        # paused itself, each package's review setting (NULL: the run's)
        f"""
ALTER TABLE outcome_attempts ADD COLUMN note TEXT;
ALTER TABLE outcome_attempts ADD COLUMN input_tokens INTEGER;
ALTER TABLE outcome_attempts ADD COLUMN output_tokens INTEGER;
ALTER TABLE outcome_attempts ADD COLUMN cache_read_tokens INTEGER;
ALTER TABLE outcome_attempts ADD COLUMN cache_creation_tokens INTEGER;
ALTER TABLE outcome_attempts ADD COLUMN cost_usd REAL;
ALTER TABLE outcome_attempts ADD COLUMN model TEXT;
ALTER TABLE outcome_attempts ADD COLUMN review_decision TEXT;
ALTER TABLE outcome_attempts ADD COLUMN review_note TEXT;
ALTER TABLE outcome_attempts ADD COLUMN reviewed_by TEXT;
ALTER TABLE packages ADD COLUMN in_review INTEGER NOT NULL DEFAULT 0;
ALTER TABLE packages ADD COLUMN input_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE packages ADD COLUMN output_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE packages ADD COLUMN cache_read_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE packages ADD COLUMN cache_creation_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE packages ADD COLUMN cost_usd REAL NOT NULL DEFAULT 0;
ALTER TABLE packages ADD COLUMN review TEXT;
ALTER TABLE runs ADD COLUMN review TEXT NOT NULL DEFAULT 'none';
ALTER TABLE runs ADD COLUMN max_cost_usd REAL;
ALTER TABLE runs ADD COLUMN max_tokens INTEGER;
ALTER TABLE runs ADD COLUMN spent_cost_usd REAL NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN spent_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN paused_reason TEXT;
CREATE TABLE worker_usage (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    worker TEXT NOT NULL,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cache_read_tokens INTEGER NOT NULL DEFAULT 0,
    cache_creation_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, worker)
) WITHOUT ROWID;
PRAGMA writable_schema = ON;
UPDATE sqlite_master SET sql = replace(sql, '''blocked''))', '''blocked'', ''in_review''))')
    WHERE type = 'table' AND name = 'outcomes';
{SCHEMA_VERSION_BUMP};
PRAGMA writable_schema = OFF
""",
    ),
]
