//! `/v1/chat/completions` beyond text (SPEC §9, issue 11): function tools streamed and whole,
//! the tool-result round trip, image parts, structured output, forwarded sampling fields, and
//! model capabilities (admin-set, listed, enforced with a 400 that names the field and changes
//! nothing). Against the fake upstream, whose tool calls, JSON and image counts are scripted.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::api_keys::create_key;
use crate::common::*;
use crate::v1::{assert_books_balance, ledger_rows, node_with_upstream, post_stream};
use questech_fake_upstream::Behavior;

const MODEL: &str = "gpt-4o-mini";

fn weather_tool() -> Value {
    json!([{"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}
    }}])
}

async fn post(app: &TestApp, key: &str, body: Value) -> (StatusCode, Value) {
    let (s, _, b) = app
        .post("/v1/chat/completions", Some(key), Some(body))
        .await;
    (s, b)
}

/// The entry of [`MODEL`] in a model list (`{"data": [...]}`).
fn model_entry(list: &Value) -> Value {
    let data = list["data"].as_array().expect("a model list");
    data.iter()
        .find(|x| x["id"] == MODEL)
        .cloned()
        .expect("the model is listed")
}

/// A one-line request with `fields` set on it is refused with 400 naming `field`.
async fn refused(app: &TestApp, key: &str, fields: Value, field: &str) {
    let mut req = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]});
    for (k, v) in fields.as_object().unwrap() {
        req[k] = v.clone();
    }
    let (s, b) = post(app, key, req).await;
    assert_invalid(s, &b, field);
}

