"""Versioned migrations for the PostgreSQL outcome store. Append new versions; never edit old ones.

Applied at start-up inside one transaction under an advisory lock, so several server processes may
start at once. Times are epoch seconds in double precision (the engine passes them in), JSON is
stored as text written by `rows.dumps` — both exactly as in the SQLite store.

Counters without a hot row: transitions append to `package_deltas`; one roller (advisory lock)
folds them into `packages` (counters, and since migration 2 the duration histogram as the sorted
arrays `hist_b`/`hist_n` on the package row) and `outcome_minutes`. Readers add the not yet rolled
deltas through the `package_counters`, `package_hist` and `run_minutes` views.
"""

from __future__ import annotations

MIGRATION_LOCK = 0x6D61_7472_0001  # pg_advisory_xact_lock key for migrations
ROLLUP_LOCK = 0x6D61_7472_0002  # one counter roller at a time across processes
EVENTS_LOCK = 0x6D61_7472_0003  # events get their sequence numbers in commit order
NOTIFY_CHANNEL = "matrix_events"

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
CREATE TABLE runs (
    id text PRIMARY KEY,
    name text NOT NULL UNIQUE,
    goal text,
    state text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'paused', 'cancelled')),
    outcome_type text NOT NULL,
    lease_seconds double precision NOT NULL,
    max_attempts integer NOT NULL,
    backoff_seconds double precision NOT NULL,
    backoff_cap_seconds double precision NOT NULL,
    outcome_schema text,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL
);

CREATE TABLE packages (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id text NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    name text NOT NULL,
    description text,
    position integer NOT NULL,
    total bigint NOT NULL DEFAULT 0,
    pending bigint NOT NULL DEFAULT 0,
    generating bigint NOT NULL DEFAULT 0,
    complete bigint NOT NULL DEFAULT 0,
    failed bigint NOT NULL DEFAULT 0,
    cancelled bigint NOT NULL DEFAULT 0,
    duration_sum double precision NOT NULL DEFAULT 0,
    duration_n bigint NOT NULL DEFAULT 0,
    lines_sum double precision NOT NULL DEFAULT 0,
    quality_sum double precision NOT NULL DEFAULT 0,
    quality_n bigint NOT NULL DEFAULT 0,
    UNIQUE (run_id, name)
);

CREATE TABLE package_durations (
    package_id bigint NOT NULL REFERENCES packages(id) ON DELETE CASCADE,
    bucket integer NOT NULL,
    n bigint NOT NULL,
    PRIMARY KEY (package_id, bucket)
);

-- Append-only counter changes; one row per (package | bucket | minute) per committed batch.
CREATE TABLE package_deltas (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id text NOT NULL,
    package_id bigint,
    bucket integer,
    minute bigint,
    total bigint NOT NULL DEFAULT 0,
    pending bigint NOT NULL DEFAULT 0,
    generating bigint NOT NULL DEFAULT 0,
    complete bigint NOT NULL DEFAULT 0,
    failed bigint NOT NULL DEFAULT 0,
    cancelled bigint NOT NULL DEFAULT 0,
    duration_sum double precision NOT NULL DEFAULT 0,
    duration_n bigint NOT NULL DEFAULT 0,
    lines_sum double precision NOT NULL DEFAULT 0,
    quality_sum double precision NOT NULL DEFAULT 0,
    quality_n bigint NOT NULL DEFAULT 0,
    bucket_n bigint NOT NULL DEFAULT 0,
    m_completed bigint NOT NULL DEFAULT 0,
    m_failed bigint NOT NULL DEFAULT 0,
    m_duration_sum double precision NOT NULL DEFAULT 0,
    m_duration_n bigint NOT NULL DEFAULT 0
) WITH (autovacuum_vacuum_scale_factor = 0.0, autovacuum_vacuum_threshold = 1000,
        autovacuum_analyze_scale_factor = 0.0, autovacuum_analyze_threshold = 1000);
CREATE INDEX package_deltas_package ON package_deltas (package_id) WHERE package_id IS NOT NULL;
CREATE INDEX package_deltas_run ON package_deltas (run_id);

CREATE SEQUENCE claim_clock;

