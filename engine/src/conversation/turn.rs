//! A chat turn: admitted and stored by `begin_turn`, run through the pool, billed by the one
//! rule, ended by `finish_turn`, told to every device.

use std::sync::atomic::Ordering;
use std::time::Instant;

use ractor::ActorRef;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::{Ack, ConvMsg, ConvState, SendTurn, Turn, HISTORY_KEEP};
use crate::engine::Engine;
use crate::error::EngineError;
use crate::events::{Credits, ErrorBody, Frame, MsgUsage, StoredMessage};
use crate::llm::{ChatMessage, ChatRequest};
use crate::meter::{bill, retry_once, Bill, Collector, Content, End, Plan, TurnStatus};
use crate::pool::JobEvent;
use crate::ports::{BeginOutcome, BeginTurn, FinishTurn};
use crate::tokens;

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
            ack,
            updates,
        } = send;
        let engine = self.engine();
        let (plan, user_message) = match self
            .prepare(user_id, &content, client_msg_id.as_ref(), model)
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
        self.catch_up(&mut plan, user_message.seq, &content).await;
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
                user_content: content,
                collector: Collector::default(),
                index: 0,
                _cancel_on_drop: cancel.clone().drop_guard(),
                cancel,
                aborted: false,
                updates,
                started: Instant::now(),
            },
        );
        Ok(())
    }

    /// Makes the turn's context every stored turn's: when the new message is not the one
    /// after the newest this cache knows, another node stored turns since; the history is
    /// reloaded (without the new message) and the context rebuilt in the same window. The
    /// reservation stays as planned: the charge never exceeds what the user can pay.
    async fn catch_up(&mut self, plan: &mut Plan, user_seq: i64, content: &str) {
        let behind = self
            .loaded
            .as_ref()
            .is_some_and(|l| l.last_seq + 1 != user_seq);
        if behind {
            match self.load(user_seq).await {
                Ok(fresh) => {
                    tracing::debug!(conversation_id = self.id, "context was behind; reloaded");
                    if let Some(model) = plan.primary() {
                        let (messages, prompt) = fresh.context(model, content);
                        for r in &mut plan.routes {
                            r.request.messages = messages.clone();
                        }
                        plan.prompt_local = prompt;
                    }
                    self.loaded = Some(fresh);
                }
                Err(e) => {
                    tracing::warn!(conversation_id = self.id, error = %e, "could not reload a context that was behind");
                }
            }
        }
        if let Some(l) = self.loaded.as_mut() {
            l.last_seq = user_seq;
        }
    }

    /// The first transaction of a turn: lock, reservation and the user's message.
    fn begin(
        &self,
        user_id: i64,
        turn_id: i64,
        user_message: StoredMessage,
        reserve: i64,
    ) -> BeginTurn {
        BeginTurn {
            conversation_id: self.id,
            user_id,
            turn_id,
            node_id: self.core.cfg.node_id.clone(),
            user_message,
            reserve,
            lock_ms: self.core.cfg.turn_lock.as_millis() as i64,
        }
    }

    /// Checks that the turn may run (owner, not busy, usable model) and plans it: the context
    /// that fits the model's window and the routes with their reservation.
    async fn prepare(
        &mut self,
        user_id: i64,
        content: &str,
        client_msg_id: Option<&String>,
        model: Option<String>,
    ) -> Result<(Plan, StoredMessage), EngineError> {
        let engine = self.engine();
        let busy = self.turn.is_some();
        let in_flight_same = self.turn.as_ref().is_some_and(|t| {
            t.client_msg_id.is_some() && t.client_msg_id.as_ref() == client_msg_id
        });
        let loaded = self.ensure_loaded().await?;
        if loaded.user_id != user_id {
            return Err(EngineError::NotFound("conversation not found".into()));
        }
        if busy && !in_flight_same {
            return Err(EngineError::ConversationBusy);
        }
        let model_id = model.unwrap_or_else(|| loaded.model.clone());
        let model = engine.usable_model(&model_id).await?;
        let (messages, prompt_tokens) = loaded.context(&model, content);
        let request = ChatRequest {
            messages,
            max_tokens: Some(model.max_output_tokens),
            ..Default::default()
        };
        let plan = engine.plan(model, request, prompt_tokens).await;
        let user_message = StoredMessage {
            id: crate::ids::next_id(),
            conversation_id: self.id,
            seq: 0,
            role: "user".into(),
            content: content.to_owned(),
            status: TurnStatus::Complete.message_status().into(),
            model: model_id,
            usage: MsgUsage::default(),
            credits_charged: 0,
            client_msg_id: client_msg_id.cloned(),
            created_at: chrono::Utc::now().timestamp_millis(),
        };
        Ok((plan, user_message))
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
        if turn.aborted && turn.collector.outcome.end == Some(End::Cancelled) {
            let err = EngineError::Internal("the server is shutting down".into());
            turn.collector.outcome.end = Some(End::Failed(err));
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
                // Unknown what was committed: rebuild from the database next time.
                self.loaded = None;
                let err = EngineError::Internal("could not store the reply".into());
                (None, Some(err))
            }
        };
        if let Some(d) = &done {
            self.remember(&turn, bill.completion_tokens, d.assistant.seq);
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
    fn remember(&mut self, turn: &Turn, completion_tokens: u64, assistant_seq: i64) {
        let Some(l) = self.loaded.as_mut() else {
            return;
        };
        l.last_seq = assistant_seq;
        let text = &turn.collector.outcome.text;
        l.history.push_back((
            ChatMessage {
                role: "user".into(),
                content: turn.user_content.as_str().into(),
            },
            tokens::count(&turn.user_content) + 4,
        ));
        if !text.is_empty() {
            l.history.push_back((
                ChatMessage {
                    role: "assistant".into(),
                    content: text.as_str().into(),
                },
                completion_tokens + 4,
            ));
        }
        while l.history.len() > HISTORY_KEEP {
            l.history.pop_front();
        }
    }
}

/// One frame to every device of the user and to the turn's requester.
fn tell(engine: &Engine, requester: Option<&UnboundedSender<Frame>>, user_id: i64, frame: Frame) {
    engine.publish(user_id, &frame);
    if let Some(r) = requester {
        let _ = r.send(frame);
    }
}
