//! Local token counting with OpenAI's `o200k_base` encoding (GPT-4o family).
//!
//! Used to reserve credits before a turn goes upstream (prompt tokens counted locally), to bill
//! when a provider reports no usage, and by the built-in `echo` model. The BPE tables are loaded
//! once per process, on first use.

use std::sync::OnceLock;

use tiktoken_rs::CoreBPE;

use crate::llm::ChatMessage;

/// Tokens OpenAI adds around every message (`<|start|>{role}<|message|>{content}<|end|>`).
const TOKENS_PER_MESSAGE: u64 = 3;
/// Every reply is primed with `<|start|>assistant<|message|>`.
const REPLY_PRIMING: u64 = 3;

/// The process-wide encoder; `None` if the embedded tables could not be loaded (never expected:
/// they ship inside the crate), in which case counts fall back to an estimate.
fn bpe() -> Option<&'static CoreBPE> {
    static BPE: OnceLock<Option<CoreBPE>> = OnceLock::new();
    BPE.get_or_init(|| match tiktoken_rs::o200k_base() {
        Ok(bpe) => Some(bpe),
        Err(e) => {
            tracing::error!(error = %e, "cannot load the o200k_base tokenizer; estimating token counts");
            None
        }
    })
    .as_ref()
}

/// Loads the tokenizer now (e.g. at start-up) so the first request does not pay for it.
pub fn warm_up() {
    let _ = bpe();
}

/// Number of `o200k_base` tokens in `text` (special-token markers in the text count as plain text).
pub fn count(text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    match bpe() {
        Some(bpe) => bpe.encode_ordinary(text).len() as u64,
        // Rough fallback: about four bytes per token.
        None => (text.len() as u64).div_ceil(4),
    }
}

/// Texts longer than this are counted on the blocking pool, not on the async runtime.
const INLINE_BYTES: usize = 16 * 1024;

/// [`count`], off the async runtime when the text is large.
pub async fn count_off_runtime(text: &str) -> u64 {
    if text.len() <= INLINE_BYTES {
        return count(text);
    }
    let owned = text.to_owned();
    tokio::task::spawn_blocking(move || count(&owned))
        .await
        .unwrap_or_else(|_| (text.len() as u64).div_ceil(4))
}

/// [`count_messages`], off the async runtime when the texts are large.
pub async fn count_messages_off_runtime(msgs: &[ChatMessage]) -> u64 {
    let bytes: usize = msgs.iter().map(|m| m.content.len()).sum();
    if bytes <= INLINE_BYTES {
        return count_messages(msgs);
    }
    let owned = msgs.to_vec();
    tokio::task::spawn_blocking(move || count_messages(&owned))
        .await
        .unwrap_or_else(|_| (bytes as u64).div_ceil(4))
}

/// Prompt tokens of a chat context by OpenAI's accounting: per message 3 tokens plus the role's
/// and the content's tokens, plus 3 for the reply priming.
pub fn count_messages(msgs: &[ChatMessage]) -> u64 {
    msgs.iter()
        .map(|m| TOKENS_PER_MESSAGE + count(&m.role) + count(&m.content))
        .sum::<u64>()
        + REPLY_PRIMING
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage::new(role, content)
    }

    #[test]
    fn tokenizer_loads() {
        assert!(bpe().is_some());
    }

    #[test]
    fn known_counts() {
        assert_eq!(count(""), 0);
        assert_eq!(count("hello world"), 2);
        assert_eq!(count("Hello, world!"), 4);
        assert_eq!(count("user"), 1);
        assert_eq!(count("assistant"), 1);
    }

    #[test]
    fn special_markers_are_plain_text() {
        // Counted as ordinary text, never as the single special token.
        assert!(count("<|endoftext|>") > 1);
    }

    #[test]
    fn non_ascii_text_counts() {
        let n = count("你好，世界");
        assert!((1..=5).contains(&n), "{n}");
    }

    #[test]
    fn messages_follow_openai_accounting() {
        assert_eq!(count_messages(&[]), 3);
        // 3 + role "user" (1) + "hello world" (2), plus 3 for the reply priming.
        assert_eq!(count_messages(&[msg("user", "hello world")]), 9);
        let two = [msg("system", "Hello, world!"), msg("user", "hello world")];
        assert_eq!(
            count_messages(&two),
            (3 + count("system") + 4) + (3 + 1 + 2) + 3
        );
    }

    #[test]
    fn same_count_from_many_threads() {
        let handles: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| count("hello world")))
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), 2);
        }
    }
}