CREATE TABLE outcomes (
    n bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id text NOT NULL UNIQUE,
    run_id text NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    package_id bigint NOT NULL REFERENCES packages(id) ON DELETE CASCADE,
    item text NOT NULL,
    position integer NOT NULL,
    status text NOT NULL
        CHECK (status IN ('pending', 'generating', 'complete', 'failed', 'cancelled')),
    outcome_type text NOT NULL,
    outcome_path text,
    specifications text,
    attempts integer NOT NULL DEFAULT 0,
    worker text,
    created_by text,
    error_message text,
    metrics text NOT NULL DEFAULT '{}',
    metadata text NOT NULL DEFAULT '{}',
    content_sha256 text,
    content_bytes bigint,
    mime_type text,
    lease_token text,
    lease_expires_at double precision,
    available_at double precision NOT NULL,
    claim_seq bigint,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL,
    started_at double precision,
    completed_at double precision,
    duration_seconds double precision,
    UNIQUE (package_id, item)
) WITH (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.01,
        autovacuum_vacuum_insert_scale_factor = 0.05, autovacuum_vacuum_cost_limit = 2000);
CREATE INDEX outcomes_claimable ON outcomes (package_id, available_at, position) WHERE status = 'pending';
CREATE INDEX outcomes_leased ON outcomes (run_id, lease_expires_at) WHERE status = 'generating';
CREATE INDEX outcomes_run_status ON outcomes (run_id, status, n);
CREATE INDEX outcomes_run_n ON outcomes (run_id, n);
CREATE INDEX outcomes_last_claim ON outcomes (package_id, claim_seq) WHERE claim_seq IS NOT NULL;

CREATE TABLE outcome_attempts (
    outcome_id text NOT NULL,
    attempt integer NOT NULL,
    lease_token text NOT NULL,
    worker text,
    status text NOT NULL,
    error text,
    started_at double precision,
    ended_at double precision,
    PRIMARY KEY (outcome_id, lease_token)
) WITH (fillfactor = 85, autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.01);

CREATE TABLE outcome_metrics (
    outcome_id text NOT NULL,
    name text NOT NULL,
    value double precision NOT NULL,
    PRIMARY KEY (outcome_id, name)
);
CREATE INDEX outcome_metrics_name ON outcome_metrics (name, value);

CREATE TABLE outcome_minutes (
    run_id text NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    minute bigint NOT NULL,
    completed bigint NOT NULL DEFAULT 0,
    failed bigint NOT NULL DEFAULT 0,
    duration_sum double precision NOT NULL DEFAULT 0,
    duration_n bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, minute)
);

CREATE TABLE integration_logs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id text REFERENCES runs(id) ON DELETE CASCADE,
    outcome_id text,
    integration_type text NOT NULL,
    action text NOT NULL,
    status text NOT NULL,
    details text NOT NULL DEFAULT '{}',
    created_at double precision NOT NULL
);
CREATE INDEX integration_logs_run ON integration_logs (run_id, id);

CREATE TABLE events (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id text,
    outcome_id text,
    kind text NOT NULL,
    data text NOT NULL DEFAULT '{}',
    created_at double precision NOT NULL
) WITH (autovacuum_analyze_scale_factor = 0.02);
CREATE INDEX events_run ON events (run_id, seq);

CREATE VIEW package_counters AS
SELECT p.id, p.run_id, p.name, p.description, p.position,
       p.total + COALESCE(d.total, 0) AS total,
       p.pending + COALESCE(d.pending, 0) AS pending,
       p.generating + COALESCE(d.generating, 0) AS generating,
       p.complete + COALESCE(d.complete, 0) AS complete,
       p.failed + COALESCE(d.failed, 0) AS failed,
       p.cancelled + COALESCE(d.cancelled, 0) AS cancelled,
       p.duration_sum + COALESCE(d.duration_sum, 0) AS duration_sum,
       p.duration_n + COALESCE(d.duration_n, 0) AS duration_n,
       p.lines_sum + COALESCE(d.lines_sum, 0) AS lines_sum,
       p.quality_sum + COALESCE(d.quality_sum, 0) AS quality_sum,
       p.quality_n + COALESCE(d.quality_n, 0) AS quality_n
FROM packages p
LEFT JOIN LATERAL (
    SELECT SUM(x.total) AS total, SUM(x.pending) AS pending, SUM(x.generating) AS generating,
           SUM(x.complete) AS complete, SUM(x.failed) AS failed, SUM(x.cancelled) AS cancelled,
           SUM(x.duration_sum) AS duration_sum, SUM(x.duration_n) AS duration_n,
           SUM(x.lines_sum) AS lines_sum, SUM(x.quality_sum) AS quality_sum, SUM(x.quality_n) AS quality_n
    FROM package_deltas x
    WHERE x.package_id = p.id AND x.bucket IS NULL
) d ON true;

