//! OpenAI's response objects for one call: the `chat.completion`, and the SSE frames of a
//! stream (`chat.completion.chunk`s, the usage chunk, `[DONE]`).

use std::collections::VecDeque;

use axum::body::Bytes;
use serde_json::{json, Value};

use super::call::Relay;
use crate::error::Error;
use crate::http::sse::data as sse_data;
use questech_engine::meter::{Bill, CallEvent, Called};

/// Builds OpenAI's objects for one call.
pub struct Chunks {
    pub id: String,
    pub created: i64,
    pub model: String,
    pub include_usage: bool,
}

fn usage_json(b: &Bill) -> Value {
    json!({
        "prompt_tokens": b.prompt_tokens,
        "completion_tokens": b.completion_tokens,
        "total_tokens": b.prompt_tokens + b.completion_tokens,
    })
}

impl Chunks {
    pub fn chunk(&self, delta: Value, finish_reason: Value) -> Bytes {
        self.chunk_with(delta, finish_reason, Value::Null)
    }

    fn chunk_with(&self, delta: Value, finish_reason: Value, logprobs: Value) -> Bytes {
        let mut c = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}],
        });
        if self.include_usage {
            c["usage"] = Value::Null;
        }
        sse_data(&c.to_string())
    }

    pub fn completion(&self, called: &Called) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": message(called),
                "logprobs": if called.logprobs.is_empty() {
                    Value::Null
                } else {
                    json!({"content": called.logprobs, "refusal": null})
                },
                "finish_reason": called.bill.finish_reason,
            }],
            "usage": usage_json(&called.bill),
        })
    }

    /// Appends the SSE frames of one relay; returns whether the stream is finished.
    pub fn frames(&self, relay: Relay, out: &mut VecDeque<Bytes>) -> bool {
        let called = match relay {
            Relay::Event(CallEvent::Submitted(_)) => return false,
            Relay::Event(CallEvent::Delta(d)) => {
                out.push_back(self.chunk(json!({"content": d}), Value::Null));
                return false;
            }
            Relay::Event(CallEvent::Logprobs(l)) => {
                let c = self.chunk_with(json!({}), Value::Null, json!({"content": l}));
                out.push_back(c);
                return false;
            }
            Relay::Event(CallEvent::ToolCall(t)) => {
                let mut call = json!({"index": t.index, "function": {"arguments": t.arguments}});
                if let Some(id) = t.id {
                    call["id"] = json!(id);
                    call["type"] = json!("function");
                }
                if let Some(name) = t.name {
                    call["function"]["name"] = json!(name);
                }
                out.push_back(self.chunk(json!({"tool_calls": [call]}), Value::Null));
                return false;
            }
            Relay::End(r) => *r,
        };
        match called {
            Ok(Called {
                bill: Bill { error: None, .. },
                ..
            }) => {}
            Ok(Called {
                bill: Bill { error: Some(e), .. },
                ..
            })
            | Err(e) => {
                out.push_back(sse_data(&Error::from(e).body_json().to_string()));
                out.push_back(sse_data("[DONE]"));
                return true;
            }
        }
        if let Ok(called) = &called {
            out.push_back(self.chunk(json!({}), json!(called.bill.finish_reason)));
            if self.include_usage {
                let u = json!({
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "choices": [],
                    "usage": usage_json(&called.bill),
                });
                out.push_back(sse_data(&u.to_string()));
            }
        }
        out.push_back(sse_data("[DONE]"));
        true
    }
}

/// The answer's `message`: its text (null when it only calls tools) and its tool calls.
fn message(called: &Called) -> Value {
    let mut m = json!({"role": "assistant", "content": called.text, "refusal": null});
    if !called.tool_calls.is_empty() {
        if called.text.is_empty() {
            m["content"] = Value::Null;
        }
        let calls: Vec<Value> = called.tool_calls.iter().map(|t| t.to_json()).collect();
        m["tool_calls"] = Value::Array(calls);
    }
    m
}
