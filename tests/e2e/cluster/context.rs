//! Issue 13 defect 1: a conversation whose turns arrive through different nodes. Three devices of
//! one user, each a WebSocket through nginx (least connections: one per node), take turns in one
//! conversation, and a last turn goes over REST through nginx. Every turn must send the model
//! every stored message before it — whatever the serving node had cached from earlier turns.

use std::time::Instant;

use reqwest::StatusCode;
use serde_json::{json, Value};

use super::Cluster;
use crate::common::uname;
use crate::wsclient::Ws;

const TURNS: usize = 7;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turns_through_every_node_see_the_whole_history() {
    let Some(c) = Cluster::start().await else {
        return;
    };
    let t = Instant::now();
    let u = c.register(&uname("ctx")).await;
    let conv = c.conversation(&u.access).await;
    let mut devices = Vec::new();
    for _ in 0..c.len() {
        devices.push(Ws::connect_to(&c.lb_url(), &u.access).await);
    }

    let mut served_by = Vec::new();
    let mut prompt_tokens = Vec::new();
    for k in 1..=TURNS {
        let before: Vec<usize> = (0..c.len())
            .map(|i| c.upstream(i).request_count())
            .collect();
        let content = format!("turn {k} of the story");
        let done = if k < TURNS {
            let sender = k % devices.len();
            devices[sender]
                .chat(&conv, &format!("m{k}"), &content)
                .await;
            // Every device, on every node, sees the whole turn.
            let mut done = Value::Null;
            for (d, ws) in devices.iter_mut().enumerate() {
                let frames = ws.turn(&conv).await;
                let last = frames.last().expect("frames").clone();
                assert_eq!(
                    last["type"], "chat.done",
                    "device {d}, turn {k}: {frames:#?}"
                );
                done = last;
            }
            done["message"].clone()
        } else {
            let path = format!("/chat/conversations/{conv}/messages");
            let (s, _, b) = c
                .post(&path, Some(&u.access), Some(json!({ "content": content })))
                .await;
            assert_eq!(s, StatusCode::OK, "REST turn through nginx: {b}");
            b["assistant_message"].clone()
        };
        assert_eq!(done["seq"], 2 * k as i64, "turn {k}: {done}");
        assert_eq!(done["status"], "complete", "turn {k}: {done}");
        prompt_tokens.push(
            done["usage"]["prompt_tokens"]
                .as_i64()
                .expect("prompt_tokens"),
        );
        let node = (0..c.len())
            .filter(|&i| c.upstream(i).request_count() > before[i])
            .collect::<Vec<_>>();
        assert_eq!(
            node.len(),
            1,
            "turn {k} went upstream from exactly one node: {node:?}"
        );
        served_by.push(node[0]);
    }
    eprintln!(
        "cluster context: turns served by nodes {served_by:?}, prompt tokens {prompt_tokens:?}"
    );

    // The case is only meaningful when a node serves a turn after other nodes served the turns
    // since its last one (its cache, if it kept one, is then behind).
    let stale_chance = (1..served_by.len())
        .any(|k| served_by[k] != served_by[k - 1] && served_by[..k - 1].contains(&served_by[k]));
    assert!(
        stale_chance,
        "nginx spread the turns so that no node came back to the conversation: {served_by:?}"
    );
    assert!(
        prompt_tokens.windows(2).all(|w| w[0] < w[1]),
        "prompt tokens grow turn after turn: {prompt_tokens:?}"
    );

    // What each node sent upstream is the stored history up to that turn.
    let (s, _, b) = c
        .get(
            &format!("/chat/conversations/{conv}/messages?limit=200"),
            Some(&u.access),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let stored: Vec<(String, String)> = b["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|m| (str_of(&m["role"]), str_of(&m["content"])))
        .collect();
    assert_eq!(stored.len(), 2 * TURNS, "{b}");
    for (k, &node) in served_by.iter().enumerate() {
        let sent = sent_for(&c, node, &format!("turn {} of the story", k + 1));
        assert_eq!(
            sent,
            stored[..2 * k + 1],
            "turn {} through node {node}: the model sees every stored message before it",
            k + 1
        );
    }

    let sum = c.invariants().await;
    assert_eq!(sum.charged_messages, TURNS as i64, "{sum:?}");
    eprintln!("cluster context: {:?}", t.elapsed());
}

/// The conversation (role, text) of the one request node `node` sent upstream whose last message
/// is `last`; system messages left out.
fn sent_for(c: &Cluster, node: usize, last: &str) -> Vec<(String, String)> {
    let requests: Vec<Vec<(String, String)>> = c
        .upstream(node)
        .requests()
        .iter()
        .map(|r| {
            r.body["messages"]
                .as_array()
                .expect("messages sent upstream")
                .iter()
                .filter(|m| m["role"] != "system")
                .map(|m| (str_of(&m["role"]), text_of(&m["content"])))
                .collect::<Vec<_>>()
        })
        .filter(|msgs| msgs.last().is_some_and(|m| m.1 == last))
        .collect();
    assert_eq!(
        requests.len(),
        1,
        "one request of node {node} ends with {last:?}"
    );
    requests.into_iter().next().expect("one request")
}

fn str_of(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("a string: {v}"))
        .to_owned()
}

/// A message's text, whether `content` is a string or a list of parts.
fn text_of(content: &Value) -> String {
    match content.as_array() {
        Some(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect(),
        None => str_of(content),
    }
}
