//! The `async-openai` SDK against `/v1` (issue 11): its typed requests and responses for a
//! tool-call round trip (whole and streamed), vision, JSON-schema output, embeddings, and a
//! Responses chain of three turns continued from a second client, streamed with the SDK's
//! event types, retrieved, listed and deleted. Each answer must deserialize into the SDK's own
//! types, which is what apps written against it need; each turn is billed once.

use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{
    ChatCompletionMessageToolCalls, CreateChatCompletionRequest, FinishReason,
};
use async_openai::types::embeddings::CreateEmbeddingRequest;
use async_openai::types::responses::{CreateResponse, OutputItem, ResponseStreamEvent};
use async_openai::Client;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::api_keys::create_key;
use crate::common::*;
use crate::v1::{assert_books_balance, ledger_rows, node_with_upstream};
use crate::v1_embeddings::{add_embedding_model, EMBED};
use questech_fake_upstream::Behavior;

const MODEL: &str = "gpt-4o-mini";

fn sdk(app: &TestApp, key: &str) -> Client<OpenAIConfig> {
    Client::with_config(
        OpenAIConfig::new()
            .with_api_base(format!("{}/v1", app.base))
            .with_api_key(key),
    )
}

fn chat_req(v: Value) -> CreateChatCompletionRequest {
    serde_json::from_value(v).expect("a request the SDK's types accept")
}

fn resp_req(v: Value) -> CreateResponse {
    serde_json::from_value(v).expect("a request the SDK's types accept")
}

fn weather_tool() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}])
}

