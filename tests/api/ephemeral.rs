//! Ephemeral directed frames (API.md, "Ephemeral messages"): for the
//! recipient's open connections only, between mutual contacts only, never
//! stored; and `client_id` in every error frame that answers a frame with one.

use std::time::Duration;

use serde_json::json;

use crate::helpers::spawn;

fn ephemeral(to: &str, content: &str, client_id: Option<&str>) -> serde_json::Value {
    let mut frame = json!({"recipient_username": to, "content": content, "ephemeral": true});
    if let Some(client_id) = client_id {
        frame["client_id"] = json!(client_id);
    }
    frame
}

#[tokio::test]
async fn ephemeral_frames_reach_open_connections_of_mutual_contacts_only_and_are_never_stored() {
    let app = spawn().await;
    let (alice, bob) = app.friends("alice", "bob").await;
    let carol = app.user("carol").await;
    // Carol asked alice, who has not answered: they are not mutual.
    app.add_contact(&carol.token, "alice").await;
    let mut a = app.ws(&alice.token).await;

    // Bob has no open connection: not delivered, and not kept either.
    a.send_json(ephemeral("bob", "typing-1", Some("t1"))).await;
    assert_eq!(
        a.json().await,
        json!({"type": "not_delivered", "client_id": "t1"})
    );
    a.send_json(ephemeral("bob", "typing-0", None)).await;
    assert_eq!(a.json().await, json!({"type": "not_delivered"}));

    // On a connection that acknowledges, too: no id, nothing to acknowledge.
    let mut b = app.ws_manual(&bob.token).await;
    assert_eq!(a.text().await, "系统消息: 用户 bob 已上线。");
    a.send_json(ephemeral("bob", "typing-2", Some("t2"))).await;
    let got = b.json().await;
    assert_eq!(
        got,
        json!({
            "type": "p2p_message",
            "sender_username": "alice",
            "content": "typing-2",
            "timestamp": got["timestamp"],
            "ephemeral": true,
        })
    );
    // No `sent` (nothing was taken into keeping), no error.
    a.silent_for(Duration::from_millis(300)).await;

    // Any error answering a frame with a client id names it.
    a.send_json(json!({"recipient_username": "nobody", "content": "x", "client_id": "c9"}))
        .await;
    assert_eq!(
        a.json().await,
        json!({"error": "recipient not found", "client_id": "c9"})
    );
    a.send_json(json!({"recipient_username": "bob", "content": "", "client_id": "c10"}))
        .await;
    assert_eq!(a.json().await["client_id"], "c10");

    // Not mutual, either way round: the answer for an unknown name.
    let mut c = app.ws(&carol.token).await;
    assert_eq!(a.text().await, "系统消息: 用户 carol 已上线。");
    c.send_json(ephemeral("alice", "typing-3", Some("t3")))
        .await;
    assert_eq!(
        c.json().await,
        json!({"error": "recipient not found", "client_id": "t3"})
    );
    a.send_json(ephemeral("carol", "typing-4", Some("t4")))
        .await;
    assert_eq!(
        a.json().await,
        json!({"error": "recipient not found", "client_id": "t4"})
    );
    c.send_json(ephemeral("nobody", "typing-5", Some("t5")))
        .await;
    assert_eq!(
        c.json().await,
        json!({"error": "recipient not found", "client_id": "t5"})
    );

    // Nothing was stored, and nothing comes again on the next connection.
    for content in ["typing-0", "typing-1", "typing-2", "typing-3", "typing-4"] {
        assert_eq!(app.stored_like(content).await, 0, "{content}");
    }
    b.leave().await;
    let mut again = app.ws_manual(&bob.token).await;
    again.silent_for(Duration::from_millis(500)).await;
    assert_eq!(app.get("/messages/", &bob.token).await.1, json!([]));
}
