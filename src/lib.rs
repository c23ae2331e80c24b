//! Questech: the server crate. `main.rs` is a thin shell over [`cli::run`]; tests use
//! [`app`] and [`server::serve`] to run the real server on a loopback port.

pub mod adapters;
pub mod auth;
pub mod cache;
pub mod cli;
pub mod config;
pub mod error;
pub mod http;
pub mod llm;
pub mod metrics;
pub mod patterns;
pub mod server;
pub mod state;
pub mod storage;
pub mod time;
pub mod uploads;
pub mod ws;

pub use config::Config;
pub use error::{Error, Result};
pub use questech_engine::ids;
pub use state::AppState;

/// The whole HTTP application over a built state.
pub fn app(state: AppState) -> axum::Router {
    http::router(state)
}
