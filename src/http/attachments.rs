//! Images attached to a chat message (SPEC §7), for `POST /chat/conversations/{id}/messages`
//! and `chat.send`: the sender's own uploads (`/static/…` paths `POST /common/upload` returned)
//! or `https` URLs. They are stored with the message and go to vision models as `image_url`
//! parts (an upload is read into a `data:` URL by the provider when the request is sent, so the
//! database keeps the path, not the bytes).

use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::patterns::{matches, pattern};
use crate::state::AppState;
use questech_engine::conversation::{TurnExtras, IMAGE_TOKENS};
use questech_engine::events::Attachment;
use questech_engine::llm::Caps;

/// Most images on one message.
pub const MAX_ATTACHMENTS: usize = 4;

/// An image to attach.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
pub struct AttachmentIn {
    /// An upload of the sender's (`/static/<id>.<ext>`) or an `https` URL.
    #[schema(
        max_length = 2048,
        pattern = r"^(https://[^\x00-\x20\x7f-\xa0/?#]+([/?#][^\x00-\x20\x7f-\xa0]*)?|/static/[0-9]{1,20}[.](png|jpg|gif|webp))$"
    )]
    pub url: String,
}

/// The turn's extras for a message with `attachments` (`None` without any): each checked
/// (400 naming `attachments[i]` for a malformed URL, 404 for an upload that is not the
/// sender's), and the message's wire form with its text and its images.
pub async fn turn_extras(
    state: &AppState,
    user_id: i64,
    content: &str,
    attachments: Option<&[AttachmentIn]>,
) -> Result<Option<Box<TurnExtras>>> {
    let Some(list) = attachments.filter(|l| !l.is_empty()) else {
        return Ok(None);
    };
    if list.len() > MAX_ATTACHMENTS {
        return Err(Error::invalid(
            "attachments",
            &format!("at most {MAX_ATTACHMENTS} images"),
        ));
    }
    let mut parts = vec![json!({"type": "text", "text": content})];
    let mut stored = Vec::with_capacity(list.len());
    for (i, a) in list.iter().enumerate() {
        let field = format!("attachments[{i}].url");
        if a.url.len() > 2048 || !matches(pattern::ATTACHMENT_URL, &a.url) {
            return Err(Error::invalid(
                &field,
                "must be an https URL or a /static/ path of your upload",
            ));
        }
        if let Some(name) = a.url.strip_prefix("/static/") {
            let owner = crate::storage::uploads::owner(&state.db, name).await?;
            if owner != Some(user_id) {
                return Err(Error::not_found(format!("{field}: no upload of yours")));
            }
        }
        parts.push(json!({"type": "image_url", "image_url": {"url": a.url}}));
        stored.push(Attachment { url: a.url.clone() });
    }
    Ok(Some(Box::new(TurnExtras {
        image_tokens: IMAGE_TOKENS * stored.len() as u64,
        attachments: stored,
        wire: Some(vec![
            json!({"role": "user", "content": Value::Array(parts)}),
        ]),
        needs: Caps {
            vision: true,
            ..Caps::default()
        },
        ..TurnExtras::default()
    })))
}
