-- lorastream schema, version 4: the chat server (issue 11). A conversation
-- belongs to a user (the request's `user` field), whose earlier messages are
-- recalled into new prompts and forgotten on request.
ALTER TABLE conversations ADD COLUMN user TEXT;
CREATE INDEX conversations_user ON conversations (user, updated_at);
