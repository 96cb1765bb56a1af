-- lorastream schema, version 6: unattended operation (issue 14).

-- Items that failed: a poison item (a page, a stream, a version) is
-- retried at most [daemon] max_item_failures times, then set aside with its
-- reason, shown by `status`, and the rest goes on.
CREATE TABLE item_failures (
    kind        TEXT NOT NULL CHECK (kind IN ('url', 'stream', 'version')),
    key         TEXT NOT NULL,                 -- "<source> <url>", stream id, adapter id
    failures    INTEGER NOT NULL,
    last_error  TEXT NOT NULL,
    set_aside   INTEGER NOT NULL DEFAULT 0 CHECK (set_aside IN (0, 1)),
    first_at    INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (kind, key)
);

-- Spool files ingested in chunks: each chunk's records and `rows_done` commit
-- together, so a restart resumes the file after the last chunk. A file is the
-- same file while its size and modification time are.
CREATE TABLE spool_files (
    source      TEXT NOT NULL REFERENCES sources(name),
    name        TEXT NOT NULL,
    size        INTEGER NOT NULL,
    mtime_ns    INTEGER NOT NULL,
    rows_total  INTEGER NOT NULL,
    rows_done   INTEGER NOT NULL DEFAULT 0,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (source, name)
);
