-- lorastream schema, version 1 (DESIGN.md §2). Times are unix milliseconds, UTC.

-- One row per configured source: its cursor and health.
CREATE TABLE sources (
    name          TEXT PRIMARY KEY,
    kind          TEXT NOT NULL,
    cursor        TEXT,                         -- kind-specific, e.g. a row offset
    last_run_at   INTEGER,
    last_ok_at    INTEGER,
    last_error    TEXT,
    error_count   INTEGER NOT NULL DEFAULT 0,   -- consecutive failed runs
    degraded      INTEGER NOT NULL DEFAULT 0 CHECK (degraded IN (0, 1)),
    items_total   INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL
);

-- Crawled records, stored once per content hash whatever source saw them.
CREATE TABLE raw_items (
    id            INTEGER PRIMARY KEY,
    source        TEXT NOT NULL REFERENCES sources(name),
    content_hash  TEXT NOT NULL UNIQUE,
    external_id   TEXT,
    url           TEXT,
    question      TEXT NOT NULL,
    answer        TEXT,
    meta          TEXT NOT NULL DEFAULT '{}',   -- JSON: upvotes, comment_count, shares, date
    fetched_at    INTEGER NOT NULL,
    state         TEXT NOT NULL DEFAULT 'new' CHECK (state IN ('new', 'processed', 'dropped')),
    drop_reason   TEXT
);
CREATE INDEX raw_items_state ON raw_items (state, id);

-- Sealed batches of examples; files under streams/<id>/.
CREATE TABLE streams (
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    n_train       INTEGER NOT NULL,
    n_eval        INTEGER NOT NULL,
    path          TEXT NOT NULL,
    state         TEXT NOT NULL DEFAULT 'sealed'
                  CHECK (state IN ('sealed', 'training', 'trained', 'failed'))
);

-- Chat examples made from raw items (or imported, or from conversations).
CREATE TABLE examples (
    id              INTEGER PRIMARY KEY,
    raw_item_id     INTEGER REFERENCES raw_items(id),
    content_hash    TEXT NOT NULL UNIQUE,
    messages        TEXT NOT NULL,                 -- JSON array of {role, content}
    origin          TEXT NOT NULL DEFAULT 'crawl' CHECK (origin IN ('crawl', 'import', 'conversation')),
    quality         TEXT NOT NULL DEFAULT '{}',    -- JSON flags
    summary_backend TEXT,                          -- extractive | openai | none, when condensed
    summary         TEXT,                          -- the condensed answer used for training
    state           TEXT NOT NULL DEFAULT 'new' CHECK (state IN ('new', 'ready', 'sealed', 'dropped')),
    stream_id       INTEGER REFERENCES streams(id),
    split           TEXT CHECK (split IN ('train', 'eval')),
    created_at      INTEGER NOT NULL
);
CREATE INDEX examples_state ON examples (state, id);
CREATE INDEX examples_stream ON examples (stream_id, split);

-- Adapter versions. parent_id: the version training started from.
CREATE TABLE adapters (
    id            INTEGER PRIMARY KEY,
    parent_id     INTEGER REFERENCES adapters(id),
    stream_id     INTEGER NOT NULL REFERENCES streams(id),
    attempt       INTEGER NOT NULL DEFAULT 1,
    path          TEXT NOT NULL,
    hyperparams   TEXT NOT NULL DEFAULT '{}',   -- JSON
    train_log     TEXT,                         -- JSON: loss per step
    decision      TEXT,                         -- JSON: feedback reasons and numbers
    state         TEXT NOT NULL DEFAULT 'training'
                  CHECK (state IN ('training', 'candidate', 'promoted', 'rejected', 'rolled_back', 'failed')),
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);
CREATE INDEX adapters_state ON adapters (state, id);

-- The perplexity matrix. adapter_id 0 = the base model; stream_id 0 = the probe set.
CREATE TABLE evals (
    adapter_id    INTEGER NOT NULL,
    stream_id     INTEGER NOT NULL,
    perplexity    REAL NOT NULL,
    nll_sum       REAL NOT NULL,
    tokens        INTEGER NOT NULL,
    evaluated_at  INTEGER NOT NULL,
    PRIMARY KEY (adapter_id, stream_id)
);

-- Chat history.
CREATE TABLE conversations (
    id            TEXT PRIMARY KEY,
    title         TEXT,
    adapter_id    INTEGER,
    learn         INTEGER NOT NULL DEFAULT 0 CHECK (learn IN (0, 1)),  -- opted in to training
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);

CREATE TABLE messages (
    id              INTEGER PRIMARY KEY,
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role            TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
    content         TEXT NOT NULL,
    created_at      INTEGER NOT NULL
);
CREATE INDEX messages_conversation ON messages (conversation_id, id);

-- Full-text index over message content for memory retrieval.
CREATE VIRTUAL TABLE messages_fts USING fts5 (content, content = 'messages', content_rowid = 'id');
CREATE TRIGGER messages_ai AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content);
END;
CREATE TRIGGER messages_ad AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
END;
CREATE TRIGGER messages_au AFTER UPDATE ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
    INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content);
END;
