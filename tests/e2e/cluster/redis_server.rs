//! A `redis-server` of the cluster's own ([`super::Options::own_redis`]), on a free loopback
//! port, without persistence. Stopping it is a crash (SIGKILL): every key is gone, connections
//! are reset and new ones refused until it is started again on the same port — what the nodes
//! see when Redis is restarted. A [`Proxy`](crate::common::Proxy) could drop and refuse
//! connections too, but would keep the data; a real restart also loses it.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: tokio::sync::Mutex<Option<Child>>,
}

impl RedisServer {
    /// `None` (after [`skip`](crate::common::skip)) when `redis-server` is not installed.
    pub async fn start() -> Option<RedisServer> {
        if std::process::Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            crate::common::skip("redis-server (Debian package redis-server)");
            return None;
        }
        let dir = std::env::temp_dir().join(format!("qt-redis-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let r = RedisServer {
            port: super::free_port(),
            dir,
            child: tokio::sync::Mutex::new(None),
        };
        r.start_again().await;
        Some(r)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (empty) and waits until it answers `PING`.
    pub async fn start_again(&self) {
        let mut slot = self.child.lock().await;
        assert!(slot.is_none(), "redis-server is already running");
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn redis-server");
        *slot = Some(child);
        drop(slot);
        let client = redis::Client::open(self.url()).expect("redis URL");
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut c).await;
                if pong.is_ok() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("redis-server on port {} did not answer PING", self.port);
    }

    /// SIGKILL, and reaps it.
    pub async fn stop(&self) {
        let child = self.child.lock().await.take();
        let mut child = child.expect("redis-server is running");
        child.start_kill().expect("kill redis-server");
        child.wait().await.expect("reap redis-server");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(c) = self.child.get_mut().as_mut() {
            let _ = c.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
