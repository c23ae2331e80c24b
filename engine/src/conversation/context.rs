//! The context window of a turn.

use std::collections::VecDeque;

use crate::llm::ChatMessage;
use crate::tokens;

/// The context of a turn: the system prompt (always kept), then the newest turns of `history`
/// (each with its token count) that fit `budget` tokens, then the new message. Returns the
/// messages and the prompt's token count.
pub fn build_context(
    history: &VecDeque<(ChatMessage, u64)>,
    system_prompt: Option<&str>,
    content: &str,
    budget: u64,
) -> (Vec<ChatMessage>, u64) {
    let mut used = tokens::count(content) + 4 + 3;
    let mut messages: Vec<ChatMessage> = Vec::new();
    if let Some(sp) = system_prompt.filter(|s| !s.is_empty()) {
        used += tokens::count(sp) + 4;
        messages.push(ChatMessage {
            role: "system".into(),
            content: sp.into(),
        });
    }
    let mut take = 0;
    for (_, t) in history.iter().rev() {
        if used + t > budget {
            break;
        }
        used += t;
        take += 1;
    }
    messages.extend(
        history
            .iter()
            .skip(history.len() - take)
            .map(|(m, _)| m.clone()),
    );
    messages.push(ChatMessage {
        role: "user".into(),
        content: content.into(),
    });
    (messages, used)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> (ChatMessage, u64) {
        (
            ChatMessage {
                role: role.into(),
                content: content.into(),
            },
            tokens::count(content) + 4,
        )
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
        let (all, used_all) = build_context(&history, Some("be brief"), "hello", 100_000);
        assert_eq!(all.len(), 52);
        assert_eq!(&*all[0].role, "system");
        assert_eq!(all.last().map(|m| &*m.content), Some("hello"));
        let (few, used_few) = build_context(&history, Some("be brief"), "hello", 60);
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
        let (min, _) = build_context(&history, Some("be brief"), "hello", 1);
        assert_eq!(min.len(), 2);
    }
}
