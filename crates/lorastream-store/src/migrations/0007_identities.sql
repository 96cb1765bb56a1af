-- lorastream schema, version 7: conversations owned by an identity (issue 23).
-- A conversation belongs to (identity, user): the identity is the API key's
-- name ([[server.keys]]), `user` the end user inside it (OpenAI's `user`).
-- Conversations from before identities belong to `default`, the identity of
-- the single `api_key_file`/`api_key_env` key or of a daemon without keys.
ALTER TABLE conversations ADD COLUMN identity TEXT NOT NULL DEFAULT 'default';
CREATE INDEX conversations_owner ON conversations (identity, user, updated_at);
CREATE INDEX conversations_updated ON conversations (updated_at);

-- How many messages each indexed term occurs in: recall keeps the rarest
-- terms of a long message (the most telling ones) and drops the rest.
CREATE VIRTUAL TABLE messages_vocab USING fts5vocab (messages_fts, 'row');
