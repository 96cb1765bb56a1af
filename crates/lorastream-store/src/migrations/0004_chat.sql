-- lorastream schema, version 4: the chat server (issue 11). A conversation
-- belongs to a user (the request's `user` field), whose earlier messages are
-- recalled into new prompts and forgotten on request.
ALTER TABLE conversations ADD COLUMN user TEXT;
CREATE INDEX conversations_user ON conversations (user, updated_at);

-- Ratings of assistant messages (POST /v1/feedback); a helpful answer in a
-- conversation whose user opted in becomes a raw item of the `conversations`
-- source when [server] learn_from_conversations is on.
CREATE TABLE message_feedback (
    message_id  INTEGER PRIMARY KEY REFERENCES messages(id) ON DELETE CASCADE,
    rating      INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
);
