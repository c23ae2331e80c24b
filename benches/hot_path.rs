//! Micro-benchmarks of the hot-path pieces (criterion): frame parse and serialise, access-token
//! verification with the session check, token counting, actor round trips, context trimming and
//! upstream SSE parsing. Short on purpose (3 s per bench): `cargo bench` runs in a few minutes.
//! Benchmarks measure; they never fail on a time.
//!
//! ```sh
//! cargo bench --bench hot_path                 # all
//! cargo bench --bench hot_path -- auth/        # one group
//! QT_BENCH_REDIS_URL=redis://127.0.0.1:6379 cargo bench --bench hot_path -- cache/redis
//! ```
//!
//! The WebSocket client frame is `questech::ws::ClientFrame` and the context trimming is
//! `questech_engine::conversation::build_context`: the code the server runs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, VecDeque};
use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use questech::auth::jwt::JwtKeys;
use questech::cache::{Cache, MemoryCache};
use questech::llm::sse::SseParser;
use questech::AppState;
use questech_engine::events::{Credits, Frame, MsgUsage, StoredMessage};
use questech_engine::llm::ChatMessage;
use questech_engine::tokens;
use questech_engine::user_session::{Connection, UserMsg};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "bench-jwt-secret-0123456789-abcdefghijklmnopqrstuv";
const CONTENT: &str = "Hello! Please tell me something interesting about the history of Rome.";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

// ---- frames -------------------------------------------------------------------------------------

fn message(content: &str) -> StoredMessage {
    StoredMessage {
        id: 385_430_982_288_481_280,
        conversation_id: 385_430_982_288_481_024,
        seq: 42,
        role: "assistant".into(),
        content: content.into(),
        status: "complete".into(),
        model: "gpt-4o-mini".into(),
        usage: MsgUsage {
            prompt_tokens: 120,
            completion_tokens: 16,
        },
        credits_charged: 3,
        client_msg_id: Some("c-1234567".into()),
        created_at: 1_790_000_000_000,
        attachments: Vec::new(),
        extra: None,
    }
}

fn frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("frames");
    let send = format!(
        r#"{{"type":"chat.send","id":"c-1234567","conversation_id":"385430982288481024","content":"{CONTENT}"}}"#
    );
    g.throughput(Throughput::Bytes(send.len() as u64));
    g.bench_function("client_chat_send_parse", |b| {
        b.iter(|| {
            let f: questech::ws::ClientFrame = serde_json::from_str(black_box(&send)).unwrap();
            black_box(f)
        })
    });
    g.throughput(Throughput::Elements(1));
    let delta = Frame::Delta {
        conversation_id: 385_430_982_288_481_024,
        message_id: 385_430_982_288_481_280,
        index: 7,
        delta: " upstream".into(),
    };
    g.bench_function("server_delta_to_bytes", |b| {
        b.iter(|| black_box(black_box(&delta).to_bytes()))
    });
    let done = Frame::Done {
        conversation_id: 385_430_982_288_481_024,
        message: message(&"Hello from fake upstream ".repeat(20)),
        credits: Credits {
            charged: 3,
            balance: 999_997,
        },
    };
    g.bench_function("server_done_500b_to_bytes", |b| {
        b.iter(|| black_box(black_box(&done).to_bytes()))
    });
    g.finish();
}

// ---- auth ---------------------------------------------------------------------------------------