CREATE VIEW package_hist AS
SELECT package_id, bucket, SUM(n) AS n FROM (
    SELECT package_id, bucket, n FROM package_durations
    UNION ALL
    SELECT package_id, bucket, bucket_n FROM package_deltas WHERE bucket IS NOT NULL
) h GROUP BY package_id, bucket;

CREATE VIEW run_minutes AS
SELECT run_id, minute, SUM(completed) AS completed, SUM(failed) AS failed,
       SUM(duration_sum) AS duration_sum, SUM(duration_n) AS duration_n FROM (
    SELECT run_id, minute, completed, failed, duration_sum, duration_n FROM outcome_minutes
    UNION ALL
    SELECT run_id, minute, m_completed, m_failed, m_duration_sum, m_duration_n
    FROM package_deltas WHERE minute IS NOT NULL
) m GROUP BY run_id, minute;
""",
    ),
    (
        2,
        """
ALTER TABLE packages ADD COLUMN hist_b integer[] NOT NULL DEFAULT '{}',
    ADD COLUMN hist_n bigint[] NOT NULL DEFAULT '{}';
UPDATE packages p SET hist_b = h.b, hist_n = h.n
FROM (
    SELECT package_id, array_agg(bucket ORDER BY bucket) AS b, array_agg(n ORDER BY bucket) AS n
    FROM package_durations WHERE n <> 0 GROUP BY package_id
) h
WHERE h.package_id = p.id;
CREATE OR REPLACE VIEW package_hist AS
SELECT package_id, bucket, SUM(n) AS n FROM (
    SELECT p.id AS package_id, h.bucket, h.n FROM packages p, unnest(p.hist_b, p.hist_n) AS h(bucket, n)
    UNION ALL
    SELECT package_id, bucket, bucket_n FROM package_deltas WHERE bucket IS NOT NULL
) h GROUP BY package_id, bucket;
DROP TABLE package_durations;
""",
    ),
    (
        3,
        # the answers of committed writes, by request key, for the few seconds a transient-error retry
        # may need them: a retry whose earlier attempt committed (the answer lost with the connection)
        # returns the journaled answer instead of running the write twice. Pruned by the roller.
        """
CREATE TABLE write_answers (
    key text PRIMARY KEY,
    answer text NOT NULL,
    created_at double precision NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0.0, autovacuum_vacuum_threshold = 1000);
""",
    ),
    (
        4,
        # API keys for the HTTP service: only a SHA-256 of each key is kept (keys are 256-bit random);
        # every replica on this database shares them
        """
CREATE TABLE api_keys (
    name text PRIMARY KEY,
    key_hash text NOT NULL UNIQUE,
    scopes text NOT NULL,
    created_at double precision NOT NULL,
    last_used_at double precision,
    revoked_at double precision
);
""",
    ),
    (
        # issue 14, events out: webhook subscriptions with a cursor into `events`, their deliveries, and
        # what a sink remembers between calls (a Slack thread, a Jira issue key, a GitHub pull request)
        5,
        """
CREATE TABLE hook_subscriptions (
    id text PRIMARY KEY,
    kind text NOT NULL,
    target text NOT NULL,
    description text,
    events text NOT NULL DEFAULT '["*"]',
    run_name text,
    config text NOT NULL DEFAULT '{}',
    credentials text NOT NULL,
    active boolean NOT NULL DEFAULT true,
    disabled_reason text,
    cursor bigint NOT NULL DEFAULT 0,
    lease_owner text,
    lease_expires_at double precision,
    failures integer NOT NULL DEFAULT 0,
    failing_since double precision,
    circuit_open_until double precision,
    last_success_at double precision,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL
);

CREATE TABLE hook_deliveries (
    n bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id text NOT NULL UNIQUE,
    subscription_id text NOT NULL REFERENCES hook_subscriptions(id) ON DELETE CASCADE,
    seq bigint NOT NULL,
    event_type text NOT NULL,
    run_name text,
    body text NOT NULL,
    status text NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at double precision NOT NULL,
    last_status_code integer,
    last_error text,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL,
    delivered_at double precision
);
CREATE INDEX hook_deliveries_due ON hook_deliveries (subscription_id, next_attempt_at, seq) WHERE status = 'pending';
CREATE INDEX hook_deliveries_by_subscription ON hook_deliveries (subscription_id, n);

