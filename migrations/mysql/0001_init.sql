-- Questech schema, MySQL 8 / MariaDB dialect. Keep in step with migrations/sqlite/0001_init.sql.
-- Ids are application-minted BIGINTs (src/ids.rs); times are Unix milliseconds (BIGINT);
-- integer columns are BIGINT so the driver-neutral (sqlx Any) layer decodes them all as i64.

CREATE TABLE users (
    id            BIGINT NOT NULL PRIMARY KEY,
    username      VARCHAR(64) NOT NULL,
    password_hash VARCHAR(100) NULL,
    nickname      VARCHAR(64) NOT NULL DEFAULT '',
    avatar_url    VARCHAR(1024) NOT NULL DEFAULT '',
    phone_enc     VARCHAR(255) NULL,
    phone_hash    VARCHAR(64) NULL,
    apple_sub     VARCHAR(255) NULL,
    role          VARCHAR(16) NOT NULL DEFAULT 'user',
    disabled      BIGINT NOT NULL DEFAULT 0,
    credits       BIGINT NOT NULL DEFAULT 0,
    reserved      BIGINT NOT NULL DEFAULT 0,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    UNIQUE KEY uq_users_username (username),
    UNIQUE KEY uq_users_phone (phone_hash),
    UNIQUE KEY uq_users_apple (apple_sub),
    KEY idx_users_created (created_at),
    CONSTRAINT ck_users_credits CHECK (credits >= 0),
    CONSTRAINT ck_users_reserved CHECK (reserved >= 0)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE sessions (
    id         BIGINT NOT NULL PRIMARY KEY,
    user_id    BIGINT NOT NULL,
    device     VARCHAR(255) NOT NULL DEFAULT '',
    ip         VARCHAR(64) NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT NULL,
    KEY idx_sessions_user (user_id),
    CONSTRAINT fk_sessions_user FOREIGN KEY (user_id) REFERENCES users (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE refresh_tokens (
    token_hash CHAR(64) NOT NULL PRIMARY KEY,
    session_id BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    rotated_at BIGINT NULL,
    KEY idx_refresh_session (session_id),
    CONSTRAINT fk_refresh_session FOREIGN KEY (session_id) REFERENCES sessions (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE credit_ledger (
    id            BIGINT NOT NULL PRIMARY KEY,
    user_id       BIGINT NOT NULL,
    delta         BIGINT NOT NULL,
    balance_after BIGINT NOT NULL,
    reason        VARCHAR(32) NOT NULL,
    note          VARCHAR(255) NULL,
    ref_id        VARCHAR(64) NULL,
    created_at    BIGINT NOT NULL,
    UNIQUE KEY uq_ledger_ref (user_id, reason, ref_id),
    KEY idx_ledger_user (user_id, id),
    CONSTRAINT fk_ledger_user FOREIGN KEY (user_id) REFERENCES users (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE credit_reservations (
    id         BIGINT NOT NULL PRIMARY KEY,
    user_id    BIGINT NOT NULL,
    amount     BIGINT NOT NULL,
    node_id    VARCHAR(64) NOT NULL,
    ref_id     VARCHAR(64) NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    KEY idx_reservations_user (user_id),
    KEY idx_reservations_node (node_id),
    KEY idx_reservations_expiry (expires_at),
    CONSTRAINT fk_reservations_user FOREIGN KEY (user_id) REFERENCES users (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE models (
    id                VARCHAR(64) NOT NULL PRIMARY KEY,
    provider          VARCHAR(32) NOT NULL,
    upstream_model    VARCHAR(128) NULL,
    display_name      VARCHAR(128) NOT NULL,
    context_window    BIGINT NOT NULL,
    max_output_tokens BIGINT NOT NULL,
    prompt_per_1k     DOUBLE NOT NULL DEFAULT 0,
    completion_per_1k DOUBLE NOT NULL DEFAULT 0,
    per_request       BIGINT NOT NULL DEFAULT 0,
    fallbacks         TEXT NOT NULL,
    enabled           BIGINT NOT NULL DEFAULT 1,
    sort_order        BIGINT NOT NULL DEFAULT 0,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE agents (
    id            BIGINT NOT NULL PRIMARY KEY,
    name          VARCHAR(128) NOT NULL,
    description   TEXT NOT NULL,
    avatar_url    VARCHAR(1024) NOT NULL DEFAULT '',
    model         VARCHAR(64) NOT NULL,
    temperature   DOUBLE NOT NULL DEFAULT 1,
    system_prompt MEDIUMTEXT NOT NULL,
    published     BIGINT NOT NULL DEFAULT 0,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    KEY idx_agents_published (published, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE conversations (
    id            BIGINT NOT NULL PRIMARY KEY,
    user_id       BIGINT NOT NULL,
    title         VARCHAR(255) NOT NULL DEFAULT '',
    model         VARCHAR(64) NOT NULL,
    agent_id      BIGINT NULL,
    system_prompt MEDIUMTEXT NULL,
    last_seq      BIGINT NOT NULL DEFAULT 0,
    turn_id       BIGINT NULL,
    turn_node     VARCHAR(64) NULL,
    turn_expires  BIGINT NULL,
    deleted_at    BIGINT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    KEY idx_conversations_user (user_id, deleted_at, updated_at),
    CONSTRAINT fk_conversations_user FOREIGN KEY (user_id) REFERENCES users (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE messages (
    id                BIGINT NOT NULL PRIMARY KEY,
    conversation_id   BIGINT NOT NULL,
    seq               BIGINT NOT NULL,
    role              VARCHAR(16) NOT NULL,
    content           MEDIUMTEXT NOT NULL,
    status            VARCHAR(16) NOT NULL,
    model             VARCHAR(64) NOT NULL DEFAULT '',
    prompt_tokens     BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    credits_charged   BIGINT NOT NULL DEFAULT 0,
    client_msg_id     VARCHAR(128) NULL,
    reply_to          BIGINT NULL,
    created_at        BIGINT NOT NULL,
    UNIQUE KEY uq_messages_seq (conversation_id, seq),
    UNIQUE KEY uq_messages_client (conversation_id, client_msg_id),
    CONSTRAINT fk_messages_conversation FOREIGN KEY (conversation_id) REFERENCES conversations (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE articles (
    id           BIGINT NOT NULL PRIMARY KEY,
    title        VARCHAR(255) NOT NULL,
    summary      TEXT NOT NULL,
    body         MEDIUMTEXT NOT NULL,
    category     VARCHAR(64) NOT NULL DEFAULT '',
    cover_url    VARCHAR(1024) NOT NULL DEFAULT '',
    published    BIGINT NOT NULL DEFAULT 0,
    published_at BIGINT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    KEY idx_articles_published (published, published_at),
    KEY idx_articles_category (category, published, published_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE app_config (
    id         BIGINT NOT NULL PRIMARY KEY,
    value      MEDIUMTEXT NOT NULL,
    updated_at BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE api_keys (
    id           BIGINT NOT NULL PRIMARY KEY,
    user_id      BIGINT NOT NULL,
    name         VARCHAR(128) NOT NULL,
    key_hash     CHAR(64) NOT NULL,
    prefix       VARCHAR(16) NOT NULL,
    created_at   BIGINT NOT NULL,
    last_used_at BIGINT NULL,
    revoked_at   BIGINT NULL,
    UNIQUE KEY uq_api_keys_hash (key_hash),
    KEY idx_api_keys_user (user_id, id),
    CONSTRAINT fk_api_keys_user FOREIGN KEY (user_id) REFERENCES users (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE usage_logs (
    id                BIGINT NOT NULL PRIMARY KEY,
    user_id           BIGINT NOT NULL,
    kind              VARCHAR(16) NOT NULL,
    model             VARCHAR(64) NOT NULL,
    api_key_id        BIGINT NULL,
    prompt_tokens     BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    credits           BIGINT NOT NULL DEFAULT 0,
    latency_ms        BIGINT NOT NULL DEFAULT 0,
    status            VARCHAR(16) NOT NULL,
    created_at        BIGINT NOT NULL,
    KEY idx_usage_user (user_id, id),
    CONSTRAINT fk_usage_user FOREIGN KEY (user_id) REFERENCES users (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
