//! End-to-end tests: the real server on a loopback port, over SQLite and over MySQL + Redis.
//!
//! One binary (one link) for every area. MySQL/Redis tests read `TEST_MYSQL_URL` and
//! `TEST_REDIS_URL`; without them they print `SKIPPED: …` (and fail under `CI=true`).
//!
//! ```sh
//! TEST_MYSQL_URL=mysql://root@127.0.0.1:3306/test TEST_REDIS_URL=redis://127.0.0.1:6379 \
//!     cargo test --test e2e
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod common;
#[macro_use]
mod wsclient;

mod accounts;
mod admin;
mod api_keys;
mod apple;
mod bench_smoke;
mod billing;
mod browser;
mod chat_faults;
mod chat_images;
mod chat_rest;
mod chat_ws;
mod cli;
mod cluster;
mod content;
mod credits;
mod errors;
mod group_commit;
mod health;
mod leases;
mod openai_python;
mod openai_rust;
mod ops;
mod schema_fuzz;
mod shutdown;
mod sms;
mod supervision;
mod tokens;
mod toolkit;
mod upload;
mod upload_s3;
mod v1;
mod v1_embeddings;
mod v1_responses;
mod v1_tools;
mod ws_input;
