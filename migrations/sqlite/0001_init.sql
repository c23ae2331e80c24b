-- Questech schema, SQLite dialect. Ids are 63-bit integers minted by the application
-- (src/ids.rs); times are Unix milliseconds; flags are 0/1 integers. Keep in step with
-- migrations/mysql/0001_init.sql: same tables, columns, constraints and indexes.

CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    password_hash TEXT,
    nickname      TEXT NOT NULL DEFAULT '',
    avatar_url    TEXT NOT NULL DEFAULT '',
    phone_enc     TEXT,
    phone_hash    TEXT UNIQUE,
    apple_sub     TEXT UNIQUE,
    role          TEXT NOT NULL DEFAULT 'user',
    disabled      INTEGER NOT NULL DEFAULT 0,
    credits       INTEGER NOT NULL DEFAULT 0 CHECK (credits >= 0),
    reserved      INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);
CREATE INDEX idx_users_created ON users (created_at);

CREATE TABLE sessions (
    id           INTEGER PRIMARY KEY,
    user_id      INTEGER NOT NULL REFERENCES users (id),
    device       TEXT NOT NULL DEFAULT '',
    ip           TEXT NOT NULL DEFAULT '',
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    revoked_at   INTEGER
);
CREATE INDEX idx_sessions_user ON sessions (user_id);

CREATE TABLE refresh_tokens (
    token_hash  TEXT PRIMARY KEY,
    session_id  INTEGER NOT NULL REFERENCES sessions (id),
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    rotated_at  INTEGER
);
CREATE INDEX idx_refresh_session ON refresh_tokens (session_id);

CREATE TABLE credit_ledger (
    id            INTEGER PRIMARY KEY,
    user_id       INTEGER NOT NULL REFERENCES users (id),
    delta         INTEGER NOT NULL,
    balance_after INTEGER NOT NULL,
    reason        TEXT NOT NULL,
    note          TEXT,
    ref_id        TEXT,
    created_at    INTEGER NOT NULL,
    UNIQUE (user_id, reason, ref_id)
);
CREATE INDEX idx_ledger_user ON credit_ledger (user_id, id);

CREATE TABLE credit_reservations (
    id         INTEGER PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES users (id),
    amount     INTEGER NOT NULL,
    node_id    TEXT NOT NULL,
    ref_id     TEXT,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX idx_reservations_user ON credit_reservations (user_id);
CREATE INDEX idx_reservations_node ON credit_reservations (node_id);
CREATE INDEX idx_reservations_expiry ON credit_reservations (expires_at);

CREATE TABLE models (
    id                TEXT PRIMARY KEY,
    provider          TEXT NOT NULL,
    upstream_model    TEXT,
    display_name      TEXT NOT NULL,
    context_window    INTEGER NOT NULL,
    max_output_tokens INTEGER NOT NULL,
    prompt_per_1k     REAL NOT NULL DEFAULT 0,
    completion_per_1k REAL NOT NULL DEFAULT 0,
    per_request       INTEGER NOT NULL DEFAULT 0,
    fallbacks         TEXT NOT NULL DEFAULT '[]',
    enabled           INTEGER NOT NULL DEFAULT 1,
    sort_order        INTEGER NOT NULL DEFAULT 0,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL
);

CREATE TABLE agents (
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL,
    description   TEXT NOT NULL DEFAULT '',
    avatar_url    TEXT NOT NULL DEFAULT '',
    model         TEXT NOT NULL,
    temperature   REAL NOT NULL DEFAULT 1,
    system_prompt TEXT NOT NULL DEFAULT '',
    published     INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);
CREATE INDEX idx_agents_published ON agents (published, id);

CREATE TABLE conversations (
    id            INTEGER PRIMARY KEY,
    user_id       INTEGER NOT NULL REFERENCES users (id),
    title         TEXT NOT NULL DEFAULT '',
    model         TEXT NOT NULL,
    agent_id      INTEGER,
    system_prompt TEXT,
    last_seq      INTEGER NOT NULL DEFAULT 0,
    turn_id       INTEGER,
    turn_node     TEXT,
    turn_expires  INTEGER,
    deleted_at    INTEGER,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);
CREATE INDEX idx_conversations_user ON conversations (user_id, deleted_at, updated_at);

CREATE TABLE messages (
    id                INTEGER PRIMARY KEY,
    conversation_id   INTEGER NOT NULL REFERENCES conversations (id),
    seq               INTEGER NOT NULL,
    role              TEXT NOT NULL,
    content           TEXT NOT NULL,
    status            TEXT NOT NULL,
    model             TEXT NOT NULL DEFAULT '',
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    credits_charged   INTEGER NOT NULL DEFAULT 0,
    client_msg_id     TEXT,
    reply_to          INTEGER,
    created_at        INTEGER NOT NULL,
    UNIQUE (conversation_id, seq),
    UNIQUE (conversation_id, client_msg_id)
);

CREATE TABLE articles (
    id           INTEGER PRIMARY KEY,
    title        TEXT NOT NULL,
    summary      TEXT NOT NULL DEFAULT '',
    body         TEXT NOT NULL DEFAULT '',
    category     TEXT NOT NULL DEFAULT '',
    cover_url    TEXT NOT NULL DEFAULT '',
    published    INTEGER NOT NULL DEFAULT 0,
    published_at INTEGER,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);
CREATE INDEX idx_articles_published ON articles (published, published_at);
CREATE INDEX idx_articles_category ON articles (category, published, published_at);

CREATE TABLE app_config (
    id         INTEGER PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE api_keys (
    id           INTEGER PRIMARY KEY,
    user_id      INTEGER NOT NULL REFERENCES users (id),
    name         TEXT NOT NULL,
    key_hash     TEXT NOT NULL UNIQUE,
    prefix       TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER,
    revoked_at   INTEGER
);
CREATE INDEX idx_api_keys_user ON api_keys (user_id, id);

CREATE TABLE usage_logs (
    id                INTEGER PRIMARY KEY,
    user_id           INTEGER NOT NULL REFERENCES users (id),
    kind              TEXT NOT NULL,
    model             TEXT NOT NULL,
    api_key_id        INTEGER,
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    credits           INTEGER NOT NULL DEFAULT 0,
    latency_ms        INTEGER NOT NULL DEFAULT 0,
    status            TEXT NOT NULL,
    created_at        INTEGER NOT NULL
);
CREATE INDEX idx_usage_user ON usage_logs (user_id, id);
