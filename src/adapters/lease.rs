//! The node's heartbeat: renews the leases on what this node holds, and takes over what nodes
//! that stopped renewing held (see `storage::lease` for the database side).
//!
//! Timings, with `L = NODE_LEASE_SECS`: a beat every `L/4` renews this node's turn locks and
//! reservations (two statements) and its in-flight slots on Redis (one pipeline). A node that
//! stops is taken over by the first survivor's beat after its last lease ran out: within
//! `L + L/4`. A node only takes over once it has itself renewed without a gap for a whole lease,
//! so a database outage, which stops every node's renewals at once, does not make the first node
//! back take over the others' live turns before they have renewed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::CacheLimits;
use crate::storage::lease::{self, LostTurn};
use crate::storage::Db;
use questech_engine::Engine;

/// How often a node looks for turns of its own whose end could not be stored (cheap when there
/// are none: one mutex).
const ABANDONED_EVERY: Duration = Duration::from_millis(250);

pub struct Heartbeat {
    pub db: Db,
    pub limits: Arc<CacheLimits>,
    pub engine: Engine,
    pub node_id: String,
    pub lease: Duration,
}

impl Heartbeat {
    /// Takes over what an earlier run of this node left (it crashed or was killed), and every
    /// lease that ran out; tells the devices of those turns.
    pub async fn take_over_own(&self) -> crate::error::Result<usize> {
        let lost = lease::take_over(&self.db, Some(&self.node_id)).await?;
        Ok(self.tell(lost))
    }

    fn tell(&self, lost: Vec<LostTurn>) -> usize {
        let n = lost.len();
        for l in lost {
            l.log("took over a turn whose node stopped renewing its lease");
            self.engine
                .turn_lost(l.user_id, l.conversation_id, l.client_msg_id);
        }
        n
    }

    /// Beats until `stop` (not a tracked task: it outlives the drain that waits for those).
    pub fn spawn(self, stop: CancellationToken) {
        tokio::spawn(async move {
            let every = (self.lease / 4).max(Duration::from_millis(250));
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut renewing_since: Option<Instant> = None;
            let mut last_ok: Option<Instant> = None;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {}
                    _ = tokio::time::sleep(ABANDONED_EVERY) => {
                        self.record_abandoned().await;
                        continue;
                    }
                }
                let ok = self.beat().await;
                let now = Instant::now();
                if ok {
                    // A gap (this process was paused, or a beat failed) restarts the count.
                    if last_ok.is_none_or(|t| now - t > self.lease / 2) {
                        renewing_since = Some(now);
                    }
                    // Longer than a lease without renewing: what this node held is forfeit
                    // (taken over, or about to be). Its turns stop here; their ends are fenced.
                    // Those begun within the last lease hold a lease of their own from their start.
                    if last_ok.is_some_and(|t| now - t > self.lease) {
                        tracing::warn!("this node did not renew its leases for longer than a lease; ending its turns older than a lease");
                        if let Some(before) = now.checked_sub(self.lease) {
                            self.engine.abort_turns_started_before(before);
                        }
                    }
                    last_ok = Some(now);
                } else {
                    renewing_since = None;
                }
                if renewing_since.is_some_and(|t| now - t >= self.lease) {
                    match lease::take_over(&self.db, None).await {
                        Ok(lost) => {
                            self.tell(lost);
                        }
                        Err(e) => tracing::warn!(error = %e, "could not take over expired leases"),
                    }
                }
            }
        });
    }

    /// Stores this node's abandoned turns (their end could not be stored) as failed, once the
    /// database answers; gives them back to retry otherwise. Their devices were already told
    /// `unavailable` by the turn itself.
    async fn record_abandoned(&self) {
        let abandoned = self.engine.take_abandoned();
        if abandoned.is_empty() {
            return;
        }
        match lease::abandon(&self.db, &self.node_id, &abandoned).await {
            Ok(recorded) => {
                for l in recorded {
                    l.log("stored a turn whose end could not be stored as failed");
                    self.engine.reload_conversation(l.conversation_id);
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "could not record abandoned turns yet; will retry");
                for (c, t) in abandoned {
                    self.engine.abandon_turn(c, t);
                }
            }
        }
    }

    /// One renewal of everything this node holds; `false` if the database refused it.
    async fn beat(&self) -> bool {
        let lease_ms = self.lease.as_millis() as i64;
        if let Err(e) = self.limits.renew().await {
            tracing::warn!(error = %e, "could not renew in-flight slot leases");
        }
        self.record_abandoned().await;
        match lease::renew(&self.db, &self.node_id, lease_ms).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "could not renew this node's leases");
                false
            }
        }
    }
}