fn bench_state(rt: &tokio::runtime::Runtime) -> (AppState, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("qt-bench-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let map: HashMap<String, String> = [
        ("DATA_DIR", dir.to_string_lossy().into_owned()),
        (
            "UPLOAD_DIR",
            dir.join("uploads").to_string_lossy().into_owned(),
        ),
        (
            "DATABASE_URL",
            format!("sqlite://{}", dir.join("q.db").display()),
        ),
        ("BIND_ADDR", "127.0.0.1:0".to_owned()),
        ("SERVICE_DEBUG", "true".to_owned()),
        ("JWT_SECRET_KEY", SECRET.to_owned()),
        ("NODE_ID", "bench".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let config = questech::Config::from_map(&map).unwrap();
    let state = rt.block_on(AppState::build(config)).unwrap();
    (state, dir)
}

fn auth(c: &mut Criterion) {
    let rt = rt();
    let mut g = c.benchmark_group("auth");
    let keys = JwtKeys::new(SECRET, 900);
    let token = keys
        .issue(385_430_982_288_481_280, 385_430_982_288_481_536, "user")
        .unwrap();
    g.bench_function("jwt_verify", |b| {
        b.iter(|| black_box(keys.verify(black_box(&token)).unwrap()))
    });

    let mem = Cache::Memory(MemoryCache::new());
    rt.block_on(mem.set(
        "sess:385430982288481536",
        "live",
        Some(Duration::from_secs(900)),
    ))
    .unwrap();
    g.bench_function("session_lookup_memory_cache", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(mem.get("sess:385430982288481536").await.unwrap()) })
    });

    // The whole check the `AuthUser` extractor does: signature, claims, then the session's
    // liveness from the cache (a warm session, as on every request after the first).
    let (state, dir) = bench_state(&rt);
    let (uid, sid) = (385_430_982_288_481_280_i64, 385_430_982_288_481_536_i64);
    let token = state.jwt.issue(uid, sid, "user").unwrap();
    rt.block_on(state.cache.set(
        &format!("sess:{sid}"),
        "live",
        Some(Duration::from_secs(900)),
    ))
    .unwrap();
    rt.block_on(questech::auth::authenticate(&state, &token))
        .unwrap();
    g.bench_function("authenticate_jwt_and_session", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(questech::auth::authenticate(&state, &token).await.unwrap())
        })
    });
    g.finish();

    // Engine: a frame published to a user's session actor, delivered to an attached
    // connection's queue (what every `chat.delta` goes through).
    let mut g = c.benchmark_group("actor");
    let (tx, mut rx) = mpsc::channel::<Bytes>(1024);
    rt.block_on(state.engine.send_user(
        uid,
        UserMsg::Attach {
            conn_id: 1,
            conn: Connection {
                tx,
                close: CancellationToken::new(),
                session_id: 1,
            },
        },
    ))
    .unwrap();
    let frame = Frame::Delta {
        conversation_id: 385_430_982_288_481_024,
        message_id: 385_430_982_288_481_280,
        index: 7,
        delta: " upstream".into(),
    };
    g.bench_function("engine_publish_to_user_connection", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let t = std::time::Instant::now();
                for _ in 0..iters {
                    state.engine.publish(uid, &frame);
                    black_box(rx.recv().await.unwrap());
                }
                t.elapsed()
            })
        })
    });
    g.finish();
    state.shutdown.cancel();
    drop(state);
    let _ = std::fs::remove_dir_all(dir);

    if let Ok(url) = std::env::var("QT_BENCH_REDIS_URL") {
        let mut g = c.benchmark_group("cache");
        let redis = rt
            .block_on(Cache::connect(Some(&url), "qt-bench:"))
            .unwrap();
        rt.block_on(redis.set("sess:1", "live", Some(Duration::from_secs(60))))
            .unwrap();
        g.bench_function("redis_session_lookup", |b| {
            b.to_async(&rt)
                .iter(|| async { black_box(redis.get("sess:1").await.unwrap()) })
        });
        g.finish();
    }
}

// ---- actors -------------------------------------------------------------------------------------

struct Echo;

enum EchoMsg {
    Call(RpcReplyPort<u64>),
    Cast(u64, oneshot::Sender<u64>),
}

impl Actor for Echo {
    type Msg = EchoMsg;
    type State = u64;
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<EchoMsg>, _: ()) -> Result<u64, ActorProcessingErr> {
        Ok(0)
    }

    async fn handle(
        &self,
        _: ActorRef<EchoMsg>,
        msg: EchoMsg,
        n: &mut u64,
    ) -> Result<(), ActorProcessingErr> {
        *n += 1;
        match msg {
            EchoMsg::Call(reply) => {
                let _ = reply.send(*n);
            }
            EchoMsg::Cast(v, tx) => {
                let _ = tx.send(v + 1);
            }
        }
        Ok(())
    }
}

fn actors(c: &mut Criterion) {
    let rt = rt();
    let (actor, handle) = rt.block_on(Actor::spawn(None, Echo, ())).unwrap();
    let mut g = c.benchmark_group("actor");
    g.bench_function("ractor_call_round_trip", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(ractor::call!(actor, EchoMsg::Call).unwrap()) })
    });
    g.bench_function("ractor_cast_oneshot_round_trip", |b| {
        b.to_async(&rt).iter(|| async {
            let (tx, rx) = oneshot::channel();
            actor.cast(EchoMsg::Cast(1, tx)).unwrap();
            black_box(rx.await.unwrap())
        })
    });
    g.finish();
    actor.stop(None);
    let _ = rt.block_on(handle);
}

// ---- tokens and context -------------------------------------------------------------------------

fn token_counting(c: &mut Criterion) {
    tokens::warm_up();
    let mut g = c.benchmark_group("tokens");
    let long =
        "The quick brown fox jumps over the lazy dog; 敏捷的棕色狐狸跳过了懒狗。 ".repeat(60);
    g.throughput(Throughput::Bytes(CONTENT.len() as u64));
    g.bench_function("count_70b_message", |b| {
        b.iter(|| black_box(tokens::count(black_box(CONTENT))))
    });
    g.throughput(Throughput::Bytes(long.len() as u64));
    g.bench_function("count_4kb_mixed", |b| {
        b.iter(|| black_box(tokens::count(black_box(&long))))
    });
    g.finish();
}

use questech_engine::conversation::{build_context as trim, Past};