CREATE TABLE hook_links (
    subscription_id text NOT NULL REFERENCES hook_subscriptions(id) ON DELETE CASCADE,
    ref text NOT NULL,
    value text NOT NULL,
    PRIMARY KEY (subscription_id, ref)
)
""",
    ),
    (
        6,
        # small content, kept in the store with the report that brought it (one transaction, one commit);
        # the file under the artifacts root is a copy, rebuilt from here when missing
        """
CREATE TABLE contents (
    sha256 text PRIMARY KEY,
    body bytea NOT NULL
);
""",
    ),
    (
        7,
        # who claimed each attempt (`key:NAME` / `jwt:SUB`; NULL on an open service or stdio)
        "ALTER TABLE outcome_attempts ADD COLUMN principal text",
    ),
    (
        8,
        # issue 11, the narrow queue: what claims, the lease sweep and claim fairness look up lives in a
        # small row of its own (one per outcome, kept after the item is done so its claim_seq still orders
        # the packages), with the only indexes the claim and the sweep need. The outcome row loses its
        # queue indexes, so no index of `outcomes` names a column a claim or a report writes: both update
        # it HOT (same page, no index entry) — a claim writes the narrow row and its index entries only.
        # `final` is the item's final status once it is out of the queue (NULL while pending or leased):
        # listings by status read the queue's `outcome_queue_status` index (its pending and final rows by
        # run, in `n` order) instead of walking a run's outcomes; a claim adds no entry to it (a leased row
        # is outside its predicate), a report one. Every read of the queue is an index probe or a short
        # range; no parallel plan (the generic plan of a listing, which guesses a LIMIT at a tenth of the
        # rows, chose one and paid ~8 ms of worker start-up for 51 rows).
        # Free space for HOT: an outcome row is updated twice (claim, report) and its attempt once after
        # the insert that filled the page; at fillfactor 80 / 85 about one outcome update in eight and 59 %
        # of the attempts' closes left the page (a new index entry each), at 55 / 50 none (new pages only).
        """
CREATE TABLE outcome_queue (
    n bigint PRIMARY KEY REFERENCES outcomes(n) ON DELETE CASCADE,
    run_id text NOT NULL,
    package_id bigint NOT NULL,
    position integer NOT NULL,
    available_at double precision NOT NULL,
    lease_token text,
    lease_expires_at double precision,
    claim_seq bigint,
    final text CHECK (final IN ('complete', 'failed', 'cancelled'))
) WITH (fillfactor = 70, autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.01,
        autovacuum_vacuum_insert_scale_factor = 0.05, autovacuum_vacuum_cost_limit = 2000,
        parallel_workers = 0);
INSERT INTO outcome_queue (n, run_id, package_id, position, available_at, lease_token, lease_expires_at,
                           claim_seq, final)
SELECT n, run_id, package_id, position, available_at,
       CASE WHEN status = 'generating' THEN lease_token END,
       CASE WHEN status = 'generating' THEN lease_expires_at END,
       claim_seq, CASE WHEN status NOT IN ('pending', 'generating') THEN status END
FROM outcomes ORDER BY n;
CREATE INDEX outcome_queue_claimable ON outcome_queue (package_id, available_at, position)
    WHERE lease_token IS NULL AND final IS NULL;
CREATE INDEX outcome_queue_leased ON outcome_queue (run_id, lease_expires_at) WHERE lease_token IS NOT NULL;
CREATE INDEX outcome_queue_last_claim ON outcome_queue (package_id, claim_seq) WHERE claim_seq IS NOT NULL;
CREATE INDEX outcome_queue_status ON outcome_queue (final, run_id, n) WHERE lease_token IS NULL;
DROP INDEX outcomes_claimable;
DROP INDEX outcomes_leased;
DROP INDEX outcomes_last_claim;
DROP INDEX outcomes_run_status;
ALTER TABLE outcome_attempts SET (fillfactor = 50);
ALTER TABLE outcomes SET (fillfactor = 55);
ANALYZE outcome_queue;
""",
    ),
    (
        9,
        # board sessions ended by sign-out, refused by every replica until the cookie would have expired
        # anyway (`expires_at`); the id is a SHA-256 of the sealed cookie, never the cookie
        """
