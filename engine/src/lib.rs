//! Questech's actor engine.
//!
//! - [`user_session`]: one actor per online user (connections, limits, routing).
//! - [`conversation`]: one actor per active conversation (context, the turn in flight, order).
//! - [`meter`]: the one metered call (limits, plan, reserve, pool, bill, settle).
//! - [`pool`]: the LLM pool (per-provider concurrency, queue, retries, failover, breakers).
//! - [`engine`]: the handle the front door uses, and the supervisor that restarts failed actors.
//! - [`registry`], [`metrics`]: who runs where, and what operators see.
//! - [`ports`], [`llm`]: what the engine needs from storage, the cache and model providers.

pub mod conversation;
pub mod engine;
pub mod error;
pub mod events;
pub mod ids;
pub mod llm;
pub mod meter;
pub mod metrics;
mod observe;
pub mod pool;
pub mod ports;
pub mod registry;
mod supervisor;
pub mod tokens;
pub mod user_session;

pub use engine::{Engine, EngineConfig};
pub use error::EngineError;
