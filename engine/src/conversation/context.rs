//! The context window of a turn.

use std::collections::VecDeque;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::llm::ChatMessage;
use crate::tokens;

/// Prompt tokens an image is reserved for (OpenAI's most for one `high` detail image).
pub const IMAGE_TOKENS: u64 = 1445;

/// A message of the history (or the new one) as the context uses it.
#[derive(Clone, Debug, PartialEq)]
pub struct Past {
    /// The role and the text: what is counted and, for a text-only context, sent.
    pub msg: ChatMessage,
    /// Its token count (images included).
    pub tokens: u64,
    /// What goes upstream in its place when it holds more than text (images, tool calls, tool
    /// results): OpenAI wire messages.
    pub wire: Option<Arc<[Value]>>,
}

impl Past {
    /// A text message, counted.
    pub fn text(role: &str, content: &str) -> Past {
        Past {
            msg: ChatMessage::new(role, content),
            tokens: tokens::count(content) + 4,
            wire: None,
        }
    }

    /// Whether its wire form holds an image part.
    pub fn has_image(&self) -> bool {
        self.wire.as_ref().is_some_and(|w| {
            w.iter().any(|m| {
                m["content"]
                    .as_array()
                    .is_some_and(|parts| parts.iter().any(|p| p["type"] == "image_url"))
            })
        })
    }
}

/// A turn's context: the messages as text, their wire form when any of them has one, the count.
#[derive(Clone, Debug, Default)]
pub struct Context {
    pub messages: Vec<ChatMessage>,
    pub wire: Option<Vec<Value>>,
    pub tokens: u64,
}

/// The context of a turn: the system prompt (always kept), then the newest turns of `history`
/// that fit `budget` tokens, then the new message. `images`: whether the model reads images
/// (without, messages keep only their text where their wire form has images).
pub fn build_context(
    history: &VecDeque<Past>,
    system_prompt: Option<&str>,
    new: &Past,
    budget: u64,
    images: bool,
) -> Context {
    let mut used = new.tokens + 3;
    let mut taken: Vec<&Past> = Vec::new();
    let system = system_prompt.filter(|s| !s.is_empty()).map(|sp| {
        used += tokens::count(sp) + 4;
        Past::text("system", sp)
    });
    let mut take = 0;
    for p in history.iter().rev() {
        if used + p.tokens > budget {
            break;
        }
        used += p.tokens;
        take += 1;
    }
    taken.extend(system.iter());
    taken.extend(history.iter().skip(history.len() - take));
    taken.push(new);
    let wired = |p: &&Past| p.wire.is_some() && (images || !p.has_image());
    let wire = taken.iter().any(wired).then(|| {
        let mut out = Vec::with_capacity(taken.len());
        for p in &taken {
            match &p.wire {
                Some(w) if wired(p) => out.extend(w.iter().cloned()),
                _ => out.push(json!({"role": &*p.msg.role, "content": &*p.msg.content})),
            }
        }
        out
    });
    Context {
        messages: taken.iter().map(|p| p.msg.clone()).collect(),
        wire,
        tokens: used,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> Past {
        Past::text(role, content)
    }

    #[test]
    fn context_keeps_the_system_prompt_and_the_newest_turns_that_fit() {
        let history: VecDeque<_> = (0..50)
            .map(|i| {
                msg(
                    if i % 2 == 0 { "user" } else { "assistant" },
                    &format!("turn number {i}"),
                )
            })
            .collect();
        let hello = msg("user", "hello");
        let c = build_context(&history, Some("be brief"), &hello, 100_000, true);
        let (all, used_all) = (c.messages, c.tokens);
        assert!(c.wire.is_none(), "text only");
        assert_eq!(all.len(), 52);
        assert_eq!(&*all[0].role, "system");
        assert_eq!(all.last().map(|m| &*m.content), Some("hello"));
        let c = build_context(&history, Some("be brief"), &hello, 60, true);
        let (few, used_few) = (c.messages, c.tokens);
        assert!(used_few <= 60 && used_few < used_all);
        assert_eq!(
            &*few[0].content, "be brief",
            "the system prompt is always kept"
        );
        // What is kept is the newest turns, in order.
        let kept: Vec<_> = few[1..few.len() - 1]
            .iter()
            .map(|m| m.content.clone())
            .collect();
        assert!(!kept.is_empty());
        assert_eq!(kept.last().map(|k| &**k), Some("turn number 49"));
        // A budget smaller than the prompt itself still sends the system prompt and message.
        let min = build_context(&history, Some("be brief"), &hello, 1, true).messages;
        assert_eq!(min.len(), 2);
    }

    #[test]
    fn a_message_with_a_wire_form_sends_the_whole_context_in_wire_form() {
        let history: VecDeque<_> = [msg("user", "hi"), msg("assistant", "hello")].into();
        let image = json!({"role": "user", "content": [{"type": "text", "text": "look"},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]});
        let new = Past {
            wire: Some(vec![image.clone()].into()),
            ..msg("user", "look")
        };
        let c = build_context(&history, Some("sys"), &new, 100_000, true);
        let wire = c.wire.expect("wire form");
        assert_eq!(wire.len(), 4);
        assert_eq!(wire[0], json!({"role": "system", "content": "sys"}));
        assert_eq!(wire[2], json!({"role": "assistant", "content": "hello"}));
        assert_eq!(wire[3], image);
        // A model without vision gets the text alone.
        let c = build_context(&history, Some("sys"), &new, 100_000, false);
        assert!(c.wire.is_none());
        assert_eq!(&*c.messages[3].content, "look");
    }
}
