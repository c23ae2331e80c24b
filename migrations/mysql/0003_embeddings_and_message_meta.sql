-- Models that create embeddings (SPEC §9 `POST /v1/embeddings`).
ALTER TABLE models ADD COLUMN cap_embeddings BIGINT NOT NULL DEFAULT 0;
-- The built-in echo model embeds too (development).
UPDATE models SET cap_embeddings = 1 WHERE id = 'echo' AND provider = 'echo';
-- What a message holds beyond its text, as JSON: image `attachments` (SPEC §7) and, for
-- turns of the Responses API, the message's OpenAI wire form (tool calls, tool results).
ALTER TABLE messages ADD COLUMN meta LONGTEXT NULL;
-- Who uploaded which file: a message may attach only its sender's own uploads (SPEC §7).
CREATE TABLE uploads (
    name         VARCHAR(64) PRIMARY KEY,
    user_id      BIGINT NOT NULL,
    content_type VARCHAR(64) NOT NULL,
    size         BIGINT NOT NULL,
    created_at   BIGINT NOT NULL
);
