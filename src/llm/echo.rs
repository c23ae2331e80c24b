//! The built-in `echo` model: a deterministic local provider for development, tests and
//! benchmarks. It is a real provider of the pool (marked as dev), so everything around it —
//! reservations, billing, streaming, cancellation — runs exactly as with a remote model.
//!
//! Reply: `"Echo: "` + the last user message (`"Echo: (empty)"` without one), streamed word by
//! word (`"Echo:"`, `" word"`, ...), `delay` apart. `max_tokens` cuts the reply (finish reason
//! `length`, else `stop`). Usage is counted with the local tokenizer.

use std::collections::VecDeque;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{self, StreamExt};
use questech_engine::llm::{ChatRequest, EventStream, Provider, ProviderError, StreamEvent, Usage};
use questech_engine::tokens;

/// See the module docs.
#[derive(Clone, Debug, Default)]
pub struct EchoProvider {
    /// Pause between two deltas (none when zero).
    pub delay: Duration,
}

impl EchoProvider {
    pub fn new(delay: Duration) -> Self {
        Self { delay }
    }
}

/// The full reply the echo model gives to `req` (before any `max_tokens` cut).
pub fn reply_text(req: &ChatRequest) -> String {
    let last_user = req
        .messages
        .iter()
        .rev()
        .find(|m| &*m.role == "user")
        .map(|m| m.content.trim())
        .filter(|c| !c.is_empty());
    format!("Echo: {}", last_user.unwrap_or("(empty)"))
}

/// The deltas actually sent for `req`, and the finish reason.
fn plan(req: &ChatRequest) -> (Vec<String>, &'static str) {
    let reply = reply_text(req);
    let limit = req.max_tokens.unwrap_or(u64::MAX);
    let mut deltas = Vec::new();
    let mut used = 0u64;
    for (i, word) in reply.split_whitespace().enumerate() {
        let delta = if i == 0 {
            word.to_owned()
        } else {
            format!(" {word}")
        };
        let n = tokens::count(&delta);
        if used.saturating_add(n) > limit {
            return (deltas, "length");
        }
        used += n;
        deltas.push(delta);
    }
    (deltas, "stop")
}

impl Provider for EchoProvider {
    fn name(&self) -> &str {
        "echo"
    }

    fn is_dev(&self) -> bool {
        true
    }

    fn stream(&self, req: ChatRequest) -> BoxFuture<'static, Result<EventStream, ProviderError>> {
        let delay = self.delay;
        if let Some(fields) = &req.embed {
            let events = super::echo_embed::events(fields);
            return Box::pin(async move { Ok(stream::iter(events.into_iter().map(Ok)).boxed()) });
        }
        Box::pin(async move {
            let prompt_tokens = tokens::count_messages(&req.messages);
            let (deltas, finish) = plan(&req);
            let completion_tokens = tokens::count(&deltas.concat());
            let mut tail = VecDeque::from([
                StreamEvent::Usage(Usage {
                    prompt_tokens,
                    completion_tokens,
                }),
                StreamEvent::Done(Some(finish.to_owned())),
            ]);
            let deltas =
                stream::iter(deltas.into_iter().enumerate()).then(move |(i, d)| async move {
                    if i > 0 && !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    Ok(StreamEvent::Delta(d))
                });
            let tail = stream::poll_fn(move |_| std::task::Poll::Ready(tail.pop_front().map(Ok)));
            Ok(deltas.chain(tail).boxed())
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use questech_engine::llm::ChatMessage;

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage::new(role, content)
    }

    fn req(messages: Vec<ChatMessage>, max_tokens: Option<u64>) -> ChatRequest {
        ChatRequest {
            model: "echo".into(),
            messages,
            max_tokens,
            ..Default::default()
        }
    }

    async fn run(p: &EchoProvider, r: ChatRequest) -> Vec<StreamEvent> {
        p.stream(r)
            .await
            .unwrap()
            .map(Result::unwrap)
            .collect()
            .await
    }

    fn delta(s: &str) -> StreamEvent {
        StreamEvent::Delta(s.into())
    }

    #[test]
    fn identity() {
        let p = EchoProvider::default();
        assert_eq!(p.name(), "echo");
        assert!(p.is_dev());
    }

    #[tokio::test]
    async fn echoes_the_last_user_message_word_by_word() {
        let messages = vec![
            msg("system", "You are helpful."),
            msg("user", "first question"),
            msg("assistant", "Echo: first question"),
            msg("user", "  hello   big\n world "),
        ];
        let prompt_tokens = tokens::count_messages(&messages);
        let ev = run(&EchoProvider::default(), req(messages, None)).await;
        assert_eq!(
            ev,
            [
                delta("Echo:"),
                delta(" hello"),
                delta(" big"),
                delta(" world"),
                StreamEvent::Usage(Usage {
                    prompt_tokens,
                    completion_tokens: tokens::count("Echo: hello big world"),
                }),
                StreamEvent::Done(Some("stop".into())),
            ]
        );
    }

    #[tokio::test]
    async fn no_user_message() {
        let ev = run(
            &EchoProvider::default(),
            req(vec![msg("system", "x")], None),
        )
        .await;
        assert_eq!(ev[0], delta("Echo:"));
        assert_eq!(ev[1], delta(" (empty)"));
        assert_eq!(ev.len(), 4);
        let ev = run(&EchoProvider::default(), req(vec![], None)).await;
        assert_eq!(&ev[..2], [delta("Echo:"), delta(" (empty)")]);
    }

    #[tokio::test]
    async fn max_tokens_cuts_with_length() {
        let messages = vec![msg("user", "one two three four five six")];
        let ev = run(&EchoProvider::default(), req(messages.clone(), Some(3))).await;
        let deltas: Vec<_> = ev
            .iter()
            .filter_map(|e| match e {
                StreamEvent::Delta(d) => Some(d.as_str()),
                _ => None,
            })
            .collect();
        let sent = deltas.concat();
        assert_eq!(sent, "Echo: one");
        assert_eq!(
            ev[ev.len() - 2],
            StreamEvent::Usage(Usage {
                prompt_tokens: tokens::count_messages(&messages),
                completion_tokens: tokens::count(&sent),
            })
        );
        assert!(tokens::count(&sent) <= 3);
        assert_eq!(ev.last(), Some(&StreamEvent::Done(Some("length".into()))));

        let ev = run(&EchoProvider::default(), req(messages.clone(), Some(0))).await;
        assert_eq!(
            ev,
            [
                StreamEvent::Usage(Usage {
                    prompt_tokens: tokens::count_messages(&messages),
                    completion_tokens: 0,
                }),
                StreamEvent::Done(Some("length".into())),
            ]
        );

        // A limit the reply fits in exactly is no cut.
        let full = tokens::count("Echo: one two three four five six");
        let ev = run(&EchoProvider::default(), req(messages, Some(full))).await;
        assert_eq!(ev.last(), Some(&StreamEvent::Done(Some("stop".into()))));
    }

    #[tokio::test]
    async fn delay_between_deltas() {
        let p = EchoProvider::new(Duration::from_millis(40));
        let start = std::time::Instant::now();
        let ev = run(&p, req(vec![msg("user", "a b c")], None)).await;
        assert_eq!(ev.len(), 6);
        // Three sleeps: between the four deltas, none before the first.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(120), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }
}
