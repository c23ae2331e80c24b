//! The server's side of the engine's ports: SQL storage, cache-backed shared limits, and
//! cross-node fan-out over Redis pub/sub. Also builds and starts the engine.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cache::Cache;
use crate::config::Config;
use crate::error::Error;
use crate::storage::{self, Db};
use questech_actors::engine::{Engine, EngineConfig};
use questech_actors::pool::{LlmPool, PoolConfig};
use questech_actors::ports::{
    BeginOutcome, BeginTurn, ConversationSnapshot, Fanout, FinishOutcome, FinishTurn, Limits,
    LocalOnly, ModelInfo, PortResult, Store,
};
use questech_actors::EngineError;

impl From<Error> for EngineError {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidRequest(m) => EngineError::InvalidRequest(m),
            Error::NotFound(m) => EngineError::NotFound(m),
            Error::ModelNotFound(m) => EngineError::ModelNotFound(m),
            Error::InsufficientCredits => EngineError::InsufficientCredits,
            Error::ConversationBusy => EngineError::ConversationBusy,
            Error::RateLimited { retry_after } => EngineError::RateLimited { retry_after },
            Error::Overloaded { retry_after } => EngineError::Overloaded { retry_after },
            Error::UpstreamTimeout => EngineError::UpstreamTimeout,
            Error::UpstreamError(m) => EngineError::UpstreamError(m),
            other => {
                tracing::error!(error = ?other, "storage error in the engine");
                EngineError::Internal(other.to_string())
            }
        }
    }
}

impl From<EngineError> for Error {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::InvalidRequest(m) => Error::InvalidRequest(m),
            EngineError::InsufficientCredits => Error::InsufficientCredits,
            EngineError::NotFound(m) => Error::NotFound(m),
            EngineError::ModelNotFound(m) => Error::ModelNotFound(m),
            EngineError::ConversationBusy => Error::ConversationBusy,
            EngineError::RateLimited { retry_after } => Error::RateLimited { retry_after },
            EngineError::Overloaded { retry_after } => Error::Overloaded { retry_after },
            // The provider's status and message stay in the pool's logs; clients get the code and
            // a generic message (the REST error body displays the inner text).
            e @ EngineError::UpstreamError(_) => Error::UpstreamError(e.public_message()),
            EngineError::UpstreamTimeout => Error::UpstreamTimeout,
            EngineError::Internal(m) => Error::Internal(anyhow::anyhow!(m)),
        }
    }
}

/// Models, cached in the shared cache under one key (invalidated by admin changes).
#[derive(Clone)]
pub struct ModelCache {
    db: Db,
    cache: Cache,
}

const MODELS_KEY: &str = "models:all";

impl ModelCache {
    pub fn new(db: Db, cache: Cache) -> Self {
        ModelCache { db, cache }
    }

    pub async fn all(&self) -> Result<Vec<storage::models::ModelRow>, Error> {
        if let Some(json) = self.cache.get(MODELS_KEY).await? {
            if let Ok(rows) = serde_json::from_str::<Vec<storage::models::ModelRow>>(&json) {
                return Ok(rows);
            }
        }
        let rows = storage::models::list(&self.db).await?;
        if let Ok(json) = serde_json::to_string(&rows) {
            self.cache
                .set(MODELS_KEY, &json, Some(Duration::from_secs(300)))
                .await?;
        }
        Ok(rows)
    }

    pub async fn get(&self, id: &str) -> Result<Option<storage::models::ModelRow>, Error> {
        Ok(self.all().await?.into_iter().find(|m| m.id == id))
    }

    pub async fn invalidate(&self) -> Result<(), Error> {
        self.cache.del(MODELS_KEY).await?;
        Ok(())
    }
}

/// The engine's storage port over SQL.
pub struct SqlStore {
    pub db: Db,
    pub models: ModelCache,
}

impl Store for SqlStore {
    fn model(&self, id: &str) -> BoxFuture<'_, PortResult<Option<ModelInfo>>> {
        let id = id.to_owned();
        async move { Ok(self.models.get(&id).await?.map(|m| m.info())) }.boxed()
    }

    fn load_conversation(
        &self,
        id: i64,
    ) -> BoxFuture<'_, PortResult<Option<ConversationSnapshot>>> {
        async move { Ok(storage::chat::load_snapshot(&self.db, id, 400).await?) }.boxed()
    }

    fn begin_turn(&self, t: BeginTurn) -> BoxFuture<'_, PortResult<BeginOutcome>> {
        async move { Ok(storage::chat::begin_turn(&self.db, t).await?) }.boxed()
    }

    fn finish_turn(&self, t: FinishTurn) -> BoxFuture<'_, PortResult<FinishOutcome>> {
        async move {
            // The end of a turn must not be lost to a passing database error: retry briefly.
            let mut last = None;
            for attempt in 0..3u32 {
                let t2 = FinishTurn {
                    conversation_id: t.conversation_id,
                    user_id: t.user_id,
                    turn_id: t.turn_id,
                    reservation_id: t.reservation_id,
                    reserved: t.reserved,
                    assistant: t.assistant.clone(),
                    charge: t.charge,
                    kind: t.kind,
                    latency_ms: t.latency_ms,
                };
                match storage::chat::finish_turn(&self.db, t2).await {
                    Ok(o) => return Ok(o),
                    Err(e) => {
                        tracing::warn!(attempt, error = ?e, "finish_turn failed; retrying");
                        last = Some(e);
                        tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                    }
                }
            }
            Err(last
                .map(EngineError::from)
                .unwrap_or_else(|| EngineError::Internal("finish_turn".into())))
        }
        .boxed()
    }

    fn abort_turn(
        &self,
        conversation_id: i64,
        turn_id: Option<i64>,
    ) -> BoxFuture<'_, PortResult<bool>> {
        async move { Ok(storage::chat::abort_turn(&self.db, conversation_id, turn_id).await?) }
            .boxed()
    }

    fn balance(&self, user_id: i64) -> BoxFuture<'_, PortResult<i64>> {
        async move {
            Ok(storage::users::by_id(&self.db, user_id)
                .await?
                .map(|u| u.credits)
                .unwrap_or(0))
        }
        .boxed()
    }
}

