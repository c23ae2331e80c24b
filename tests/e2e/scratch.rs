use std::time::{Duration, Instant};
use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scratch_redis() {
    let opts = Options { cache_via_proxy: true, ..Options::default() };
    let Some(app) = spawn_app_with(Backend::MySqlRedis, &[], opts).await else { return };
    let p = app.cache_proxy.as_ref().unwrap();
    eprintln!("get: {:?}", app.state.cache.get("x").await);
    p.pause();
    for i in 0..6 {
        let t = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(20), app.state.cache.get("x")).await;
        eprintln!("{i}: {:?} after {:?}", r, t.elapsed());
    }
    p.resume();
    let t = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(20), app.state.cache.get("x")).await;
    eprintln!("resumed: {:?} after {:?}", r, t.elapsed());
}