CREATE TABLE revoked_sessions (
    session_id text PRIMARY KEY,
    expires_at double precision NOT NULL
);
""",
    ),
    (
        10,
        # one outcome per readable file: the key on `path` refuses a second outcome's path in the writing
        # statement itself (a concurrent insert of the same path waits for the first to commit, then
        # fails), so of two reports racing for one path exactly one commits. Kept by a trigger, so every
        # statement that sets outcome_path obeys it. Paths two outcomes shared before this version are held
        # by the first completed (the file a person saw first); the others keep theirs.
        # (The function body stays on one line: migrations are split at ';' + newline.)
        """
CREATE TABLE outcome_paths (
    path text PRIMARY KEY,
    outcome_id text NOT NULL REFERENCES outcomes(id) ON DELETE CASCADE
);
CREATE INDEX outcome_paths_by_outcome ON outcome_paths (outcome_id);
INSERT INTO outcome_paths (path, outcome_id)
    SELECT DISTINCT ON (outcome_path) outcome_path, id FROM outcomes WHERE outcome_path IS NOT NULL
    ORDER BY outcome_path, completed_at NULLS LAST, n;
CREATE FUNCTION matrix_hold_outcome_path() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF TG_OP = 'UPDATE' AND OLD.outcome_path IS NOT NULL THEN DELETE FROM outcome_paths WHERE path = OLD.outcome_path AND outcome_id = OLD.id; END IF; IF NEW.outcome_path IS NOT NULL THEN INSERT INTO outcome_paths (path, outcome_id) VALUES (NEW.outcome_path, NEW.id); END IF; RETURN NULL; END $$;
CREATE TRIGGER outcome_path_added AFTER INSERT ON outcomes FOR EACH ROW WHEN (NEW.outcome_path IS NOT NULL)
    EXECUTE FUNCTION matrix_hold_outcome_path();
CREATE TRIGGER outcome_path_moved AFTER UPDATE OF outcome_path ON outcomes FOR EACH ROW
    WHEN (OLD.outcome_path IS DISTINCT FROM NEW.outcome_path) EXECUTE FUNCTION matrix_hold_outcome_path();
""",
    ),
    (
        11,
        # a webhook URL's path may be its secret (Discord, Teams, Slack): the shown target keeps the scheme and
        # host only (`https://host/…`), here and in the integration_logs rows that copied it
        r"""
UPDATE hook_subscriptions SET target = regexp_replace(target, '^([a-z][a-z0-9+.-]*://[^/]*/).+$', '\1…')
WHERE target ~ '^[a-z][a-z0-9+.-]*://[^/]*/.' AND target NOT LIKE '%/…';
UPDATE integration_logs SET details = jsonb_set(details::jsonb, '{target}', to_jsonb(
    regexp_replace(details::jsonb ->> 'target', '^([a-z][a-z0-9+.-]*://[^/]*/).+$', '\1…')))::text
WHERE details LIKE '%"target"%' AND jsonb_typeof(details::jsonb -> 'target') = 'string'
    AND (details::jsonb ->> 'target') ~ '^[a-z][a-z0-9+.-]*://[^/]*/.'
    AND (details::jsonb ->> 'target') NOT LIKE '%/…'
""",
    ),
    (
        12,
        # /metrics reads the store-wide totals on every scrape: a sum over every package ever planned cost
        # 14 ms at 20,000 packages. Each run's totals now live in one row, moved by the roller in the
        # statement that moves its packages (and set by a rebuild), so a scrape sums a row per run plus the
        # deltas not yet rolled. The backfill holds the roller's lock (ROLLUP_LOCK, 0x6D6174720002), so no
        # roll lands between the sum and the table. `packages_name`: the scrape's per-name counts look
        # packages up by name (a seq scan of every package before).
        """
SELECT pg_advisory_xact_lock(120265332883458);
CREATE TABLE run_counters (
    run_id text PRIMARY KEY REFERENCES runs(id) ON DELETE CASCADE,
    pending bigint NOT NULL DEFAULT 0,
    generating bigint NOT NULL DEFAULT 0,
    complete bigint NOT NULL DEFAULT 0,
    failed bigint NOT NULL DEFAULT 0,
    cancelled bigint NOT NULL DEFAULT 0
);
INSERT INTO run_counters (run_id, pending, generating, complete, failed, cancelled)
    SELECT run_id, SUM(pending), SUM(generating), SUM(complete), SUM(failed), SUM(cancelled)
    FROM packages GROUP BY run_id;
