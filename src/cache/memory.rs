//! In-process cache for a single node: a sharded map with lazy expiry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;

#[derive(Clone, Default)]
pub struct MemoryCache {
    map: Arc<DashMap<String, Entry>>,
}

struct Entry {
    value: String,
    expires: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|e| e > now)
    }
}

impl MemoryCache {
    pub fn new() -> Self {
        let c = Self::default();
        // Sweep expired entries now and then so counters and codes do not pile up.
        let weak = Arc::downgrade(&c.map);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(30));
                loop {
                    tick.tick().await;
                    let Some(map) = weak.upgrade() else { break };
                    let now = Instant::now();
                    map.retain(|_, e| e.live(now));
                }
            });
        }
        c
    }

    pub fn get(&self, key: &str) -> Option<String> {
        let now = Instant::now();
        self.map
            .get(key)
            .filter(|e| e.live(now))
            .map(|e| e.value.clone())
    }

    pub fn set(&self, key: &str, value: &str, ttl: Option<Duration>) {
        self.map.insert(
            key.to_owned(),
            Entry {
                value: value.to_owned(),
                expires: ttl.map(|t| Instant::now() + t),
            },
        );
    }

    pub fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> bool {
        let now = Instant::now();
        let mut set = false;
        self.map
            .entry(key.to_owned())
            .and_modify(|e| {
                if !e.live(now) {
                    e.value = value.to_owned();
                    e.expires = Some(now + ttl);
                    set = true;
                }
            })
            .or_insert_with(|| {
                set = true;
                Entry {
                    value: value.to_owned(),
                    expires: Some(now + ttl),
                }
            });
        set
    }

    pub fn del(&self, key: &str) {
        self.map.remove(key);
    }

    pub fn incr(&self, key: &str, window: Duration) -> i64 {
        let now = Instant::now();
        let mut e = self.map.entry(key.to_owned()).or_insert_with(|| Entry {
            value: "0".into(),
            expires: Some(now + window),
        });
        if !e.live(now) {
            e.value = "0".into();
            e.expires = Some(now + window);
        }
        let n = e.value.parse::<i64>().unwrap_or(0) + 1;
        e.value = n.to_string();
        n
    }

    pub fn decr(&self, key: &str) -> i64 {
        let now = Instant::now();
        match self.map.get_mut(key) {
            Some(mut e) if e.live(now) => {
                let n = (e.value.parse::<i64>().unwrap_or(0) - 1).max(0);
                e.value = n.to_string();
                n
            }
            _ => 0,
        }
    }

    pub fn ttl(&self, key: &str) -> Option<Duration> {
        let now = Instant::now();
        self.map
            .get(key)
            .filter(|e| e.live(now))
            .and_then(|e| e.expires)
            .map(|e| e.saturating_duration_since(now))
    }
}