/// Per-user limits in the shared cache: a per-minute counter and an in-flight counter.
pub struct CacheLimits {
    pub cache: Cache,
    pub rpm: u32,
    pub max_inflight: u32,
}

impl CacheLimits {
    pub async fn check(&self, user_id: i64, unlimited: bool) -> Result<(), Error> {
        if unlimited {
            return Ok(());
        }
        if self.rpm > 0 {
            let now = crate::time::now_ms() / 1000;
            let minute = now / 60;
            let n = self
                .cache
                .incr(&format!("rpm:{user_id}:{minute}"), Duration::from_secs(61))
                .await?;
            if n > i64::from(self.rpm) {
                return Err(Error::RateLimited {
                    retry_after: (60 - (now % 60)).max(1) as u64,
                });
            }
        }
        if self.max_inflight > 0 {
            let key = format!("inflight:{user_id}");
            // The window only guards against a counter leaked by a dead node.
            let n = self.cache.incr(&key, Duration::from_secs(900)).await?;
            if n > i64::from(self.max_inflight) {
                self.cache.decr(&key).await?;
                return Err(Error::RateLimited { retry_after: 1 });
            }
        }
        Ok(())
    }

    pub async fn done(&self, user_id: i64, unlimited: bool) {
        if unlimited || self.max_inflight == 0 {
            return;
        }
        if let Err(e) = self.cache.decr(&format!("inflight:{user_id}")).await {
            tracing::warn!(error = %e, "could not release an in-flight slot");
        }
    }
}

impl Limits for CacheLimits {
    fn acquire(&self, user_id: i64, unlimited: bool) -> BoxFuture<'_, PortResult<()>> {
        async move { Ok(self.check(user_id, unlimited).await?) }.boxed()
    }

    fn release(&self, user_id: i64, unlimited: bool) -> BoxFuture<'_, ()> {
        self.done(user_id, unlimited).boxed()
    }
}

/// Cross-node fan-out: every frame for a user is published on one Redis channel; each node
/// delivers it to its own connections of that user (skipping frames it published itself).
///
/// Publishes go through one ordered queue drained by a single task that pipelines whatever has
/// piled up: deltas keep their order across nodes, and a burst costs one round trip. The queue is
/// bounded; if Redis is unreachable long enough to fill it, further frames for other nodes are
/// dropped (their clients resync with `conversation.sync`) rather than growing memory.
pub struct RedisFanout {
    client: redis::Client,
    channel: String,
    node: String,
    queue: tokio::sync::mpsc::Sender<Vec<u8>>,
}

const FANOUT_QUEUE: usize = 65_536;
const FANOUT_BATCH: usize = 256;

impl Fanout for RedisFanout {
    fn publish(&self, user_id: i64, frame: Bytes) {
        let mut payload = Vec::with_capacity(frame.len() + 48);
        payload.extend_from_slice(format!("E|{}|{}|", self.node, user_id).as_bytes());
        payload.extend_from_slice(&frame);
        self.enqueue(payload);
    }
}

