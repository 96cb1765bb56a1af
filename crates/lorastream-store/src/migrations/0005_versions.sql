-- lorastream schema, version 5: the feedback loop's versions (issue 13).
-- Tables are rebuilt to widen their state CHECKs (foreign keys are off while
-- migrations run, and checked before commit).

-- Streams: not_learned = every attempt was rejected; its data stays for replay.
CREATE TABLE streams_new (
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    n_train       INTEGER NOT NULL,
    n_eval        INTEGER NOT NULL,
    path          TEXT NOT NULL,
    state         TEXT NOT NULL DEFAULT 'sealed'
                  CHECK (state IN ('sealed', 'training', 'trained', 'failed', 'not_learned'))
);
INSERT INTO streams_new SELECT id, name, created_at, n_train, n_eval, path, state FROM streams;
DROP TABLE streams;
ALTER TABLE streams_new RENAME TO streams;

-- Adapters: kind 'merge' rows are base snapshots (the lineage merged into the
-- weights); promoted_seq orders promotions (the served version has the highest
-- one among promoted rows), independent of wall-clock time.
CREATE TABLE adapters_new (
    id            INTEGER PRIMARY KEY,
    parent_id     INTEGER REFERENCES adapters(id),
    stream_id     INTEGER NOT NULL REFERENCES streams(id),
    attempt       INTEGER NOT NULL DEFAULT 1,
    kind          TEXT NOT NULL DEFAULT 'lora' CHECK (kind IN ('lora', 'merge')),
    path          TEXT NOT NULL,
    hyperparams   TEXT NOT NULL DEFAULT '{}',
    train_log     TEXT,
    decision      TEXT,
    state         TEXT NOT NULL DEFAULT 'training'
                  CHECK (state IN ('training', 'candidate', 'promoted', 'rejected', 'rolled_back',
                                   'not_learned', 'failed')),
    promoted_seq  INTEGER,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);
INSERT INTO adapters_new (id, parent_id, stream_id, attempt, path, hyperparams, train_log,
                          decision, state, promoted_seq, created_at, updated_at)
SELECT id, parent_id, stream_id, attempt, path, hyperparams, train_log, decision, state,
       CASE WHEN state = 'promoted'
            THEN (SELECT COUNT(*) FROM adapters b WHERE b.state = 'promoted'
                  AND (b.updated_at < a.updated_at OR (b.updated_at = a.updated_at AND b.id <= a.id)))
       END,
       created_at, updated_at
FROM adapters a;
DROP TABLE adapters;
ALTER TABLE adapters_new RENAME TO adapters;
CREATE INDEX adapters_state ON adapters (state, id);

-- Every change of a version's state: when, by whom (daemon or cli), why.
CREATE TABLE adapter_events (
    id            INTEGER PRIMARY KEY,
    adapter_id    INTEGER NOT NULL REFERENCES adapters(id),
    at            INTEGER NOT NULL,
    from_state    TEXT,
    to_state      TEXT NOT NULL,
    actor         TEXT NOT NULL,
    reason        TEXT NOT NULL DEFAULT ''
);
CREATE INDEX adapter_events_adapter ON adapter_events (adapter_id, id);
