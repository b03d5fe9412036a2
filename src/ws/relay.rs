//! What the relay does with a client's frames and with connections coming and
//! going. Storage, presence and fan-out are reached only through their traits.

use std::{borrow::Cow, sync::Arc};

use chrono::Utc;
use serde::Deserialize;
use serde_json::json;

use crate::{
    auth::AuthUser,
    bus::{Audience, DirectMessage, Event},
    config::NoticeAudience,
    domain::MessageContent,
    metrics::{StoredVia, messages_stored},
    presence::Endpoint,
    state::AppState,
    store::NewMessage,
};

pub fn error_frame(message: &str) -> String {
    json!({ "error": message }).to_string()
}

/// A JSON-object frame: must be a directed message. Borrowed from the frame's
/// text where it has no escapes.
#[derive(Deserialize)]
struct DirectFrame<'a> {
    #[serde(borrow)]
    recipient_username: Cow<'a, str>,
    #[serde(borrow)]
    content: Cow<'a, str>,
}

/// Handles one text frame; returns the reply for the sender, if any.
pub async fn on_text(state: &AppState, sender: &AuthUser, text: &str) -> Option<String> {
    // Only a JSON object is a directed message; any other text is broadcast.
    if !text.trim_start().starts_with('{') {
        broadcast(state, sender, text).await;
        return None;
    }
    let frame = match serde_json::from_str::<DirectFrame>(text) {
        Ok(frame) => frame,
        // Some other JSON object: a client mistake, answered.
        Err(_) if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() => {
            return Some(error_frame(
                "a JSON frame needs string fields \"recipient_username\" and \"content\"",
            ));
        }
        Err(_) => {
            broadcast(state, sender, text).await;
            return None;
        }
    };
    match send_direct(state, sender, frame).await {
        Ok(reply) => reply,
        Err(err) => {
            tracing::warn!(error = format!("{err:#}"), "directed message failed");
            Some(error_frame("message could not be delivered; try again"))
        }
    }
}

async fn send_direct(
    state: &AppState,
    sender: &AuthUser,
    frame: DirectFrame<'_>,
) -> anyhow::Result<Option<String>> {
    let content = match MessageContent::parse(
        frame.content.into_owned(),
        state.settings.max_message_bytes,
        "content",
    ) {
        Ok(content) => content.into_inner(),
        Err(invalid) => return Ok(Some(error_frame(&format!("content {}", invalid.message)))),
    };
    let recipient = state
        .names
        .resolve(state.store.as_ref(), &frame.recipient_username)
        .await?;
    let Some(recipient) = recipient else {
        return Ok(Some(error_frame(&format!(
            "user '{}' not found",
            frame.recipient_username
        ))));
    };
    let message = Arc::new(DirectMessage {
        sender_id: sender.id,
        sender_username: sender.username.clone(),
        recipient_id: recipient.id,
        content,
        sent_at: Utc::now(),
    });
    let delivered = match state.bus.publish(Event::Direct(message.clone())).await {
        Ok(delivered) => delivered,
        Err(err) => {
            // Fan-out is down: keep the message rather than lose it.
            tracing::warn!(error = %err, "fan-out unavailable; storing the message");
            false
        }
    };
    if delivered {
        return Ok(None);
    }
    state
        .store
        .store_messages(&[NewMessage::from(&*message)])
        .await?;
    messages_stored(StoredVia::Offline, 1);
    Ok(Some(
        json!({ "status": format!("用户 {} 当前离线，消息已保存。", recipient.username) })
            .to_string(),
    ))
}

async fn broadcast(state: &AppState, sender: &AuthUser, text: &str) {
    let event = Event::Text {
        text: format!("{}: {}", sender.username, text),
        audience: Audience::AllExcept(sender.id),
    };
    if let Err(err) = state.bus.publish(event).await {
        tracing::warn!(error = %err, "broadcast failed");
    }
}

impl From<&DirectMessage> for NewMessage {
    fn from(m: &DirectMessage) -> Self {
        Self {
            sender_id: m.sender_id,
            receiver_id: m.recipient_id,
            content: m.content.clone(),
            sent_at: m.sent_at,
        }
    }
}

/// A connection of `user` is registered in the hub: subscribe the replica, count
/// it in presence, and tell others if it is the user's first anywhere.
pub async fn connection_opened(
    state: &AppState,
    user: &AuthUser,
    peer: Endpoint,
    first_here: bool,
) -> anyhow::Result<()> {
    if first_here {
        state.bus.attach(user.id).await?;
    }
    let now = Utc::now();
    let connections = state
        .presence
        .connection_opened(user.id, &user.jti, peer, now)
        .await?;
    record_seen(state, user, now).await;
    if connections == 1 {
        notify(state, user, "已上线").await;
    }
    Ok(())
}

/// The reverse of [`connection_opened`], after the hub let the connection go.
pub async fn connection_closed(state: &AppState, user: &AuthUser, last_here: bool) {
    if last_here && let Err(err) = state.bus.detach(user.id).await {
        tracing::warn!(error = %err, "fan-out detach failed");
    }
    let now = Utc::now();
    match state
        .presence
        .connection_closed(user.id, &user.jti, now)
        .await
    {
        Ok(0) => notify(state, user, "已下线").await,
        Ok(_) => {}
        Err(err) => tracing::warn!(error = %err, "presence update failed"),
    }
    record_seen(state, user, now).await;
}

/// The store's `last_seen`, at the instant presence recorded: a connection
/// opening or closing is a sign of life.
async fn record_seen(state: &AppState, user: &AuthUser, now: chrono::DateTime<Utc>) {
    if let Err(err) = state.store.touch_last_seen(user.id, now).await {
        tracing::warn!(error = %err, "last-seen update failed");
    }
}

/// `系统消息: 用户 {username} 已上线。` (or 已下线) to the configured audience.
async fn notify(state: &AppState, user: &AuthUser, what: &str) {
    let audience = match state.settings.presence_notices {
        NoticeAudience::All => Ok(Audience::AllExcept(user.id)),
        NoticeAudience::Contacts => state.store.watchers(user.id).await.map(Audience::Users),
    };
    let text = format!("系统消息: 用户 {} {what}。", user.username);
    let result = match audience {
        Ok(audience) => state
            .bus
            .publish(Event::Text { text, audience })
            .await
            .map(drop)
            .map_err(anyhow::Error::from),
        Err(err) => Err(err.into()),
    };
    if let Err(err) = result {
        tracing::warn!(error = format!("{err:#}"), "presence notice failed");
    }
}

/// Stores directed messages that no connection managed to write.
pub async fn store_undelivered(state: &AppState, messages: Vec<Arc<DirectMessage>>) {
    let count = messages.len();
    let rows: Vec<NewMessage> = messages.iter().map(|m| NewMessage::from(&**m)).collect();
    for attempt in 1..=5u32 {
        match state.store.store_messages(&rows).await {
            Ok(_) => {
                messages_stored(StoredVia::Undelivered, count);
                return;
            }
            Err(err) => {
                tracing::warn!(error = %err, attempt, "storing undelivered messages failed");
                tokio::time::sleep(std::time::Duration::from_millis(200 * u64::from(attempt)))
                    .await;
            }
        }
    }
    tracing::error!(count, "undelivered messages dropped after retries");
}