both!(tool_calls_images_and_json, |app| async move {
    let (node, up) = node_with_upstream(&app, Behavior::default(), &[]).await;
    let name = uname("tools");
    let u = node.register(&name).await;
    let (_, key, _) = create_key(&node, &u.access, "tools").await;
    let question = "Weather in Paris?";

    // A tool is offered: the model calls it; the sampling fields and an unknown one go upstream.
    let (s, b) = post(&node, &key, json!({
        "model": MODEL, "tools": weather_tool(), "tool_choice": "auto", "parallel_tool_calls": false,
        "seed": 7, "presence_penalty": 0.5, "user": "end-user-1", "top_k": 40,
        "messages": [{"role": "user", "content": question}],
    })).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let choice = &b["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{b}");
    assert_eq!(choice["message"]["content"], Value::Null, "{b}");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"query": question}));
    let sent = up.requests().last().unwrap().body.clone();
    for (k, v) in [
        ("tool_choice", json!("auto")),
        ("parallel_tool_calls", json!(false)),
        ("seed", json!(7)),
        ("presence_penalty", json!(0.5)),
        ("user", json!("end-user-1")),
        ("top_k", json!(40)),
        ("tools", weather_tool()),
    ] {
        assert_eq!(sent[k], v, "{k} forwarded: {sent}");
    }
    assert!(
        b["usage"]["completion_tokens"].as_u64().unwrap() > 0,
        "a tool call is completion: {b}"
    );

    // The result goes back as a `tool` message; the model answers in words.
    let call_id = call["id"].as_str().unwrap().to_owned();
    let (s, b2) = post(
        &node,
        &key,
        json!({
            "model": MODEL, "tools": weather_tool(),
            "messages": [
                {"role": "user", "content": question},
                {"role": "assistant", "content": null, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": call_id, "content": "sunny, 21 C"},
            ],
        }),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b2}");
    assert_eq!(
        b2["choices"][0]["message"]["content"], "The tool said: sunny, 21 C",
        "{b2}"
    );
    assert_eq!(b2["choices"][0]["finish_reason"], "stop");
    let sent = up.requests().last().unwrap().body.clone();
    assert_eq!(
        sent["messages"][1]["tool_calls"][0]["id"],
        json!(call_id),
        "{sent}"
    );
    assert_eq!(
        sent["messages"][2],
        json!({"role": "tool", "tool_call_id": call_id, "content": "sunny, 21 C"})
    );

    // Streamed: the pieces come in order with their index and rebuild the same call.
    let (s, _, datas) = post_stream(
        &node,
        "/v1/chat/completions",
        &key,
        json!({
            "model": MODEL, "stream": true, "stream_options": {"include_usage": true},
            "tools": weather_tool(), "messages": [{"role": "user", "content": question}],
        }),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (mut id, mut fname, mut arguments, mut finish) = (None, String::new(), String::new(), None);
    for d in datas.iter().filter(|d| *d != "[DONE]") {
        let c: Value = serde_json::from_str(d).unwrap();
        let Some(choice) = c["choices"].get(0) else {
            continue;
        };
        if let Some(calls) = choice["delta"]["tool_calls"].as_array() {
            assert_eq!(calls[0]["index"], 0, "{d}");
            if let Some(i) = calls[0]["id"].as_str() {
                id = Some(i.to_owned());
            }
            fname.push_str(calls[0]["function"]["name"].as_str().unwrap_or(""));
            arguments.push_str(calls[0]["function"]["arguments"].as_str().unwrap_or(""));
        }
        if !choice["finish_reason"].is_null() {
            finish = Some(choice["finish_reason"].clone());
        }
    }
    assert!(id.is_some_and(|i| i.starts_with("call_")), "{datas:?}");
    assert_eq!(fname, "get_weather");
    assert_eq!(
        serde_json::from_str::<Value>(&arguments).unwrap(),
        json!({"query": question})
    );
    assert_eq!(finish, Some(json!("tool_calls")));

    // An image part reaches the vision model as sent; the provider's usage counts it.
    let image = json!({"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}});
    let (s, b) = post(
        &node,
        &key,
        json!({"model": MODEL, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "What is this?"}, image]}]}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["usage"]["prompt_tokens"], 10 + 85, "{b}");
    let sent = up.requests().last().unwrap().body.clone();
    assert_eq!(sent["messages"][0]["content"][1], image, "{sent}");
    let rows = ledger_rows(&node, u.uid(), "api").await;
    let expected = -(95 + b["usage"]["completion_tokens"].as_i64().unwrap() + 5);
    assert_eq!(
        rows.last().unwrap().0,
        expected,
        "billed as the provider counted: {rows:?}"
    );

    // Structured output: the schema goes upstream, the answer is JSON of that shape.
    let format = json!({"type": "json_schema", "json_schema": {"name": "weather", "strict": true, "schema": {
        "type": "object", "properties": {"city": {"type": "string"}, "temp": {"type": "number"}}}}});
    let (s, b) = post(
        &node,
        &key,
        json!({"model": MODEL, "response_format": format,
        "messages": [{"role": "user", "content": question}]}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let doc: Value =
        serde_json::from_str(b["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert_eq!(doc, json!({"city": "fake", "temp": 1.5}));
    assert_eq!(
        up.requests().last().unwrap().body["response_format"],
        format
    );

    // Log probabilities are relayed, whole and streamed.
    let (s, b) = post(
        &node,
        &key,
        json!({"model": MODEL, "logprobs": true, "top_logprobs": 2,
        "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let lp = b["choices"][0]["logprobs"]["content"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let tokens: String = lp.iter().map(|t| t["token"].as_str().unwrap()).collect();
    assert_eq!(
        tokens,
        b["choices"][0]["message"]["content"].as_str().unwrap(),
        "{b}"
    );
    assert_eq!(up.requests().last().unwrap().body["top_logprobs"], 2);
    let (_, _, datas) = post_stream(
        &node,
        "/v1/chat/completions",
        &key,
        json!({"model": MODEL,
        "stream": true, "logprobs": true, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    let streamed: Vec<Value> = datas
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array().cloned())
        .flatten()
        .collect();
    assert_eq!(streamed, lp, "the same log probabilities streamed");

    // Bad shapes are 400 naming the field, before anything goes upstream.
    let before = up.request_count();
    for (body, field) in [
        (
            json!({"tools": [{"type": "function", "function": {"name": "bad name"}}]}),
            "tools[0].function.name",
        ),
        (json!({"tool_choice": "sometimes"}), "tool_choice"),
        (
            json!({"response_format": {"type": "yaml"}}),
            "response_format.type",
        ),
        (json!({"logprobs": "yes"}), "logprobs"),
        (json!({"top_logprobs": 21}), "top_logprobs"),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}),
            "messages[0].content[0].image_url.url",
        ),
        (
            json!({"messages": [{"role": "tool", "content": "x"}]}),
            "messages[0].tool_call_id",
        ),
    ] {
        refused(&node, &key, body, field).await;
    }
    assert_eq!(up.request_count(), before);

    // Capabilities are the admin's; a model without one refuses what needs it.
    let boss = uname("capboss");
    node.register(&boss).await;
    let admin = node.make_admin(&boss).await;
    let (s, _, m) = node
        .patch(
            &format!("/admin/models/{MODEL}"),
            Some(&admin.access),
            Some(json!({"capabilities": {"vision": false, "tools": false, "json": false}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{m}");
    assert_eq!(
        m["capabilities"],
        json!({"vision": false, "tools": false, "json": false, "embeddings": false})
    );
    let (_, _, listed) = node.get("/v1/models", Some(&key)).await;
    let entry = model_entry(&listed);
    assert_eq!(entry["capabilities"]["tools"], false, "{entry}");
    let balance = assert_books_balance(&node, u.uid()).await;
    for (extra, field) in [
        (json!({"tools": weather_tool()}), "tools"),
        (
            json!({"response_format": {"type": "json_object"}}),
            "response_format",
        ),
        (
            json!({"messages": [{"role": "user", "content": [image]}]}),
            "messages[0].content[0]",
        ),
    ] {
        refused(&node, &key, extra, field).await;
    }
    assert_eq!(up.request_count(), before);
    assert_eq!(
        assert_books_balance(&node, u.uid()).await,
        balance,
        "refusals charge nothing"
    );
    let (_, _, public) = node.get("/config/models", None).await;
    let entry = model_entry(&public);
    assert_eq!(
        entry["capabilities"],
        json!({"vision": false, "tools": false, "json": false, "embeddings": false})
    );
});
