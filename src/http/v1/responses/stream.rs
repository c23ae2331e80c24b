//! A Responses turn as a stream of the Responses API's events (`response.created`,
//! `response.output_text.delta`, `response.function_call_arguments.delta`,
//! `response.completed`, ...), each `event:` named and numbered by `sequence_number`, made from
//! the turn's frames as the conversation actor sends them.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::body::Bytes;
use axum::response::Response;
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use super::object;
use crate::http::sse;
use questech_engine::events::Frame;

/// What the stream has told so far.
struct Writer {
    seq: u64,
    /// The reply's id (its output items are named after it).
    id: i64,
    text: String,
    text_open: bool,
    out: VecDeque<Bytes>,
}

impl Writer {
    fn event(&mut self, kind: &str, mut v: Value) {
        v["type"] = json!(kind);
        v["sequence_number"] = json!(self.seq);
        self.seq += 1;
        self.out
            .push_back(Bytes::from(format!("event: {kind}\ndata: {v}\n\n")));
    }

    fn item_id(&self) -> String {
        format!("msg_{}", self.id)
    }

    fn delta(&mut self, delta: &str) {
        if !self.text_open {
            self.text_open = true;
            let item = object::message_item(self.id, "", "in_progress");
            let mut item = item;
            item["content"] = json!([]);
            self.event(
                "response.output_item.added",
                json!({"output_index": 0, "item": item}),
            );
            let part =
                json!({"type": "output_text", "text": "", "annotations": [], "logprobs": []});
            let id = self.item_id();
            self.event(
                "response.content_part.added",
                json!({"item_id": id, "output_index": 0, "content_index": 0, "part": part}),
            );
        }
        self.text.push_str(delta);
        let id = self.item_id();
        self.event(
            "response.output_text.delta",
            json!({"item_id": id, "output_index": 0,
            "content_index": 0, "delta": delta, "logprobs": []}),
        );
    }

    /// The end of a reply: the text item closed, each function call told, then `completed`.
    fn done(&mut self, reply: &questech_engine::events::StoredMessage) {
        let mut index = 0;
        if self.text_open {
            let id = self.item_id();
            let text = self.text.clone();
            self.event(
                "response.output_text.done",
                json!({"item_id": id, "output_index": 0,
                "content_index": 0, "text": text, "logprobs": []}),
            );
            let part =
                json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
            self.event(
                "response.content_part.done",
                json!({"item_id": id, "output_index": 0,
                "content_index": 0, "part": part}),
            );
            let item = object::message_item(self.id, &text, "completed");
            self.event(
                "response.output_item.done",
                json!({"output_index": 0, "item": item}),
            );
            index = 1;
        }
        for call in object::function_calls(reply) {
            let mut open = call.clone();
            open["arguments"] = json!("");
            open["status"] = json!("in_progress");
            self.event(
                "response.output_item.added",
                json!({"output_index": index, "item": open}),
            );
            let args = call["arguments"].clone();
            let item_id = call["id"].clone();
            self.event(
                "response.function_call_arguments.delta",
                json!({"item_id": item_id, "output_index": index, "delta": args}),
            );
            self.event(
                "response.function_call_arguments.done",
                json!({"item_id": item_id, "output_index": index, "arguments": args}),
            );
            self.event(
                "response.output_item.done",
                json!({"output_index": index, "item": call}),
            );
            index += 1;
        }
        let r = object::response(reply);
        let kind = match r["status"].as_str() {
            Some("completed") => "response.completed",
            Some("failed") => "response.failed",
            _ => "response.incomplete",
        };
        self.event(kind, json!({"response": r}));
    }

    /// A turn that ended in an error: `response.failed` with the spec's code and message.
    fn failed(&mut self, shell: &Value, code: &str, message: &str) {
        let mut r = shell.clone();
        r["status"] = json!("failed");
        r["error"] = json!({"code": code, "message": message});
        self.event("response.failed", json!({"response": r}));
    }
}

/// The stream of a started turn: `shell` is the response as created (no output yet).
pub fn respond(id: i64, shell: Value, updates: UnboundedReceiver<Frame>) -> Response {
    let mut w = Writer {
        seq: 0,
        id,
        text: String::new(),
        text_open: false,
        out: VecDeque::new(),
    };
    w.event("response.created", json!({"response": shell}));
    w.event("response.in_progress", json!({"response": shell}));
    let body = futures::stream::unfold(
        (updates, w, shell, false),
        |(mut rx, mut w, shell, mut ended)| async move {
            loop {
                if let Some(b) = w.out.pop_front() {
                    return Some((Ok::<Bytes, Infallible>(b), (rx, w, shell, ended)));
                }
                if ended {
                    return None;
                }
                match rx.recv().await {
                    Some(Frame::Delta { delta, .. }) => w.delta(&delta),
                    Some(Frame::Done { message, .. }) => {
                        w.done(&message);
                        ended = true;
                    }
                    Some(Frame::ChatError { error, .. }) => {
                        w.failed(&shell, &error.code, &error.message);
                        ended = true;
                    }
                    Some(_) => {}
                    None => {
                        w.failed(&shell, "internal_error", "the turn ended without an answer");
                        ended = true;
                    }
                }
            }
        },
    );
    sse::response(body)
}
