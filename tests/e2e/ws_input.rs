//! Hostile WebSocket input (issue 9, defect 5 and 2): frames that are JSON but not objects are
//! refused with an `error` frame and start nothing; frames of any size past 64 KiB close with
//! 1009; a text frame that is not UTF-8 is answered `invalid_request` and closed with 1007.

use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame as RawFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;
use crate::wsclient::*;

both!(ws_frames_are_json_objects, |app| async move {
    let u = app.register(&uname("wsarr")).await;
    let conv = conv_id(&app, &u.access, "echo").await;
    let before = assert_credit_invariants(&app, u.id.parse().unwrap()).await;
    let mut ws = Ws::connect(&app, &u.access).await;
    let arrays = [
        json!(["chat.send", "arr-1", conv, "text", null]).to_string(),
        json!(["ping"]).to_string(),
        json!(["chat.cancel", conv]).to_string(),
        json!(["conversation.sync", conv, 0]).to_string(),
        "\"ping\"".to_owned(),
        "42".to_owned(),
        "null".to_owned(),
        "true".to_owned(),
        "  [\"ping\"]".to_owned(),
    ];
    for text in &arrays {
        ws.send_text(text).await;
        let f = ws.recv().await;
        assert_eq!(f["type"], "error", "{text} → {f}");
        assert_eq!(f["error"]["code"], "invalid_request", "{text} → {f}");
    }
    // Still usable, and nothing above started a turn or cost anything.
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.recv().await, json!({"type": "pong"}));
    assert!(all_messages(&app, &u.access, &conv).await.is_empty());
    let after = assert_credit_invariants(&app, u.id.parse().unwrap()).await;
    assert_eq!(before, after, "no charge");
    // An object with surrounding white space is a frame like any other.
    ws.send_text("  {\"type\":\"ping\"}  ").await;
    assert_eq!(ws.recv().await, json!({"type": "pong"}));
});

both!(ws_any_oversize_frame_closes_1009, |app| async move {
    let u = app.register(&uname("wsbig")).await;
    // Around the transport's own limit, and far past it, text and binary alike.
    for size in [64 * 1024 + 1, 262_144, 262_145, 1 << 20, 4 << 20] {
        for binary in [false, true] {
            let mut ws = Ws::connect(&app, &u.access).await;
            let m = if binary {
                Message::binary(vec![b'x'; size])
            } else {
                Message::text("x".repeat(size))
            };
            ws.send_lenient(m).await;
            let close = ws.expect_close().await;
            let close = close.unwrap_or_else(|| panic!("{size} bytes (binary {binary}): no close"));
            assert_eq!(u16::from(close.code), 1009, "{size} bytes: {close:?}");
        }
    }
    // The server is fine afterwards.
    let mut ws = Ws::connect(&app, &u.access).await;
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.recv().await, json!({"type": "pong"}));
});

both!(ws_text_frame_must_be_utf8, |app| async move {
    let u = app.register(&uname("wsutf")).await;
    let conv = conv_id(&app, &u.access, "echo").await;
    let mut ws = Ws::connect(&app, &u.access).await;
    let mut bad = format!(
        "{{\"type\":\"chat.send\",\"id\":\"u-1\",\"conversation_id\":\"{conv}\",\"content\":\""
    )
    .into_bytes();
    bad.extend_from_slice(b"\xff\xfe\xfd\"}");
    let raw = RawFrame::message(bad, OpCode::Data(Data::Text), true);
    ws.send_lenient(Message::Frame(raw)).await;
    let f = ws.recv().await;
    assert_eq!(f["type"], "error", "{f}");
    assert_eq!(f["error"]["code"], "invalid_request", "{f}");
    let close = ws.expect_close().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1007, "{close:?}");
    assert!(
        all_messages(&app, &u.access, &conv).await.is_empty(),
        "nothing stored"
    );
});
