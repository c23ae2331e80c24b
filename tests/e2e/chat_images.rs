//! Images on stateful chat messages (SPEC §7, issue 11): the sender's own uploads or https URLs,
//! over REST and the WebSocket; stored with the message, returned in history and sync, part of
//! the context of later turns; an upload reaches the model inline as a `data:` URL. Refusals
//! (someone else's upload, a malformed URL, a model without vision) store and charge nothing.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::*;
use crate::upload::{png, upload};
use crate::v1::node_with_upstream;
use crate::wsclient::{all_messages, conv_id, Ws};
use questech_fake_upstream::Behavior;

/// The image parts of the wire message at `i` of the upstream request `body`.
fn image_urls(body: &Value, i: usize) -> Vec<String> {
    body["messages"][i]["content"]
        .as_array()
        .map(|parts| {
            parts
                .iter()
                .filter(|p| p["type"] == "image_url")
                .map(|p| p["image_url"]["url"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

both!(images_travel_with_messages, |app| async move {
    let (node, up) = node_with_upstream(&app, Behavior::default(), &[]).await;
    // Cheaper tokens: each image reserves 1,445 of them.
    node.sql(
        "UPDATE models SET prompt_per_1k = 10 WHERE id = 'gpt-4o-mini'",
        &[],
    )
    .await;
    node.state.models.invalidate().await.unwrap();
    let u = node.register(&uname("img")).await;
    let other = node.register(&uname("imgother")).await;
    let (s, up_file) = upload(&node, &u.access, "cat.png", "image/png", &png(300)).await;
    assert_eq!(s, StatusCode::CREATED, "{up_file}");
    let own = up_file["url"].as_str().unwrap().to_owned();
    let (s, theirs) = upload(&node, &other.access, "dog.png", "image/png", &png(200)).await;
    assert_eq!(s, StatusCode::CREATED);
    let theirs = theirs["url"].as_str().unwrap().to_owned();
    let conv = conv_id(&node, &u.access, "gpt-4o-mini").await;
    let path = format!("/chat/conversations/{conv}/messages");
    let https = "https://cdn.example.com/cat.png";

    // Refused, nothing stored or sent: someone else's upload, a URL that is not https.
    let (s, _, b) = node
        .post(
            &path,
            Some(&u.access),
            Some(json!({"content": "look", "attachments": [{"url": theirs}]})),
        )
        .await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");
    let (s, _, b) = node
        .post(
            &path,
            Some(&u.access),
            Some(json!({"content": "look", "attachments": [{"url": "http://x.example/a.png"}]})),
        )
        .await;
    assert_invalid(s, &b, "attachments[0].url");
    assert!(all_messages(&node, &u.access, &conv).await.is_empty());
    let sent_before = up.requests().len();

    // Two images over REST: stored and answered; the model got both, the upload inline.
    let (s, _, b) = node
        .post(
            &path,
            Some(&u.access),
            Some(json!({"content": "What is this?",
            "attachments": [{"url": own}, {"url": https}]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let expected = json!([{"url": own}, {"url": https}]);
    assert_eq!(b["user_message"]["attachments"], expected, "{b}");
    assert_eq!(b["assistant_message"]["attachments"], json!([]));
    let reqs = up.requests();
    assert_eq!(reqs.len(), sent_before + 1);
    let sent = &reqs.last().unwrap().body;
    let urls = image_urls(sent, 0);
    assert_eq!(urls.len(), 2, "{sent}");
    assert!(
        urls[0].starts_with("data:image/png;base64,"),
        "{}",
        &urls[0][..40.min(urls[0].len())]
    );
    assert_eq!(urls[1], https);
    assert_eq!(
        sent["messages"][0]["content"][0],
        json!({"type": "text", "text": "What is this?"})
    );
    // The fake counts 85 prompt tokens per image.
    let prompt = b["assistant_message"]["usage"]["prompt_tokens"]
        .as_i64()
        .unwrap();
    assert!(prompt >= 170, "{b}");

    // History shows them; the next turn's context carries them.
    let msgs = all_messages(&node, &u.access, &conv).await;
    assert_eq!(msgs[0]["attachments"], expected);
    let (s, _, b) = node
        .post(&path, Some(&u.access), Some(json!({"content": "And now?"})))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let sent = up.requests().last().unwrap().body.clone();
    assert_eq!(
        image_urls(&sent, 0).len(),
        2,
        "history keeps the images: {sent}"
    );
    assert_eq!(sent["messages"][2]["content"], "And now?");

    // Over the WebSocket: the ack and a sync show the image.
    let mut ws = Ws::connect(&node, &u.access).await;
    ws.send(
        json!({"type": "chat.send", "id": "ws-img-1", "conversation_id": conv,
        "content": "One more", "attachments": [{"url": https}]}),
    )
    .await;
    let (_, ack) = ws.until_type("chat.ack").await;
    assert_eq!(
        ack["message"]["attachments"],
        json!([{"url": https}]),
        "{ack}"
    );
    ws.until_type("chat.done").await;
    ws.send(json!({"type": "conversation.sync", "conversation_id": conv, "after_seq": 4}))
        .await;
    let (frames, _) = ws.until_type("sync.done").await;
    let synced: Vec<&Value> = frames.iter().filter(|f| f["type"] == "message").collect();
    assert_eq!(
        synced[0]["message"]["attachments"],
        json!([{"url": https}]),
        "{frames:?}"
    );
    ws.close().await;

    // A model that does not read images: 400 naming the field, nothing stored.
    let n = all_messages(&node, &u.access, &conv).await.len();
    let (s, _, b) = node
        .post(
            &path,
            Some(&u.access),
            Some(json!({"content": "look", "model": "echo",
            "attachments": [{"url": https}]})),
        )
        .await;
    if s == StatusCode::NOT_FOUND {
        // `echo` is off on this node (not in debug): the refusal is for the model itself.
        assert_error(s, &b, StatusCode::NOT_FOUND, "model_not_found");
    } else {
        assert_invalid(s, &b, "attachments");
    }
    assert_eq!(all_messages(&node, &u.access, &conv).await.len(), n);
});
