//! Redis cache: a `ConnectionManager` (multiplexed, reconnects by itself) and a key prefix.
//!
//! Every operation is bounded in time: while Redis is unreachable, callers get an error within
//! [`OP_TIMEOUT`] instead of waiting for a reconnect to finish, and the next call after Redis is
//! back reconnects at once.

use std::future::Future;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;

use super::CacheResult;

/// The longest any cache operation may take, reconnecting included.
pub const OP_TIMEOUT: Duration = Duration::from_secs(3);

/// Settings for every Redis `ConnectionManager` of the process (use it for any other manager
/// too, e.g. pub/sub publishers).
///
/// The crate's defaults are unusable here: its retry `factor` (100) is fed to an exponential
/// backoff whose delays start at 1 s, so one failed reconnect waits 1 s, then 60 s, … across six
/// retries, and every command issued meanwhile waits on that reconnect, with no timeout.
pub fn connection_manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Duration::from_secs(2))
        .set_response_timeout(Duration::from_secs(2))
        .set_number_of_retries(1)
        .set_factor(1)
        .set_max_delay(100)
}

/// Runs one Redis round trip with [`OP_TIMEOUT`].
async fn timed<T>(fut: impl Future<Output = redis::RedisResult<T>>) -> CacheResult<T> {
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "redis operation timed out",
        ))
        .into()),
    }
}

#[derive(Clone)]
pub struct RedisCache {
    conn: ConnectionManager,
    client: redis::Client,
    prefix: String,
}

fn ms(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

impl RedisCache {
    pub async fn connect(url: &str, prefix: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)?;
        let conn =
            ConnectionManager::new_with_config(client.clone(), connection_manager_config()).await?;
        Ok(RedisCache {
            conn,
            client,
            prefix: prefix.to_owned(),
        })
    }

    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    pub fn key(&self, k: &str) -> String {
        format!("{}{}", self.prefix, k)
    }

    pub async fn get(&self, key: &str) -> CacheResult<Option<String>> {
        let mut c = self.conn.clone();
        timed(c.get(self.key(key))).await
    }

    pub async fn set(&self, key: &str, value: &str, ttl: Option<Duration>) -> CacheResult<()> {
        let mut c = self.conn.clone();
        match ttl {
            Some(t) => timed(c.pset_ex::<_, _, ()>(self.key(key), value, ms(t))).await,
            None => timed(c.set::<_, _, ()>(self.key(key), value)).await,
        }
    }

    pub async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> CacheResult<bool> {
        let mut c = self.conn.clone();
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(key))
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(ms(ttl));
        let r: Option<String> = timed(cmd.query_async(&mut c)).await?;
        Ok(r.is_some())
    }

    pub async fn del(&self, key: &str) -> CacheResult<()> {
        let mut c = self.conn.clone();
        timed(c.del::<_, ()>(self.key(key))).await
    }

    pub async fn incr(&self, key: &str, window: Duration) -> CacheResult<i64> {
        let k = self.key(key);
        // INCR and the window's expiry in one round trip; NX keeps the first increment's window.
        let mut c = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .incr(&k, 1)
            .cmd("PEXPIRE")
            .arg(&k)
            .arg(ms(window))
            .arg("NX");
        let (n, _): (i64, i64) = timed(pipe.query_async(&mut c)).await?;
        Ok(n)
    }

    pub async fn decr(&self, key: &str) -> CacheResult<i64> {
        // Never below zero, atomically.
        let script = redis::Script::new(
            "local v = tonumber(redis.call('GET', KEYS[1]) or '0'); if v > 0 then return redis.call('DECR', KEYS[1]) else return 0 end",
        );
        let mut c = self.conn.clone();
        timed(script.key(self.key(key)).invoke_async(&mut c)).await
    }

    /// Takes one of at most `limit` leased slots in the sorted set `key` (member → lease
    /// expiry in ms): expired leases are dropped first, so a dead node's slots free themselves.
    pub async fn slot_acquire(
        &self,
        key: &str,
        member: &str,
        limit: u32,
        now_ms: i64,
        lease: Duration,
    ) -> CacheResult<bool> {
        let script = redis::Script::new(
            "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1]) \
             if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end \
             redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4]) \
             redis.call('PEXPIRE', KEYS[1], ARGV[5]) \
             return 1",
        );
        let mut c = self.conn.clone();
        let took: i64 = timed(
            script
                .key(self.key(key))
                .arg(now_ms)
                .arg(now_ms + ms(lease) as i64)
                .arg(limit)
                .arg(member)
                .arg(ms(lease) * 2)
                .invoke_async(&mut c),
        )
        .await?;
        Ok(took == 1)
    }

    /// Pushes the leases of slots this node holds (`(key, member)`) to `now + lease`; a slot
    /// already dropped (its lease ran out) is not brought back.
    pub async fn slot_renew(
        &self,
        held: &[(String, String)],
        now_ms: i64,
        lease: Duration,
    ) -> CacheResult<()> {
        if held.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (key, member) in held {
            let k = self.key(key);
            pipe.cmd("ZADD")
                .arg(&k)
                .arg("XX")
                .arg(now_ms + ms(lease) as i64)
                .arg(member)
                .ignore();
            pipe.cmd("PEXPIRE").arg(&k).arg(ms(lease) * 2).ignore();
        }
        let mut c = self.conn.clone();
        let _: () = timed(pipe.query_async(&mut c)).await?;
        Ok(())
    }

    pub async fn slot_release(&self, key: &str, member: &str) -> CacheResult<()> {
        let mut c = self.conn.clone();
        timed(c.zrem::<_, _, ()>(self.key(key), member)).await
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub async fn ttl(&self, key: &str) -> CacheResult<Option<Duration>> {
        let mut c = self.conn.clone();
        let t: i64 = timed(c.pttl(self.key(key))).await?;
        Ok((t > 0).then(|| Duration::from_millis(t as u64)))
    }

    pub async fn ping(&self) -> CacheResult<()> {
        let mut c = self.conn.clone();
        let _: String = timed(redis::cmd("PING").query_async(&mut c)).await?;
        Ok(())
    }
}
