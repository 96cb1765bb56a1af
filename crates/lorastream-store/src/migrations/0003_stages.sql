-- lorastream schema, version 3: the daemon's stages (issue 6), so `status`
-- (another process) sees what each actor is doing and how often it failed.
CREATE TABLE stages (
    name          TEXT PRIMARY KEY,
    state         TEXT NOT NULL DEFAULT 'idle' CHECK (state IN ('idle', 'running', 'backoff', 'stopped')),
    detail        TEXT,
    runs          INTEGER NOT NULL DEFAULT 0,
    failures      INTEGER NOT NULL DEFAULT 0,   -- all failures since the store was created
    last_error    TEXT,
    updated_at    INTEGER NOT NULL
);
