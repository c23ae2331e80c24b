//! A chat turn: admitted and stored by `begin_turn`, run through the pool, billed by the one
//! rule, ended by `finish_turn`, told to every device.

use std::sync::atomic::Ordering;
use std::time::Instant;

use ractor::ActorRef;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use std::sync::Arc;

use super::{Ack, ConvMsg, ConvState, SendTurn, Turn, TurnExtras, HISTORY_KEEP};
use crate::engine::Engine;
use crate::error::EngineError;
use crate::events::{Credits, ErrorBody, Frame, MessageExtra, MsgUsage, StoredMessage};
use crate::meter::{bill, retry_once, Bill, Collector, Content, End, TurnStatus};
use crate::pool::JobEvent;
use crate::ports::{BeginOutcome, FinishTurn};

type AckTx = oneshot::Sender<Result<Ack, EngineError>>;

/// The error of a turn the store refused to begin.
fn refusal(outcome: BeginOutcome) -> EngineError {
    match outcome {
        BeginOutcome::Busy => EngineError::ConversationBusy,
        BeginOutcome::InsufficientCredits => EngineError::InsufficientCredits,
        BeginOutcome::NotFound => EngineError::NotFound("conversation not found".into()),
        BeginOutcome::Started { .. } | BeginOutcome::Duplicate { .. } => {
            EngineError::Internal("a begun turn taken for a refusal".into())
        }
    }
}

impl ConvState {
    pub(super) async fn on_send(&mut self, myself: &ActorRef<ConvMsg>, send: SendTurn) {
        let user_id = send.user_id;
        let unlimited = send.unlimited;
        if let Err((e, ack)) = self.start_turn(myself, send).await {
            // The turn never started: give back its in-flight slot *before* answering, so
            // a client that retries at once finds it free.
            self.core.limits.release(user_id, unlimited).await;
            let _ = ack.send(Err(e));
        }
    }

    /// Admits and starts a turn. On rejection, gives the ack channel back with the error.
    async fn start_turn(
        &mut self,
        myself: &ActorRef<ConvMsg>,
        send: SendTurn,
    ) -> Result<(), (EngineError, AckTx)> {
        let SendTurn {
            user_id,
            unlimited,
            content,
            client_msg_id,
            model,
            extras,
            ack,
            updates,
        } = send;
        let engine = self.engine();
        let (plan, user_message, user) = match self
            .prepare(
                user_id,
                &content,
                client_msg_id.as_ref(),
                model,
                extras.as_deref(),
            )
            .await
        {
            Ok(p) => p,
            Err(e) => return Err((e, ack)),
        };
        let turn_id = crate::ids::next_id();
        let outcome = self
            .core
            .store
            .begin_turn(self.begin(user_id, turn_id, user_message, plan.reserve))
            .await;
        let (user_message, reservation_id) = match outcome {
            Ok(BeginOutcome::Started {
                user_message,
                reservation_id,
            }) => (user_message, reservation_id),
            Ok(BeginOutcome::Duplicate {
                user_message,
                assistant_message,
            }) => {
                // The first turn with this client id answers again; this one never ran.
                self.core.limits.release(user_id, unlimited).await;
                let first = Ack::Duplicate {
                    user_message,
                    assistant_message,
                };
                let _ = ack.send(Ok(first));
                return Ok(());
            }
            Ok(refused) => return Err((refusal(refused), ack)),
            Err(e) => return Err((e, ack)),
        };
        let mut plan = plan;
        self.catch_up(&mut plan, user_message.seq, &user, extras.as_deref())
            .await;
        self.turn_in_flight.store(turn_id, Ordering::Relaxed);
        self.core
            .metrics
            .turns_started
            .fetch_add(1, Ordering::Relaxed);
        let assistant_id = crate::ids::next_id();
        // Stored: acknowledge to the requester and to every device of the user.
        engine.publish(
            user_id,
            &Frame::Ack {
                id: client_msg_id.clone(),
                conversation_id: self.id,
                message: user_message.clone(),
            },
        );
        let started = Ack::Started {
            user_message,
            assistant_id,
        };
        let _ = ack.send(Ok(started));
        let cancel = CancellationToken::new();
        self.launch(
            myself,
            Turn {
                id: turn_id,
                user_id,
                unlimited,
                client_msg_id,
                assistant_id,
                plan,
                reservation_id,
                user,
                extras,
                collector: Collector::default(),
                index: 0,
                _cancel_on_drop: cancel.clone().drop_guard(),
                cancel,
                aborted: None,
                updates,
                started: Instant::now(),
            },
        );
        Ok(())
    }

