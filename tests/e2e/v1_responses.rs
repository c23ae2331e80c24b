//! The stateful Responses API (SPEC §9, issue 11): a chain of responses is one conversation of
//! the user's, its context the stored messages (the client sends only the new input), seq
//! gap-free, continued from a second client; function tools round trip; the stream's events;
//! GET, input items, DELETE; another user's id is 404; each turn billed once.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::api_keys::create_key;
use crate::common::*;
use crate::v1::{assert_books_balance, ledger_rows, node_with_upstream};
use crate::wsclient::{all_messages, assert_gap_free};
use questech_fake_upstream::Behavior;

const MODEL: &str = "gpt-4o-mini";

async fn create(app: &TestApp, key: &str, body: Value) -> (StatusCode, Value) {
    let (s, _, b) = app.post("/v1/responses", Some(key), Some(body)).await;
    (s, b)
}

/// A streamed request's events: each has an `event:` line and a `data:` line that agree.
async fn post_stream(app: &TestApp, key: &str, body: Value) -> (StatusCode, Vec<Value>) {
    let res = app
        .client
        .post(app.url("/v1/responses"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = res.status();
    let text = res.text().await.unwrap();
    let events = text
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let name = e
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .expect("event line");
            let data = e
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .expect("data line");
            let v: Value = serde_json::from_str(data).unwrap();
            assert_eq!(v["type"], name, "{e}");
            v
        })
        .collect();
    (status, events)
}