CREATE INDEX packages_name ON packages (name)
""",
    ),
    (
        13,
        # issue 22, the claim policy: dependencies (a `blocked` status, counted like the others), priorities,
        # store-wide lock keys and max_concurrent caps. The claim reads what it needs from the narrow queue:
        # the item's priority (the claimable index now orders a package's items by it) and lock keys, and two
        # flags a report reads back from the row it updates (so a plan that adds a dependent while the report
        # waits on that row is seen): `dependents` (items wait for this one) and `gate` (items wait for its
        # whole package). A blocked item is out of the claimable index (final 'blocked'). `runs.gated`: its
        # claims pass through lock keys or caps (set by a plan, never cleared); `packages.prio_lo/prio_hi`:
        # the range of its items' priorities (the claim shares a round among packages whose items are all of
        # one priority, and looks further where they differ). `resource_locks`: the holder of each key,
        # store-wide; `expires_at` is its lease's expiry (kept by heartbeats), so a claim decides on the key's
        # row alone whether its holder is dead. Dependency rows carry no foreign keys: outcomes are never
        # deleted, and a plan of 20,000 edges would pay 40,000 key checks. The roller's lock keeps a roll
        # from landing between the new counter columns and the views that read them.
        """
SELECT pg_advisory_xact_lock(120265332883458);
ALTER TABLE runs ADD COLUMN max_concurrent integer CHECK (max_concurrent >= 1),
    ADD COLUMN on_dependency_failure text NOT NULL DEFAULT 'cancel'
        CHECK (on_dependency_failure IN ('cancel', 'block')),
    ADD COLUMN gated boolean NOT NULL DEFAULT false;
ALTER TABLE packages ADD COLUMN blocked bigint NOT NULL DEFAULT 0,
    ADD COLUMN priority integer NOT NULL DEFAULT 0,
    ADD COLUMN max_concurrent integer CHECK (max_concurrent >= 1),
    ADD COLUMN after text,
    ADD COLUMN has_dependents boolean NOT NULL DEFAULT false,
    ADD COLUMN prio_lo integer,
    ADD COLUMN prio_hi integer;
UPDATE packages p SET prio_lo = 0, prio_hi = 0 WHERE EXISTS (SELECT 1 FROM outcomes o WHERE o.package_id = p.id);
CREATE INDEX packages_capped ON packages (run_id) WHERE max_concurrent IS NOT NULL;
ALTER TABLE package_deltas ADD COLUMN blocked bigint NOT NULL DEFAULT 0;
ALTER TABLE run_counters ADD COLUMN blocked bigint NOT NULL DEFAULT 0;
ALTER TABLE outcomes DROP CONSTRAINT outcomes_status_check,
    ADD CONSTRAINT outcomes_status_check
        CHECK (status IN ('pending', 'generating', 'complete', 'failed', 'cancelled', 'blocked')),
    ADD COLUMN priority integer NOT NULL DEFAULT 0,
    ADD COLUMN waiting integer NOT NULL DEFAULT 0,
    ADD COLUMN locks text,
    ADD COLUMN cancelled_by bigint;
CREATE INDEX outcomes_cancelled_by ON outcomes (cancelled_by) WHERE cancelled_by IS NOT NULL;
ALTER TABLE outcome_queue DROP CONSTRAINT outcome_queue_final_check,
    ADD CONSTRAINT outcome_queue_final_check CHECK (final IN ('complete', 'failed', 'cancelled', 'blocked')),
    ADD COLUMN priority integer NOT NULL DEFAULT 0,
    ADD COLUMN locks text[],
    ADD COLUMN dependents boolean NOT NULL DEFAULT false,
    ADD COLUMN gate boolean NOT NULL DEFAULT false;
DROP INDEX outcome_queue_claimable;
CREATE INDEX outcome_queue_claimable ON outcome_queue (package_id, priority DESC, available_at, position)
    WHERE lease_token IS NULL AND final IS NULL;