    /// Starts the turn's upstream: a task runs the pool and streams back into this mailbox.
    fn launch(&mut self, myself: &ActorRef<ConvMsg>, turn: Turn) {
        let (me, depth, pool) = (myself.clone(), self.depth.clone(), self.core.pool.clone());
        let (routes, job_cancel, turn_id) =
            (turn.plan.routes.clone(), turn.cancel.clone(), turn.id);
        self.core.tracker.spawn(async move {
            pool.run(&routes, &job_cancel, &mut |event| {
                depth.fetch_add(1, Ordering::Relaxed);
                if me.cast(ConvMsg::Upstream { turn_id, event }).is_err() {
                    depth.fetch_sub(1, Ordering::Relaxed);
                }
            })
            .await;
        });
        self.turn = Some(turn);
    }

    pub(super) async fn on_upstream(&mut self, turn_id: i64, event: JobEvent) {
        let engine = self.engine();
        let Some(turn) = self.turn.as_mut().filter(|t| t.id == turn_id) else {
            return; // a late event of a finished turn
        };
        let Some(Content::Text(delta)) = turn.collector.push(event) else {
            // Tool-call pieces are collected; the reply carries them whole.
            if turn.collector.outcome.end.is_some() {
                self.finish().await;
            }
            return;
        };
        let index = turn.index;
        turn.index += 1;
        let frame = Frame::Delta {
            conversation_id: self.id,
            message_id: turn.assistant_id,
            index,
            delta,
        };
        let user = turn.user_id;
        tell(&engine, turn.updates.as_ref(), user, frame);
    }

