-- lorastream schema, version 2: the data plane (issue 5).

-- Folded text of each crawled example (case, punctuation and whitespace
-- removed), so near-identical pairs from different sources are caught.
ALTER TABLE examples ADD COLUMN norm_hash TEXT;
CREATE INDEX examples_norm_hash ON examples (norm_hash);

-- Pages a source has fetched already (Crawlbase question URLs), so each run
-- fetches only new ones.
CREATE TABLE seen_urls (
    source   TEXT NOT NULL REFERENCES sources(name),
    url      TEXT NOT NULL,
    seen_at  INTEGER NOT NULL,
    PRIMARY KEY (source, url)
);