fn context(c: &mut Criterion) {
    tokens::warm_up();
    let mut g = c.benchmark_group("context");
    let turn = |i: usize| {
        let role = if i.is_multiple_of(2) {
            "user"
        } else {
            "assistant"
        };
        let content = format!("Turn {i}: {}", "some earlier words of the chat ".repeat(8));
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    };
    let raw: Vec<ChatMessage> = (0..200).map(turn).collect();
    // What loading a conversation does once: count every stored message.
    g.bench_function("load_count_200_messages", |b| {
        b.iter(|| {
            let h: VecDeque<Past> = black_box(&raw)
                .iter()
                .map(|m| Past::text(&m.role, &m.content))
                .collect();
            black_box(h)
        })
    });
    let history: VecDeque<Past> = raw
        .iter()
        .map(|m| Past::text(&m.role, &m.content))
        .collect();
    let new = Past::text("user", CONTENT);
    let sp = "You are a helpful assistant who answers briefly.";
    // Per turn: everything fits (128k window) vs. a small window that cuts most history.
    g.bench_function("trim_200_turns_all_fit", |b| {
        b.iter(|| black_box(trim(&history, Some(sp), &new, 128_000 - 16_384, false)))
    });
    g.bench_function("trim_200_turns_4k_budget", |b| {
        b.iter(|| black_box(trim(&history, Some(sp), &new, 4_096, false)))
    });
    g.finish();
}

// ---- upstream SSE -------------------------------------------------------------------------------

fn sse(c: &mut Criterion) {
    let mut stream = String::new();
    let chunk = |delta: &str| {
        format!(
            "data: {{\"id\":\"chatcmpl-fake-1\",\"object\":\"chat.completion.chunk\",\"created\":1790000000,\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n"
        )
    };
    stream.push_str(&chunk(r#"{"role":"assistant"}"#));
    for w in ["Hello", " from", " fake", " upstream"]
        .iter()
        .cycle()
        .take(16)
    {
        stream.push_str(&chunk(&format!(r#"{{"content":"{w}"}}"#)));
    }
    stream.push_str("data: {\"id\":\"chatcmpl-fake-1\",\"object\":\"chat.completion.chunk\",\"created\":1790000000,\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":16,\"total_tokens\":26}}\n\n");
    stream.push_str("data: [DONE]\n\n");
    let bytes = stream.into_bytes();
    let mut g = c.benchmark_group("sse");
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("parse_16_chunk_stream_whole", |b| {
        b.iter(|| {
            let mut p = SseParser::new();
            let mut out = Vec::new();
            p.feed_into(black_box(&bytes), &mut out);
            black_box(out)
        })
    });
    // As it arrives over TCP: one read per event, cut at arbitrary points.
    g.bench_function("parse_16_chunk_stream_in_200b_reads", |b| {
        b.iter(|| {
            let mut p = SseParser::new();
            let mut out = Vec::new();
            for piece in black_box(&bytes).chunks(200) {
                p.feed_into(piece, &mut out);
            }
            black_box(out)
        })
    });
    g.finish();
}

// ---- storage ------------------------------------------------------------------------------------

/// The group-commit writer on SQLite: one `/v1` call's two writes (reserve, then settle) alone,
/// and 32 calls' writes at once (what 32 concurrent requests do; they share commits).
fn storage(c: &mut Criterion) {
    use questech::storage::{usage, users};
    let rt = rt();
    let (state, dir) = bench_state(&rt);
    let db = state.db.clone();
    let ids: Vec<i64> = (0..32)
        .map(|i| {
            let id = questech::ids::next_id();
            let name = format!("bench{i}");
            rt.block_on(users::create(
                &db,
                users::NewUser {
                    id,
                    username: &name,
                    password_hash: None,
                    nickname: &name,
                    role: "user",
                    phone_enc: None,
                    phone_hash: None,
                    apple_sub: None,
                    signup_bonus: 1_000_000_000,
                },
            ))
            .unwrap();
            id
        })
        .collect();
    // Each call has its own id: the ledger keeps one charge per (user, reason, call).
    let call = |db: questech::storage::Db, user_id: i64| async move {
        let call_id = questech::ids::next_id().to_string();
        let r = usage::reserve(&db, user_id, 10, "bench", &call_id, 60_000)
            .await
            .unwrap()
            .unwrap();
        let s = questech_engine::ports::SettleCall {
            user_id,
            reservation_id: r,
            reserved: 10,
            charge: 1,
            ledger_reason: "api",
            usage_kind: "v1",
            ref_id: call_id,
            model: "m".into(),
            api_key_id: None,
            prompt_tokens: 1,
            completion_tokens: 1,
            latency_ms: 1,
            status: questech_engine::meter::TurnStatus::Complete,
        };
        usage::settle(&db, &s).await.unwrap()
    };
    let mut g = c.benchmark_group("storage");
    g.bench_function("v1_reserve_and_settle_alone", |b| {
        b.to_async(&rt).iter(|| call(db.clone(), ids[0]))
    });
    g.throughput(Throughput::Elements(32));
    g.bench_function("v1_reserve_and_settle_32_at_once", |b| {
        b.to_async(&rt)
            .iter(|| futures::future::join_all(ids.iter().map(|&id| call(db.clone(), id))))
    });
    g.finish();
    drop(state);
    let _ = std::fs::remove_dir_all(dir);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30);
    targets = frames, auth, actors, token_counting, context, sse, storage
}
criterion_main!(benches);