fn text_of(r: &Value) -> String {
    r["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == "message")
        .flat_map(|i| i["content"].as_array().unwrap().iter())
        .map(|c| c["text"].as_str().unwrap().to_owned())
        .collect()
}

both!(a_chain_is_a_conversation, |app| async move {
    let (node, up) = node_with_upstream(&app, Behavior::default(), &[]).await;
    let u = node.register(&uname("resp")).await;
    let (_, key, _) = create_key(&node, &u.access, "phone").await;
    let (_, key2, _) = create_key(&node, &u.access, "laptop").await;

    // Turn 1, with instructions.
    let (s, r1) = create(
        &node,
        &key,
        json!({"model": MODEL, "input": "First question",
        "instructions": "Be brief", "metadata": {"topic": "test"}}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{r1}");
    assert_eq!(r1["object"], "response");
    assert_eq!(r1["status"], "completed");
    assert_eq!(r1["model"], MODEL);
    assert_eq!(text_of(&r1), "Hello from fake upstream");
    assert_eq!(r1["metadata"], json!({"topic": "test"}));
    assert!(r1["usage"]["input_tokens"].as_i64().unwrap() > 0, "{r1}");
    let id1 = r1["id"].as_str().unwrap().to_owned();
    assert!(id1.starts_with("resp_"));
    let sent = up.requests().last().unwrap().body.clone();
    assert_eq!(
        sent["messages"][0],
        json!({"role": "system", "content": "Be brief"}),
        "{sent}"
    );

    // Turn 2 sends only its input: the context is what was stored.
    let (s, r2) = create(
        &node,
        &key,
        json!({"model": MODEL, "input": "Second question",
        "previous_response_id": id1}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{r2}");
    assert_eq!(r2["previous_response_id"], id1.as_str());
    let sent = up.requests().last().unwrap().body.clone();
    let msgs = sent["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 3, "{sent}");
    assert_eq!(msgs[1]["content"], "Hello from fake upstream");
    let id2 = r2["id"].as_str().unwrap().to_owned();

    // Turn 3 from a second client; an older response of the chain cannot be continued.
    let (s, b) = create(
        &node,
        &key2,
        json!({"model": MODEL, "input": "x", "previous_response_id": id1}),
    )
    .await;
    assert_invalid(s, &b, "previous_response_id");
    let (s, r3) = create(&node, &key2, json!({"model": MODEL, "input": [{"role": "user",
        "content": [{"type": "input_text", "text": "Third question"}]}], "previous_response_id": id2})).await;
    assert_eq!(s, StatusCode::OK, "{r3}");
    let sent = up.requests().last().unwrap().body.clone();
    assert_eq!(sent["messages"].as_array().unwrap().len(), 5, "{sent}");
    let id3 = r3["id"].as_str().unwrap().to_owned();

    // One conversation, gap-free; GET and input items; another user sees nothing.
    let (_, _, convs) = node.get("/chat/conversations", Some(&u.access)).await;
    let items = convs["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{convs}");
    let conv = items[0]["id"].as_str().unwrap().to_owned();
    let stored = all_messages(&node, &u.access, &conv).await;
    assert_eq!(stored.len(), 6);
    assert_gap_free(&stored);
    let (s, _, got) = node.get(&format!("/v1/responses/{id3}"), Some(&key)).await;
    assert_eq!(s, StatusCode::OK, "{got}");
    assert_eq!(got["id"], id3.as_str());
    assert_eq!(text_of(&got), text_of(&r3));
    let (s, _, items) = node
        .get(&format!("/v1/responses/{id3}/input_items"), Some(&key))
        .await;
    assert_eq!(s, StatusCode::OK, "{items}");
    assert_eq!(
        items["data"][0]["content"][0]["text"], "Third question",
        "{items}"
    );
    let other = node.register(&uname("respother")).await;
    let (s, _, b) = node
        .get(&format!("/v1/responses/{id3}"), Some(&other.access))
        .await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");
    let (s, b) = create(
        &node,
        &other.access,
        json!({"model": MODEL, "input": "x", "previous_response_id": id3}),
    )
    .await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");

    // Billed once per turn.
    assert_eq!(ledger_rows(&node, u.uid(), "chat").await.len(), 3);
    assert_books_balance(&node, u.uid()).await;

    // DELETE ends the chain.
    let (s, _, b) = node
        .delete(&format!("/v1/responses/{id3}"), Some(&key))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["deleted"], true);
    let (s, _, _) = node.get(&format!("/v1/responses/{id1}"), Some(&key)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
});

both!(tools_and_streams, |app| async move {
    let (node, up) = node_with_upstream(&app, Behavior::default(), &[]).await;
    let u = node.register(&uname("resptool")).await;
    let (_, key, _) = create_key(&node, &u.access, "tools").await;
    let tools = json!([{"type": "function", "name": "get_weather", "description": "Weather",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}]);

    // The model calls the function; its output goes back as the next input.
    let (s, r1) = create(
        &node,
        &key,
        json!({"model": MODEL, "input": "Weather in Paris?", "tools": tools}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{r1}");
    let call = r1["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"] == "function_call")
        .cloned();
    let call = call.unwrap_or_else(|| panic!("a function call: {r1}"));
    assert_eq!(call["name"], "get_weather");
    let sent = up.requests().last().unwrap().body.clone();
    assert_eq!(
        sent["tools"][0]["function"]["name"], "get_weather",
        "{sent}"
    );
    let (s, r2) = create(&node, &key, json!({"model": MODEL, "tools": tools,
        "previous_response_id": r1["id"],
        "input": [{"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"}]})).await;
    assert_eq!(s, StatusCode::OK, "{r2}");
    assert_eq!(text_of(&r2), "The tool said: sunny");
    let sent = up.requests().last().unwrap().body.clone();
    let msgs = sent["messages"].as_array().unwrap();
    assert_eq!(msgs[1]["tool_calls"][0]["id"], call["call_id"], "{sent}");
    assert_eq!(msgs[2]["role"], "tool");

    // Streamed: the event names in order, the deltas add up to the text.
    let (s, events) = post_stream(
        &node,
        &key,
        json!({"model": MODEL, "input": "Stream please", "stream": true}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"response.created"));
    assert_eq!(kinds.last(), Some(&"response.completed"), "{kinds:?}");
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["sequence_number"], i, "{e}");
    }
    let text: String = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(text, "Hello from fake upstream");
    assert_eq!(text_of(&events.last().unwrap()["response"]), text);

    // A streamed function call.
    let (_, events) = post_stream(
        &node,
        &key,
        json!({"model": MODEL, "input": "Weather?", "tools": tools, "stream": true}),
    )
    .await;
    let args: String = events
        .iter()
        .filter(|e| e["type"] == "response.function_call_arguments.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&args).unwrap(),
        json!({"query": "Weather?"})
    );

    // Refusals that store nothing: a bad item, a non-function tool.
    let before = ledger_rows(&node, u.uid(), "chat").await.len();
    let (s, b) = create(
        &node,
        &key,
        json!({"model": MODEL, "input": [{"type": "item_reference", "id": "x"}]}),
    )
    .await;
    assert_invalid(s, &b, "input[0]");
    let (s, b) = create(
        &node,
        &key,
        json!({"model": MODEL, "input": "x", "tools": [{"type": "web_search"}]}),
    )
    .await;
    assert_invalid(s, &b, "tools[0].type");
    assert_eq!(ledger_rows(&node, u.uid(), "chat").await.len(), before);
    assert_books_balance(&node, u.uid()).await;
});
