-- lorastream schema, version 8: publish targets (issue 25), so `status` (another
-- process), the web page and /metrics show where each target stands.
CREATE TABLE publish_targets (
    name          TEXT PRIMARY KEY,
    kind          TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('ok', 'degraded')),
    version       INTEGER,                     -- the served version it holds (NULL: the base)
    published     TEXT NOT NULL DEFAULT '[]',  -- JSON array: the versions it holds
    failures      INTEGER NOT NULL DEFAULT 0,  -- consecutive failed runs
    last_error    TEXT,
    last_ok_at    INTEGER,
    updated_at    INTEGER NOT NULL
);