impl RedisFanout {
    fn new(
        client: redis::Client,
        channel: String,
        node: String,
        conn: redis::aio::ConnectionManager,
    ) -> Self {
        let (queue, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(FANOUT_QUEUE);
        let ch = channel.clone();
        // Not on the tracker: shutdown must not wait for this queue to be dropped. Frames queued
        // before exit are pipelined out in the meantime.
        tokio::spawn(async move {
            let mut conn = conn;
            let mut batch = Vec::with_capacity(FANOUT_BATCH);
            // Ends when the sender (the fan-out) is dropped; drains what is queued first.
            while rx.recv_many(&mut batch, FANOUT_BATCH).await > 0 {
                let mut pipe = redis::pipe();
                for payload in batch.drain(..) {
                    pipe.cmd("PUBLISH").arg(&ch).arg(payload).ignore();
                }
                let r: Result<(), _> = pipe.query_async(&mut conn).await;
                if let Err(e) = r {
                    tracing::warn!(error = %e, "fan-out publish failed");
                }
            }
        });
        RedisFanout {
            client,
            channel,
            node,
            queue,
        }
    }

    fn enqueue(&self, payload: Vec<u8>) {
        if self.queue.try_send(payload).is_err() {
            tracing::warn!("fan-out queue full or closed; frame for other nodes dropped");
        }
    }

    /// Tells every node to cancel the user's turn in a conversation (the turn runs on whichever
    /// node took the conversation's turn lock).
    pub fn cancel(&self, user_id: i64, conversation_id: i64) {
        self.enqueue(format!("C|{}|{}|{}", self.node, user_id, conversation_id).into_bytes());
    }

    /// Tells every node to close the user's sockets (account disabled).
    pub fn kick(&self, user_id: i64) {
        self.enqueue(format!("K|{}|{}|", self.node, user_id).into_bytes());
    }

    /// Receives other nodes' frames until shutdown, reconnecting as needed.
    fn listen(self: Arc<Self>, engine: Engine, shutdown: CancellationToken, tracker: &TaskTracker) {
        tracker.spawn(async move {
            loop {
                let attempt = async {
                    let mut pubsub = self.client.get_async_pubsub().await?;
                    pubsub.subscribe(&self.channel).await?;
                    let mut stream = pubsub.on_message();
                    while let Some(msg) = stream.next().await {
                        let payload: Vec<u8> = msg.get_payload_bytes().to_vec();
                        self.dispatch(&engine, &payload);
                    }
                    Ok::<(), redis::RedisError>(())
                };
                tokio::select! {
                    r = attempt => {
                        if let Err(e) = r {
                            tracing::warn!(error = %e, "fan-out subscription lost; reconnecting");
                        }
                    }
                    _ = shutdown.cancelled() => return,
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        });
    }

    fn dispatch(&self, engine: &Engine, payload: &[u8]) {
        let mut parts = payload.splitn(4, |b| *b == b'|');
        let (Some(kind), Some(node), Some(user), Some(rest)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        if node == self.node.as_bytes() {
            return;
        }
        let Some(user_id) = std::str::from_utf8(user)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
        else {
            return;
        };
        match kind {
            b"E" => engine.deliver_local(user_id, Bytes::copy_from_slice(rest)),
            b"K" => engine.kick_local(user_id),
            b"C" => {
                // A device on another node cancelled a turn that may be running here.
                if let Some(conv) = std::str::from_utf8(rest)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                {
                    engine.cancel_local(user_id, conv);
                }
            }
            _ => {}
        }
    }
}

/// Everything the engine runs on, built from the configuration.
pub struct Built {
    pub engine: Engine,
    pub fanout: Option<Arc<RedisFanout>>,
    pub limits: Arc<CacheLimits>,
}

pub fn pool_config(cfg: &Config) -> PoolConfig {
    PoolConfig {
        max_concurrency: cfg.llm_max_concurrency,
        queue_capacity: cfg.llm_queue_capacity,
        first_token_timeout: cfg.llm_first_token_timeout,
        total_timeout: cfg.llm_total_timeout,
        max_retries: cfg.llm_max_retries,
        retryable_statuses: cfg.llm_retryable_statuses.clone(),
        breaker_failures: cfg.llm_breaker_failures,
        breaker_cooldown: cfg.llm_breaker_cooldown,
        backoff_base: Duration::from_millis(cfg.llm_backoff_base_ms),
    }
}

pub async fn start(
    cfg: &Config,
    db: &Db,
    cache: &Cache,
    models: ModelCache,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) -> anyhow::Result<Built> {
    let providers = crate::llm::build_providers(cfg, Duration::from_millis(cfg.echo_delay_ms));
    let pool = LlmPool::start(providers, pool_config(cfg), tracker.clone()).await?;
    let limits = Arc::new(CacheLimits {
        cache: cache.clone(),
        rpm: cfg.user_rpm,
        max_inflight: cfg.user_max_inflight,
    });
    let fanout = match cache {
        Cache::Redis(r) => Some(Arc::new(RedisFanout::new(
            r.client().clone(),
            format!("{}events", r.prefix()),
            cfg.node_id.clone(),
            redis::aio::ConnectionManager::new_with_config(
                r.client().clone(),
                crate::cache::connection_manager_config(),
            )
            .await?,
        ))),
        Cache::Memory(_) => None,
    };
    let fanout_port: Arc<dyn Fanout> = match &fanout {
        Some(f) => f.clone(),
        None => Arc::new(LocalOnly),
    };
    let store = Arc::new(SqlStore {
        db: db.clone(),
        models,
    });
    let engine_cfg = EngineConfig {
        node_id: cfg.node_id.clone(),
        actor_idle: cfg.actor_idle,
        ..EngineConfig::default()
    };
    let engine = Engine::start(
        engine_cfg,
        store,
        limits.clone(),
        fanout_port,
        pool,
        tracker.clone(),
        shutdown.clone(),
    )
    .await?;
    if let Some(f) = &fanout {
        f.clone().listen(engine.clone(), shutdown, &tracker);
    }
    Ok(Built {
        engine,
        fanout,
        limits,
    })
}
