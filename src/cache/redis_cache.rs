//! Redis cache: a `ConnectionManager` (multiplexed, reconnects by itself) and a key prefix.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::AsyncCommands;

use super::CacheResult;

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
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(2))
            .set_response_timeout(Duration::from_secs(2))
            .set_number_of_retries(2);
        let conn = ConnectionManager::new_with_config(client.clone(), cfg).await?;
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
        Ok(self.conn.clone().get(self.key(key)).await?)
    }

    pub async fn set(&self, key: &str, value: &str, ttl: Option<Duration>) -> CacheResult<()> {
        let mut c = self.conn.clone();
        match ttl {
            Some(t) => c.pset_ex::<_, _, ()>(self.key(key), value, ms(t)).await?,
            None => c.set::<_, _, ()>(self.key(key), value).await?,
        }
        Ok(())
    }

    pub async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> CacheResult<bool> {
        let r: Option<String> = redis::cmd("SET")
            .arg(self.key(key))
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(ms(ttl))
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(r.is_some())
    }

    pub async fn del(&self, key: &str) -> CacheResult<()> {
        self.conn.clone().del::<_, ()>(self.key(key)).await?;
        Ok(())
    }

    pub async fn incr(&self, key: &str, window: Duration) -> CacheResult<i64> {
        let k = self.key(key);
        // INCR and the window's expiry in one round trip; NX keeps the first increment's window.
        let (n, _): (i64, i64) = redis::pipe()
            .atomic()
            .incr(&k, 1)
            .cmd("PEXPIRE")
            .arg(&k)
            .arg(ms(window))
            .arg("NX")
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(n)
    }

    pub async fn decr(&self, key: &str) -> CacheResult<i64> {
        // Never below zero, atomically.
        let script = redis::Script::new(
            "local v = tonumber(redis.call('GET', KEYS[1]) or '0'); if v > 0 then return redis.call('DECR', KEYS[1]) else return 0 end",
        );
        Ok(script
            .key(self.key(key))
            .invoke_async(&mut self.conn.clone())
            .await?)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub async fn ttl(&self, key: &str) -> CacheResult<Option<Duration>> {
        let t: i64 = self.conn.clone().pttl(self.key(key)).await?;
        Ok((t > 0).then(|| Duration::from_millis(t as u64)))
    }

    pub async fn ping(&self) -> CacheResult<()> {
        let _: String = redis::cmd("PING")
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }
}