both!(async_openai_chat_tools_vision_json, |app| async move {
    let (node, up) = node_with_upstream(&app, Behavior::default(), &[]).await;
    let u = node.register(&uname("aoai")).await;
    let (_, key, _) = create_key(&node, &u.access, "rust").await;
    let client = sdk(&node, &key);
    let question = "Weather in Paris?";

    // A tool-call round trip, whole.
    let r = client
        .chat()
        .create(chat_req(json!({"model": MODEL, "tools": weather_tool(),
            "messages": [{"role": "user", "content": question}]})))
        .await
        .expect("tool call");
    let choice = &r.choices[0];
    assert_eq!(choice.finish_reason, Some(FinishReason::ToolCalls));
    let calls = choice.message.tool_calls.clone().expect("tool calls");
    let ChatCompletionMessageToolCalls::Function(call) = &calls[0] else {
        panic!("a function call: {calls:?}");
    };
    assert_eq!(call.function.name, "get_weather");
    let args: Value = serde_json::from_str(&call.function.arguments).unwrap();
    assert_eq!(args, json!({"query": question}));
    let call_json = serde_json::to_value(&calls[0]).unwrap();
    let r = client
        .chat()
        .create(chat_req(
            json!({"model": MODEL, "tools": weather_tool(), "messages": [
                {"role": "user", "content": question},
                {"role": "assistant", "tool_calls": [call_json]},
                {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
            ]}),
        ))
        .await
        .expect("tool result");
    assert_eq!(
        r.choices[0].message.content.as_deref(),
        Some("The tool said: sunny")
    );
    assert_eq!(r.choices[0].finish_reason, Some(FinishReason::Stop));

    // The same call streamed: the chunks' pieces rebuild it.
    let mut stream = client
        .chat()
        .create_stream(chat_req(json!({"model": MODEL, "tools": weather_tool(),
            "messages": [{"role": "user", "content": question}]})))
        .await
        .expect("stream");
    let (mut name, mut arguments, mut finish) = (String::new(), String::new(), None);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("a chunk the SDK reads");
        for c in chunk.choices {
            for t in c.delta.tool_calls.unwrap_or_default() {
                assert_eq!(t.index, 0);
                if let Some(f) = t.function {
                    name.push_str(f.name.as_deref().unwrap_or(""));
                    arguments.push_str(f.arguments.as_deref().unwrap_or(""));
                }
            }
            finish = c.finish_reason.or(finish);
        }
    }
    assert_eq!(name, "get_weather");
    assert_eq!(
        serde_json::from_str::<Value>(&arguments).unwrap(),
        json!({"query": question})
    );
    assert_eq!(finish, Some(FinishReason::ToolCalls));

    // Vision: the image part reaches the model as sent.
    let image = json!({"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}});
    let r = client
        .chat()
        .create(chat_req(
            json!({"model": MODEL, "messages": [{"role": "user",
            "content": [{"type": "text", "text": "What is this?"}, image]}]}),
        ))
        .await
        .expect("vision");
    assert!(r.usage.expect("usage").prompt_tokens > 85);
    let sent = up.requests().last().unwrap().body.clone();
    assert_eq!(sent["messages"][0]["content"][1], image, "{sent}");

    // Structured output.
    let r = client
        .chat()
        .create(chat_req(json!({"model": MODEL, "messages": [{"role": "user", "content": question}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "weather", "strict": true,
                "schema": {"type": "object", "properties": {"city": {"type": "string"}}}}}})))
        .await
        .expect("json schema");
    let doc: Value =
        serde_json::from_str(r.choices[0].message.content.as_deref().unwrap()).unwrap();
    assert_eq!(doc["city"], "fake");

    // A refusal comes back as the SDK's API error, in the spec's shape.
    let err = client
        .chat()
        .create(chat_req(
            json!({"model": MODEL, "tools": [{"type": "function",
            "function": {"name": "bad name!"}}], "messages": [{"role": "user", "content": "x"}]}),
        ))
        .await
        .expect_err("a bad tool name is refused");
    let async_openai::error::OpenAIError::ApiError(e) = err else {
        panic!("an API error: {err:?}");
    };
    assert!(e.message.contains("tools[0].function.name"), "{e:?}");

    assert_eq!(ledger_rows(&node, u.uid(), "api").await.len(), 5);
    assert_books_balance(&node, u.uid()).await;
});

both!(async_openai_embeddings_and_responses, |app| async move {
    let (node, up) = node_with_upstream(&app, Behavior::default(), &[]).await;
    add_embedding_model(&node, 2).await;
    let u = node.register(&uname("aoresp")).await;
    let (_, key, _) = create_key(&node, &u.access, "phone").await;
    let (_, key2, _) = create_key(&node, &u.access, "laptop").await;
    let (phone, laptop) = (sdk(&node, &key), sdk(&node, &key2));

    // Embeddings, typed.
    let req: CreateEmbeddingRequest =
        serde_json::from_value(json!({"model": EMBED, "input": ["one two", "three four five"]}))
            .unwrap();
    let e = phone.embeddings().create(req).await.expect("embeddings");
    assert_eq!(e.data.len(), 2);
    assert_eq!(e.data[1].index, 1);
    assert!(!e.data[0].embedding.is_empty());
    assert_eq!(e.usage.prompt_tokens, 5);
    assert_eq!(
        ledger_rows(&node, u.uid(), "api").await.last().unwrap().0,
        -7
    );

    // A Responses chain of three turns; the third from a second client, streamed.
    let r1 = phone
        .responses()
        .create(resp_req(json!({"model": MODEL, "input": "First question",
            "instructions": "Be brief"})))
        .await
        .expect("turn 1");
    assert_eq!(
        r1.output_text().as_deref(),
        Some("Hello from fake upstream")
    );
    let r2 = phone
        .responses()
        .create(resp_req(json!({"model": MODEL, "input": "Second question",
            "previous_response_id": r1.id})))
        .await
        .expect("turn 2");
    assert_eq!(r2.previous_response_id.as_deref(), Some(r1.id.as_str()));
    // The instructions were turn 1's only; the stored turns are the context.
    let sent = up.requests().last().unwrap().body.clone();
    assert_eq!(sent["messages"].as_array().unwrap().len(), 3, "{sent}");

    let mut stream = laptop
        .responses()
        .create_stream(resp_req(json!({"model": MODEL, "input": "Third question",
            "previous_response_id": r2.id, "stream": true})))
        .await
        .expect("turn 3 streamed");
    let (mut text, mut done, mut first) = (String::new(), None, None);
    while let Some(ev) = stream.next().await {
        match ev.expect("an event the SDK reads") {
            ResponseStreamEvent::ResponseCreated(c) => first = Some(c.sequence_number),
            ResponseStreamEvent::ResponseOutputTextDelta(d) => text.push_str(&d.delta),
            ResponseStreamEvent::ResponseCompleted(c) => done = Some(c.response),
            _ => {}
        }
    }
    assert_eq!(first, Some(0));
    assert_eq!(text, "Hello from fake upstream");
    let r3 = done.expect("response.completed");
    assert_eq!(r3.output_text(), Some(text));
    let sent = up.requests().last().unwrap().body.clone();
    assert_eq!(sent["messages"].as_array().unwrap().len(), 5, "{sent}");

    // Retrieve and list from either client; a tool round trip continues the chain.
    let got = phone.responses().retrieve(&r3.id).await.expect("retrieve");
    assert_eq!(got.id, r3.id);
    let items = laptop
        .responses()
        .list_input_items(&r3.id)
        .await
        .expect("input items");
    assert_eq!(items.data.len(), 1);
    let tools = json!([{"type": "function", "name": "get_weather",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}]);
    let r4 = phone
        .responses()
        .create(resp_req(
            json!({"model": MODEL, "input": "Weather?", "tools": tools,
            "previous_response_id": r3.id}),
        ))
        .await
        .expect("turn 4");
    let call = r4.output.iter().find_map(|o| match o {
        OutputItem::FunctionCall(c) => Some(c.clone()),
        _ => None,
    });
    let call = call.expect("a function call");
    assert_eq!(call.name, "get_weather");
    let r5 = laptop
        .responses()
        .create(resp_req(json!({"model": MODEL, "tools": tools, "previous_response_id": r4.id,
            "input": [{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}]})))
        .await
        .expect("turn 5");
    assert_eq!(r5.output_text().as_deref(), Some("The tool said: sunny"));

    assert_eq!(ledger_rows(&node, u.uid(), "chat").await.len(), 5);
    assert_books_balance(&node, u.uid()).await;
    let d = phone.responses().delete(&r5.id).await.expect("delete");
    assert!(d.deleted);
    let err = laptop.responses().retrieve(&r1.id).await;
    assert!(err.is_err(), "the chain is gone");
});
