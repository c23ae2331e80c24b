-- Models that create embeddings (SPEC §9 `POST /v1/embeddings`).
ALTER TABLE models ADD COLUMN cap_embeddings INTEGER NOT NULL DEFAULT 0;
-- The built-in echo model embeds too (development).
UPDATE models SET cap_embeddings = 1 WHERE id = 'echo' AND provider = 'echo';
-- What a message holds beyond its text, as JSON: image `attachments` (SPEC §7) and, for
-- turns of the Responses API, the message's OpenAI wire form (tool calls, tool results).
ALTER TABLE messages ADD COLUMN meta TEXT;
-- Who uploaded which file: a message may attach only its sender's own uploads (SPEC §7).
CREATE TABLE uploads (
    name         TEXT PRIMARY KEY,
    user_id      INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    size         INTEGER NOT NULL,
    created_at   INTEGER NOT NULL
);
