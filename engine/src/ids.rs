//! Ids: 63-bit, time-ordered, generated in process (no database round trip to learn an id).
//!
//! Layout: 41 bits of milliseconds since 2024-01-01, 12 bits of node id (random at start-up,
//! so two nodes collide only if they draw the same node id *and* mint in the same millisecond
//! with the same sequence), 10 bits of sequence. Rendered as strings on the wire (SPEC §5).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

const EPOCH_MS: u64 = 1_704_067_200_000;
const SEQ_BITS: u64 = 10;
const NODE_BITS: u64 = 12;

static STATE: AtomicU64 = AtomicU64::new(0);
static NODE: OnceLock<u64> = OnceLock::new();

fn node() -> u64 {
    *NODE.get_or_init(|| rand::random::<u64>() & ((1 << NODE_BITS) - 1))
}

/// A new unique id. Lock-free; at most 1024 ids per millisecond per process, after which it
/// borrows from the next millisecond (ids stay unique and increasing).
pub fn next_id() -> i64 {
    let now = (chrono::Utc::now().timestamp_millis() as u64).saturating_sub(EPOCH_MS);
    let mut cur = STATE.load(Ordering::Relaxed);
    loop {
        // STATE holds (ms << SEQ_BITS) | seq of the last id handed out.
        let candidate = (now << SEQ_BITS).max(cur + 1);
        match STATE.compare_exchange_weak(cur, candidate, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => {
                let ms = candidate >> SEQ_BITS;
                let seq = candidate & ((1 << SEQ_BITS) - 1);
                return ((ms << (NODE_BITS + SEQ_BITS)) | (node() << SEQ_BITS) | seq) as i64;
            }
            Err(actual) => cur = actual,
        }
    }
}

/// Parses an id from the wire; anything else is simply "not found".
pub fn parse(s: &str) -> Option<i64> {
    s.parse::<i64>().ok().filter(|v| *v > 0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_unique_and_increasing() {
        let mut last = 0;
        for _ in 0..10_000 {
            let id = super::next_id();
            assert!(id > last);
            last = id;
        }
    }
}
