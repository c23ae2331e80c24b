//! Cross-node fan-out over Redis pub/sub.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use questech_engine::engine::Engine;
use questech_engine::ports::Fanout;

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

    fn cancel(&self, user_id: i64, conversation_id: i64) {
        self.enqueue(format!("C|{}|{}|{}", self.node, user_id, conversation_id).into_bytes());
    }

    fn kick(&self, user_id: i64, session: Option<i64>) {
        let session = session.map(|s| s.to_string()).unwrap_or_default();
        self.enqueue(format!("K|{}|{}|{}", self.node, user_id, session).into_bytes());
    }
}

impl RedisFanout {
    pub(super) fn new(
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

    /// Receives other nodes' frames until shutdown, reconnecting as needed.
    pub(super) fn listen(
        self: Arc<Self>,
        engine: Engine,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) {
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
            b"K" => {
                // An empty rest closes every socket of the user; a session id, that session's.
                let session = std::str::from_utf8(rest)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok());
                engine.kick_local(user_id, session);
            }
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