CREATE TABLE outcome_deps (
    before_n bigint NOT NULL,
    after_n bigint NOT NULL,
    PRIMARY KEY (before_n, after_n)
);
CREATE INDEX outcome_deps_after ON outcome_deps (after_n);
CREATE TABLE package_deps (
    package_id bigint NOT NULL,
    after_n bigint NOT NULL,
    PRIMARY KEY (package_id, after_n)
);
CREATE INDEX package_deps_after ON package_deps (after_n);
CREATE TABLE resource_locks (
    key text PRIMARY KEY,
    n bigint NOT NULL,
    lease_token text NOT NULL,
    run_id text NOT NULL,
    expires_at double precision NOT NULL
) WITH (fillfactor = 70);
CREATE OR REPLACE VIEW package_counters AS
SELECT p.id, p.run_id, p.name, p.description, p.position,
       p.total + COALESCE(d.total, 0) AS total,
       p.pending + COALESCE(d.pending, 0) AS pending,
       p.generating + COALESCE(d.generating, 0) AS generating,
       p.complete + COALESCE(d.complete, 0) AS complete,
       p.failed + COALESCE(d.failed, 0) AS failed,
       p.cancelled + COALESCE(d.cancelled, 0) AS cancelled,
       p.duration_sum + COALESCE(d.duration_sum, 0) AS duration_sum,
       p.duration_n + COALESCE(d.duration_n, 0) AS duration_n,
       p.lines_sum + COALESCE(d.lines_sum, 0) AS lines_sum,
       p.quality_sum + COALESCE(d.quality_sum, 0) AS quality_sum,
       p.quality_n + COALESCE(d.quality_n, 0) AS quality_n,
       p.blocked + COALESCE(d.blocked, 0) AS blocked,
       p.priority, p.max_concurrent, p.after, p.has_dependents
FROM packages p
LEFT JOIN LATERAL (
    SELECT SUM(x.total) AS total, SUM(x.pending) AS pending, SUM(x.generating) AS generating,
           SUM(x.complete) AS complete, SUM(x.failed) AS failed, SUM(x.cancelled) AS cancelled,
           SUM(x.duration_sum) AS duration_sum, SUM(x.duration_n) AS duration_n,
           SUM(x.lines_sum) AS lines_sum, SUM(x.quality_sum) AS quality_sum, SUM(x.quality_n) AS quality_n,
           SUM(x.blocked) AS blocked
    FROM package_deltas x
    WHERE x.package_id = p.id AND x.bucket IS NULL
) d ON true
""",
    ),
    (
        14,
        # review gates, carried-over notes, usage and budgets: status 'in_review' (counted like the others; out
        # of the claimable index and not leased: final 'in_review'), each attempt's note, usage and review;
        # usage sums per package (through package_deltas and the roller, like the counters) and per run
        # (run_counters), per worker of a run (worker_usage, moved in the report's transaction); the run's
        # review setting, budgets, why it paused itself and its exact totals spent_* (kept only while it has a
        # budget, under the run row's lock); each package's review setting (NULL: the run's). The roller's lock
        # keeps a roll from landing between the new columns and the view that reads them.
        """
SELECT pg_advisory_xact_lock(120265332883458);
ALTER TABLE outcome_attempts ADD COLUMN note text,
    ADD COLUMN input_tokens bigint, ADD COLUMN output_tokens bigint, ADD COLUMN cache_read_tokens bigint,
    ADD COLUMN cache_creation_tokens bigint, ADD COLUMN cost_usd double precision, ADD COLUMN model text,
    ADD COLUMN review_decision text, ADD COLUMN review_note text, ADD COLUMN reviewed_by text;
ALTER TABLE packages ADD COLUMN in_review bigint NOT NULL DEFAULT 0,
    ADD COLUMN input_tokens bigint NOT NULL DEFAULT 0, ADD COLUMN output_tokens bigint NOT NULL DEFAULT 0,
    ADD COLUMN cache_read_tokens bigint NOT NULL DEFAULT 0, ADD COLUMN cache_creation_tokens bigint NOT NULL DEFAULT 0,
    ADD COLUMN cost_usd double precision NOT NULL DEFAULT 0, ADD COLUMN review text;
ALTER TABLE package_deltas ADD COLUMN in_review bigint NOT NULL DEFAULT 0,
    ADD COLUMN input_tokens bigint NOT NULL DEFAULT 0, ADD COLUMN output_tokens bigint NOT NULL DEFAULT 0,
    ADD COLUMN cache_read_tokens bigint NOT NULL DEFAULT 0, ADD COLUMN cache_creation_tokens bigint NOT NULL DEFAULT 0,
    ADD COLUMN cost_usd double precision NOT NULL DEFAULT 0;
