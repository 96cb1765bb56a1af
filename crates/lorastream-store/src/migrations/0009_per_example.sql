-- lorastream schema, version 9: each cell of the perplexity matrix keeps its
-- per-example figures (issue 26): a JSON array of [nll_sum, tokens], one per
-- example in the stream's eval order, so decisions can pair the same
-- examples under two versions and say how sure they are (NULL: a cell from
-- before, which decisions take as a point estimate).
ALTER TABLE evals ADD COLUMN per_example TEXT;
