//! The registry: which actor serves which user and conversation on this node, with the depth
//! counter that bounds each actor's mailbox (ractor mailboxes are unbounded; we count what is
//! sent and not yet handled, and refuse above a limit).

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use ractor::ActorRef;

use crate::conversation::ConvMsg;
use crate::user_session::UserMsg;

/// A live actor and its mailbox depth.
pub struct Entry<M> {
    pub actor: ActorRef<M>,
    pub depth: Arc<AtomicUsize>,
    /// For conversations: the owning user once loaded (0 before), so the supervisor can tell
    /// the right user about a lost turn.
    pub owner: Arc<AtomicI64>,
    /// For conversations: the id of the turn in flight (0: none), so the supervisor can undo
    /// exactly the turn a crash lost — and nothing when none was in flight.
    pub turn: Arc<AtomicI64>,
}

impl<M> Clone for Entry<M> {
    fn clone(&self) -> Self {
        Entry {
            actor: self.actor.clone(),
            depth: self.depth.clone(),
            owner: self.owner.clone(),
            turn: self.turn.clone(),
        }
    }
}

impl<M: ractor::Message> Entry<M> {
    /// Sends a message, counting it in the mailbox depth. `Err` gives the message back when the
    /// actor is gone.
    pub fn send(&self, msg: M) -> Result<(), M> {
        self.depth.fetch_add(1, Ordering::Relaxed);
        match self.actor.cast(msg) {
            Ok(()) => Ok(()),
            Err(ractor::MessagingErr::SendErr(m)) => {
                self.depth.fetch_sub(1, Ordering::Relaxed);
                Err(m)
            }
            Err(_) => {
                self.depth.fetch_sub(1, Ordering::Relaxed);
                tracing::warn!("message lost: actor channel closed");
                Ok(())
            }
        }
    }

    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
pub struct Registry {
    pub users: DashMap<i64, Entry<UserMsg>>,
    pub conversations: DashMap<i64, Entry<ConvMsg>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    UserSession,
    Conversation,
}

impl Registry {
    pub fn user(&self, id: i64) -> Option<Entry<UserMsg>> {
        self.users.get(&id).map(|e| e.clone())
    }

    pub fn conversation(&self, id: i64) -> Option<Entry<ConvMsg>> {
        self.conversations.get(&id).map(|e| e.clone())
    }

    /// Mailbox depths: (max, the largest few as (kind, id, depth)).
    pub fn depths(&self, top: usize) -> (usize, Vec<(Kind, i64, usize)>) {
        let mut all: Vec<(Kind, i64, usize)> = self
            .users
            .iter()
            .map(|e| (Kind::UserSession, *e.key(), e.depth()))
            .chain(
                self.conversations
                    .iter()
                    .map(|e| (Kind::Conversation, *e.key(), e.depth())),
            )
            .collect();
        all.sort_by_key(|x| std::cmp::Reverse(x.2));
        let max = all.first().map(|x| x.2).unwrap_or(0);
        all.truncate(top);
        (max, all)
    }
}