    /// Ends the turn: stores the assistant message, settles credits, tells everyone.
    async fn finish(&mut self) {
        let Some(mut turn) = self.turn.take() else {
            return;
        };
        self.turn_in_flight.store(0, Ordering::Relaxed);
        let core = self.core.clone();
        if turn.collector.outcome.end == Some(End::Cancelled) {
            if let Some(err) = turn.aborted.take() {
                turn.collector.outcome.end = Some(End::Failed(err));
            }
        }
        let out = &turn.collector.outcome;
        // Every device showed the deltas as they came: partial output reached the user.
        let bill = bill(&turn.plan, out, true).await;
        let finish = self.finish_record(&turn, &bill);
        let result = retry_once("storing the end of a turn", || {
            core.store.finish_turn(finish.clone())
        })
        .await;
        let engine = self.engine();
        let user = turn.user_id;
        core.limits.release(user, turn.unlimited).await;
        if let Ok(d) = &result {
            if d.taken_over {
                self.taken_over(&turn);
                return;
            }
        }
        let counter = match bill.status {
            TurnStatus::Complete => &core.metrics.turns_completed,
            TurnStatus::Cancelled => &core.metrics.turns_cancelled,
            TurnStatus::Failed => &core.metrics.turns_failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let (done, error) = match result {
            Ok(done) => (Some(done), bill.error.clone()),
            Err(e) => {
                tracing::error!(conversation_id = self.id, error = %e, "could not store the end of a turn");
                // Unknown what was committed: rebuild from the database next time, and let
                // the lock go to a takeover if it is still held (it is no longer renewed).
                self.loaded = None;
                engine.abandon_turn(self.id, turn.id);
                let err = match e {
                    EngineError::Unavailable { retry_after } => {
                        EngineError::Unavailable { retry_after }
                    }
                    _ => EngineError::Internal("could not store the reply".into()),
                };
                (None, Some(err))
            }
        };
        if let Some(d) = &done {
            self.remember(&turn, &d.assistant);
        }
        let end = match (&done, error) {
            (Some(done), None) => Frame::Done {
                conversation_id: self.id,
                message: done.assistant.clone(),
                credits: Credits {
                    charged: done.charged,
                    balance: done.balance,
                },
            },
            (_, Some(err)) => Frame::ChatError {
                id: turn.client_msg_id.clone(),
                conversation_id: self.id,
                error: ErrorBody::from(&err),
            },
            (None, None) => return,
        };
        tell(&engine, turn.updates.as_ref(), user, end);
        if let Some(d) = done {
            engine.charged(user, d.charged, d.balance, "chat");
        }
    }

    /// This node stopped renewing its lease mid-turn (paused, cut off) and another node took
    /// the turn over: it is stored as failed and the devices were told there. Only a requester
    /// waiting on this node still needs an answer; the cached context is rebuilt next time.
    fn taken_over(&mut self, turn: &Turn) {
        tracing::warn!(
            conversation_id = self.id,
            turn_id = turn.id,
            "turn taken over by another node; its reply is dropped"
        );
        self.core
            .metrics
            .turns_failed
            .fetch_add(1, Ordering::Relaxed);
        self.loaded = None;
        if let Some(r) = turn.updates.as_ref() {
            let err = EngineError::Unavailable { retry_after: 1 };
            let _ = r.send(Frame::ChatError {
                id: turn.client_msg_id.clone(),
                conversation_id: self.id,
                error: ErrorBody::from(&err),
            });
        }
    }

    /// The second transaction of a turn: the assistant message and the charge of its bill.
    fn finish_record(&self, turn: &Turn, bill: &Bill) -> FinishTurn {
        let out = &turn.collector.outcome;
        let assistant = StoredMessage {
            id: turn.assistant_id,
            conversation_id: self.id,
            seq: 0,
            role: "assistant".into(),
            content: out.text.clone(),
            status: bill.status.message_status().into(),
            model: bill.model.id.clone(),
            usage: MsgUsage {
                prompt_tokens: bill.prompt_tokens as i64,
                completion_tokens: bill.completion_tokens as i64,
            },
            credits_charged: 0,
            client_msg_id: None,
            created_at: chrono::Utc::now().timestamp_millis(),
            attachments: Vec::new(),
            extra: reply_extra(out, turn.extras.as_deref()),
        };
        FinishTurn {
            conversation_id: self.id,
            user_id: turn.user_id,
            turn_id: turn.id,
            reservation_id: turn.reservation_id,
            reserved: turn.plan.reserve,
            assistant,
            charge: bill.charge,
            latency_ms: turn.started.elapsed().as_millis() as i64,
        }
    }

    /// The turn, stored, becomes context for the next one.
    fn remember(&mut self, turn: &Turn, assistant: &StoredMessage) {
        let Some(l) = self.loaded.as_mut() else {
            return;
        };
        l.last_seq = assistant.seq;
        l.history.push_back(turn.user.clone());
        if let Some(p) = super::past(assistant.clone()) {
            l.history.push_back(p);
        }
        while l.history.len() > HISTORY_KEEP {
            l.history.pop_front();
        }
    }
}

/// What the reply holds beyond its text: its tool calls in wire form, the turn's record.
fn reply_extra(
    out: &crate::meter::Outcome,
    extras: Option<&TurnExtras>,
) -> Option<Arc<MessageExtra>> {
    let wire = (!out.tool_calls.is_empty()).then(|| {
        let calls: Vec<serde_json::Value> = out.tool_calls.iter().map(|t| t.to_json()).collect();
        let content = if out.text.is_empty() {
            serde_json::Value::Null
        } else {
            out.text.as_str().into()
        };
        vec![serde_json::json!({"role": "assistant", "content": content, "tool_calls": calls})]
    });
    let response = extras.and_then(|e| e.reply_record.clone());
    (wire.is_some() || response.is_some()).then(|| Arc::new(MessageExtra { wire, response }))
}

/// One frame to every device of the user and to the turn's requester.
fn tell(engine: &Engine, requester: Option<&UnboundedSender<Frame>>, user_id: i64, frame: Frame) {
    engine.publish(user_id, &frame);
    if let Some(r) = requester {
        let _ = r.send(frame);
    }
}