ALTER TABLE run_counters ADD COLUMN in_review bigint NOT NULL DEFAULT 0,
    ADD COLUMN input_tokens bigint NOT NULL DEFAULT 0, ADD COLUMN output_tokens bigint NOT NULL DEFAULT 0,
    ADD COLUMN cache_read_tokens bigint NOT NULL DEFAULT 0, ADD COLUMN cache_creation_tokens bigint NOT NULL DEFAULT 0,
    ADD COLUMN cost_usd double precision NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN review text NOT NULL DEFAULT 'none' CHECK (review IN ('none', 'required')),
    ADD COLUMN max_cost_usd double precision CHECK (max_cost_usd >= 0),
    ADD COLUMN max_tokens bigint CHECK (max_tokens >= 0),
    ADD COLUMN spent_cost_usd double precision NOT NULL DEFAULT 0,
    ADD COLUMN spent_tokens bigint NOT NULL DEFAULT 0,
    ADD COLUMN paused_reason text;
CREATE TABLE worker_usage (
    run_id text NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    worker text NOT NULL,
    input_tokens bigint NOT NULL DEFAULT 0,
    output_tokens bigint NOT NULL DEFAULT 0,
    cache_read_tokens bigint NOT NULL DEFAULT 0,
    cache_creation_tokens bigint NOT NULL DEFAULT 0,
    cost_usd double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, worker)
);
ALTER TABLE outcomes DROP CONSTRAINT outcomes_status_check,
    ADD CONSTRAINT outcomes_status_check
        CHECK (status IN ('pending', 'generating', 'complete', 'failed', 'cancelled', 'blocked', 'in_review'));
ALTER TABLE outcome_queue DROP CONSTRAINT outcome_queue_final_check,
    ADD CONSTRAINT outcome_queue_final_check
        CHECK (final IN ('complete', 'failed', 'cancelled', 'blocked', 'in_review'));
CREATE OR REPLACE VIEW package_counters AS
SELECT p.id, p.run_id, p.name, p.description, p.position,
       p.total + COALESCE(d.total, 0) AS total,
       p.pending + COALESCE(d.pending, 0) AS pending,
       p.generating + COALESCE(d.generating, 0) AS generating,
       p.complete + COALESCE(d.complete, 0) AS complete,
       p.failed + COALESCE(d.failed, 0) AS failed,
       p.cancelled + COALESCE(d.cancelled, 0) AS cancelled,
       p.duration_sum + COALESCE(d.duration_sum, 0) AS duration_sum,
       p.duration_n + COALESCE(d.duration_n, 0) AS duration_n,
       p.lines_sum + COALESCE(d.lines_sum, 0) AS lines_sum,
       p.quality_sum + COALESCE(d.quality_sum, 0) AS quality_sum,
       p.quality_n + COALESCE(d.quality_n, 0) AS quality_n,
       p.blocked + COALESCE(d.blocked, 0) AS blocked,
       p.priority, p.max_concurrent, p.after, p.has_dependents,
       p.in_review + COALESCE(d.in_review, 0) AS in_review,
       p.input_tokens + COALESCE(d.input_tokens, 0) AS input_tokens,
       p.output_tokens + COALESCE(d.output_tokens, 0) AS output_tokens,
       p.cache_read_tokens + COALESCE(d.cache_read_tokens, 0) AS cache_read_tokens,
       p.cache_creation_tokens + COALESCE(d.cache_creation_tokens, 0) AS cache_creation_tokens,
       p.cost_usd + COALESCE(d.cost_usd, 0) AS cost_usd,
       p.review
FROM packages p
LEFT JOIN LATERAL (
    SELECT SUM(x.total) AS total, SUM(x.pending) AS pending, SUM(x.generating) AS generating,
           SUM(x.complete) AS complete, SUM(x.failed) AS failed, SUM(x.cancelled) AS cancelled,
           SUM(x.duration_sum) AS duration_sum, SUM(x.duration_n) AS duration_n,
           SUM(x.lines_sum) AS lines_sum, SUM(x.quality_sum) AS quality_sum, SUM(x.quality_n) AS quality_n,
           SUM(x.blocked) AS blocked, SUM(x.in_review) AS in_review, SUM(x.input_tokens) AS input_tokens,
           SUM(x.output_tokens) AS output_tokens, SUM(x.cache_read_tokens) AS cache_read_tokens,
           SUM(x.cache_creation_tokens) AS cache_creation_tokens, SUM(x.cost_usd) AS cost_usd
    FROM package_deltas x
    WHERE x.package_id = p.id AND x.bucket IS NULL
) d ON true
""",
    ),
]
