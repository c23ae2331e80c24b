//! The `echo` model's embeddings (development): for each input a unit vector of `dimensions`
//! numbers (8 by default) that depends only on the input, so equal texts embed equally. Encoded
//! as floats, or as `base64` of little-endian `f32`s as OpenAI does. Usage: the inputs' tokens.

use std::hash::{Hash, Hasher};

use base64::Engine as _;
use questech_engine::llm::{StreamEvent, Usage};
use questech_engine::tokens;
use serde_json::{json, Map, Value};

/// The vector of one input.
fn vector(input: &Value, dims: usize) -> Vec<f32> {
    let key = input.to_string();
    let mut v: Vec<f32> = (0..dims)
        .map(|i| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (&key, i).hash(&mut h);
            (h.finish() % 2001) as f32 / 1000.0 - 1.0
        })
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// The events of an embeddings answer to the request's fields (`input`, `dimensions`,
/// `encoding_format`).
pub fn events(fields: &Map<String, Value>) -> Vec<StreamEvent> {
    let input = fields.get("input").cloned().unwrap_or(Value::Null);
    let inputs: Vec<Value> = match input {
        // An array of strings or of token arrays is many inputs; one token array is one.
        Value::Array(a) if a.iter().all(|x| x.is_string() || x.is_array()) => a,
        other => vec![other],
    };
    let dims = fields
        .get("dimensions")
        .and_then(Value::as_f64)
        .map_or(8, |d| d.clamp(1.0, 65_536.0) as usize);
    let base64 = fields.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let mut prompt_tokens = 0;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            prompt_tokens += match input {
                Value::String(s) => tokens::count(s),
                Value::Array(t) => t.len() as u64,
                _ => 0,
            };
            let v = vector(input, dims);
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    vec![
        StreamEvent::Embeddings(Value::Array(data)),
        StreamEvent::Usage(Usage {
            prompt_tokens,
            completion_tokens: 0,
        }),
        StreamEvent::Done(None),
    ]
}
