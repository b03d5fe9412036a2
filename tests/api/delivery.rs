//! Reliable delivery on the WebSocket: connections that acknowledge
//! (`?ack=manual`), client ids with `sent` and `delivered` receipts,
//! de-duplication, and the order of one sender's messages.

use std::time::Duration;

use reqwest::StatusCode;
use secchat::config::Switch;
use serde_json::{Value, json};

use futures_util::StreamExt;

use crate::helpers::{WsClient, spawn, spawn_with};

/// The next JSON frame, presence notices (plain text) skipped.
pub async fn frame(ws: &mut WsClient) -> Value {
    frame_within(ws, crate::helpers::PATIENCE).await
}

/// The same, each frame within `patience`.
pub async fn frame_within(ws: &mut WsClient, patience: std::time::Duration) -> Value {
    loop {
        let text = ws.text_within(patience).await;
        if text.starts_with("系统消息") {
            continue;
        }
        return serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    }
}

/// The next message frame's `(type, id, content)`.
pub async fn message(ws: &mut WsClient) -> (String, Option<i64>, String) {
    let m = frame(ws).await;
    let kind = m["type"]
        .as_str()
        .unwrap_or_else(|| panic!("{m}"))
        .to_owned();
    assert!(
        kind == "offline_message" || kind == "p2p_message",
        "expected a message, got {m}"
    );
    (
        kind,
        m["id"].as_i64(),
        m["content"].as_str().unwrap().to_owned(),
    )
}

pub fn direct(to: &str, content: &str, client_id: Option<&str>) -> Value {
    let mut frame = json!({"recipient_username": to, "content": content});
    if let Some(client_id) = client_id {
        frame["client_id"] = client_id.into();
    }
    frame
}

/// No frame but presence notices for a while.
pub async fn quiet(ws: &mut WsClient) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(800);
    loop {
        match tokio::time::timeout_at(deadline, ws.stream.next()).await {
            Err(_) => return,
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))))
                if t.starts_with("系统消息") => {}
            Ok(Some(Ok(
                tokio_tungstenite::tungstenite::Message::Ping(_)
                | tokio_tungstenite::tungstenite::Message::Pong(_),
            ))) => {}
            Ok(other) => panic!("expected no message, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn what_a_connection_did_not_acknowledge_comes_again_in_order() {
    let app = spawn().await;
    let (alice, bob) = app.friends("alice", "bob").await;
    let mut a = app.ws(&alice.token).await;
    for i in 1..=3 {
        a.send_json(direct("bob", &format!("m{i}"), None)).await;
        assert!(frame(&mut a).await["status"].is_string(), "stored offline");
    }
    let mut b = app.ws_manual(&bob.token).await;
    let mut ids = Vec::new();
    for i in 1..=3 {
        let (kind, id, content) = message(&mut b).await;
        assert_eq!(
            (kind.as_str(), content),
            ("offline_message", format!("m{i}"))
        );
        ids.push(id.expect("an id for a connection that acknowledges"));
    }
    a.send_json(direct("bob", "m4", None)).await;
    let (kind, id, content) = message(&mut b).await;
    assert_eq!((kind.as_str(), content.as_str()), ("p2p_message", "m4"));
    ids.push(id.unwrap());
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    // Held for this connection: neither a fetch nor a plain socket gets them.
    assert!(app.inbox(&bob.token).await.is_empty());
    let mut plain = app.ws(&bob.token).await;
    quiet(&mut plain).await;
    drop(plain);

    b.ack(&ids[..1]).await;
    b.leave().await;
    // The next connection gets the three not acknowledged, in order, with
    // their ids (the live one is now stored like the others).
    let mut b = app.ws_manual(&bob.token).await;
    for (i, id) in ids.iter().enumerate().skip(1) {
        let (kind, again, content) = message(&mut b).await;
        assert_eq!(
            (kind.as_str(), again, content),
            ("offline_message", Some(*id), format!("m{}", i + 1))
        );
    }
    // A second device that acknowledges takes over what the first holds.
    let mut second = app.ws_manual(&bob.token).await;
    for id in &ids[1..] {
        assert_eq!(message(&mut second).await.1, Some(*id));
    }
    // Acknowledging is idempotent, through either device.
    second.ack(&ids[1..3]).await;
    b.ack(&ids[1..]).await;
    b.leave().await;
    second.leave().await;
    let mut b = app.ws_manual(&bob.token).await;
    quiet(&mut b).await;
    assert!(app.inbox(&bob.token).await.is_empty());
    let (_, fetched) = app.get("/messages/?ack=manual", &bob.token).await;
    assert_eq!(fetched, json!([]));
    // A plain connection sees no ids, as before.
    let mut plain = app.ws(&bob.token).await;
    a.send_json(direct("bob", "plain", None)).await;
    let live = loop {
        let m = frame(&mut plain).await;
        if m["content"] == "plain" {
            break m;
        }
    };
    assert!(live.get("id").is_none(), "{live}");
    assert_eq!(message(&mut b).await.2, "plain");
    // Bad acknowledgements are answered, and the connection stays.
    b.send_json(json!({"type": "ack", "ids": vec![1; 1001]}))
        .await;
    assert!(
        frame(&mut b).await["error"]
            .as_str()
            .unwrap()
            .contains("1000")
    );
    b.send_json(json!({"type": "ack", "ids": ["x"]})).await;
    assert!(frame(&mut b).await["error"].is_string());
    let (status, _) = app
        .http
        .get(app.url(&format!("/ws?token={}&ack=auto", bob.token)))
        .send()
        .await
        .map(|r| (r.status(), ()))
        .unwrap();
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn client_ids_are_answered_with_receipts_and_never_delivered_twice() {
    let app = spawn().await;
    let (alice, bob) = app.friends("alice", "bob").await;
    let mut a = app.ws(&alice.token).await;
    let mut b = app.ws_manual(&bob.token).await;
    a.send_json(direct("bob", "hello", Some("c-1"))).await;
    let sent = frame(&mut a).await;
    assert_eq!(
        (&sent["type"], &sent["client_id"]),
        (&json!("sent"), &json!("c-1"))
    );
    let id = sent["id"].as_i64().unwrap();
    assert_eq!(
        message(&mut b).await,
        ("p2p_message".into(), Some(id), "hello".into())
    );
    // The same client id again (a retry after a lost answer): the same
    // receipt, and nothing delivered.
    a.send_json(direct("bob", "hello", Some("c-1"))).await;
    assert_eq!(frame(&mut a).await, sent);
    quiet(&mut b).await;
    // Acknowledged: the sender is told.
    b.ack(&[id]).await;
    assert_eq!(frame(&mut a).await, json!({"type": "delivered", "id": id}));
    b.ack(&[id]).await;
    quiet(&mut a).await;

    // Stored offline (dave, who accepted alice, never connected): `sent`
    // after it was stored; acknowledged over HTTP.
    let dave = app.user("dave").await;
    app.add_contact(&dave.token, "alice").await;
    assert_eq!(frame(&mut a).await["type"], "contact_request");
    a.send_json(direct("dave", "later", Some("c-2"))).await;
    assert!(frame(&mut a).await["status"].is_string());
    let sent = frame(&mut a).await;
    assert_eq!(sent["client_id"], "c-2");
    let later = sent["id"].as_i64().unwrap();
    let (_, fetched) = app.get("/messages/?ack=manual", &dave.token).await;
    assert_eq!(fetched[0]["id"], later);
    assert_eq!(fetched[0]["encrypted_content"], "later");
    let (_, acked) = app
        .post("/messages/ack", &dave.token, json!({"ids": [later]}))
        .await;
    assert_eq!(acked, json!({"acked": 1}));
    assert_eq!(
        frame(&mut a).await,
        json!({"type": "delivered", "id": later})
    );

    // Without a client id: no receipts, whatever the recipient does.
    let mut plain_sender = app.ws(&alice.token).await;
    plain_sender.send_json(direct("bob", "no id", None)).await;
    let (_, id, _) = message(&mut b).await;
    b.ack(&[id.unwrap()]).await;
    quiet(&mut plain_sender).await;

    // Bad client ids are refused, and nothing is sent.
    for bad in [json!(""), json!("x".repeat(65)), json!(7)] {
        a.send_json(json!({"recipient_username": "bob", "content": "bad", "client_id": bad}))
            .await;
        assert!(frame(&mut a).await["error"].is_string(), "{bad}");
    }
    a.send_json(direct("bob", "long", Some(&"é".repeat(64))))
        .await;
    assert_eq!(frame(&mut a).await["type"], "sent", "64 characters is fine");
    // Another sender's client id is its own.
    let carol = app.user("carol").await;
    app.add_contact(&bob.token, "carol").await;
    let mut c = app.ws(&carol.token).await;
    c.send_json(direct("bob", "from carol", Some("c-1"))).await;
    let carols = frame(&mut c).await;
    assert_eq!(carols["type"], "sent");
    assert_ne!(carols["id"], json!(id));
}

#[tokio::test]
async fn a_refused_message_may_be_sent_again_under_its_client_id() {
    let app = spawn_with(|s| {
        s.delivery.mailbox_stranger_messages = 1;
    })
    .await;
    let alice = app.user("alice").await;
    let _bob = app.user("bob").await;
    let mut a = app.ws(&alice.token).await;
    a.send_json(direct("bob", "first", Some("s-1"))).await;
    assert!(frame(&mut a).await["status"].is_string());
    assert_eq!(frame(&mut a).await["type"], "sent");
    a.send_json(direct("bob", "second", Some("s-2"))).await;
    assert!(
        frame(&mut a).await["error"]
            .as_str()
            .unwrap()
            .contains("full")
    );
    // Refused, so not remembered: once there is room it goes through.
    let (_, fetched) = app.get("/messages/", &_bob.token).await;
    assert_eq!(fetched.as_array().unwrap().len(), 1);
    a.send_json(direct("bob", "second", Some("s-2"))).await;
    assert!(frame(&mut a).await["status"].is_string());
    assert_eq!(frame(&mut a).await["client_id"], "s-2");
}

/// One sender's messages reach each recipient in the order sent, whether they
/// were stored (the recipient was connecting) or relayed, on connections that
/// acknowledge and on plain ones. Recipients connect one after another while
/// the messages flow, each a chance for a message stored as it connects to
/// fall behind a later one relayed live.
#[tokio::test]
async fn one_senders_messages_arrive_in_the_order_sent() {
    const N: usize = 100;
    const RECIPIENTS: usize = 6;
    let app = spawn_with(|s| {
        s.rates.rate_limits = Switch::Off;
        s.delivery.mailbox_stranger_messages = 10 * N as u64;
    })
    .await;
    let alice = app.user("alice").await;
    let mut recipients = Vec::new();
    for r in 0..RECIPIENTS {
        recipients.push(app.user(&format!("r{r}")).await);
    }
    let mut a = app.ws(&alice.token).await;
    let sender = tokio::spawn(async move {
        for i in 0..N {
            for r in 0..RECIPIENTS {
                let (to, client_id) = (format!("r{r}"), format!("{r}-{i}"));
                a.send_json(direct(&to, &format!("{i}"), Some(&client_id)))
                    .await;
            }
            if i % 5 == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        // Every message was taken care of before the sender stops reading.
        let mut sent = 0;
        while sent < RECIPIENTS * N {
            if a.json().await["type"] == "sent" {
                sent += 1;
            }
        }
    });
    let mut connections = Vec::new();
    for (r, user) in recipients.iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(15)).await;
        let manual = r % 2 == 0;
        let ws = if manual {
            app.ws_manual(&user.token).await
        } else {
            app.ws(&user.token).await
        };
        connections.push((ws, manual));
    }
    for (ws, manual) in &mut connections {
        let mut got = Vec::new();
        while got.len() < N {
            let (_, id, content) = message(ws).await;
            got.push(content.parse::<usize>().unwrap());
            if *manual {
                ws.ack(&[id.unwrap()]).await;
            }
        }
        assert_eq!(got, (0..N).collect::<Vec<_>>(), "in order, each once");
    }
    sender.await.unwrap();
    for ((ws, _), user) in connections.iter_mut().zip(&recipients) {
        quiet(ws).await;
        assert!(app.inbox(&user.token).await.is_empty());
    }
}

/// Messages held for a connection that acknowledges count against the
/// recipient's mailbox: no sender can grow it past the quota through a
/// client that reads everything and acknowledges nothing. What does not fit
/// is still written live, but held for nobody.
#[tokio::test]
async fn held_messages_count_against_the_mailbox_quota() {
    let app = spawn_with(|s| {
        s.delivery.mailbox_max_messages = 5;
        s.rates.rate_limits = Switch::Off;
    })
    .await;
    let unheld = "secchat_messages_unheld_total";
    let before = app.metric(unheld).await;
    let (alice, bob) = app.friends("alice", "bob").await;
    let mut reader = app.ws_manual(&bob.token).await;
    let mut sender = app.ws(&alice.token).await;
    for i in 0..20 {
        sender
            .send_json(json!({"recipient_username": "bob", "content": format!("m{i:02}")}))
            .await;
    }
    for i in 0..20 {
        let (kind, id, content) = message(&mut reader).await;
        assert_eq!(
            (kind.as_str(), content),
            ("p2p_message", format!("m{i:02}"))
        );
        assert!(id.is_some());
    }
    reader.leave().await;
    // Released when the connection went: only the five that fit were held.
    crate::helpers::eventually("the held messages are released", || async {
        app.get("/messages/?ack=manual", &bob.token).await.1 != json!([])
    })
    .await;
    let (status, kept) = app.get("/messages/?ack=manual", &bob.token).await;
    assert_eq!(status, StatusCode::OK);
    let kept: Vec<&str> = kept
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["encrypted_content"].as_str().unwrap())
        .collect();
    assert_eq!(kept, ["m00", "m01", "m02", "m03", "m04"]);
    assert!(app.metric(unheld).await >= before + 15.0);
}

/// A client id names one message to one recipient: the same id sent to two
/// recipients is two messages, each delivered (it used to drop the second and
/// answer it with the first's receipt).
#[tokio::test]
async fn one_client_id_to_two_recipients_is_two_messages() {
    let app = spawn().await;
    let (alice, bob) = app.friends("alice", "bob").await;
    let carol = app.user("carol").await;
    app.add_contact(&carol.token, "alice").await;
    let mut a = app.ws(&alice.token).await;
    let mut b = app.ws(&bob.token).await;
    let mut c = app.ws(&carol.token).await;
    a.send_json(direct("bob", "to bob", Some("same"))).await;
    let to_bob = frame(&mut a).await;
    a.send_json(direct("carol", "to carol", Some("same"))).await;
    let to_carol = frame(&mut a).await;
    assert_eq!(
        (to_bob["type"].as_str(), to_carol["type"].as_str()),
        (Some("sent"), Some("sent"))
    );
    assert_ne!(to_bob["id"], to_carol["id"]);
    assert_eq!(message(&mut b).await.2, "to bob");
    assert_eq!(message(&mut c).await.2, "to carol");
}

/// A connection reads its next frames while its earlier messages wait for
/// fan-out's answer (so that a burst shares one round trip): the replies
/// still come in the order of the frames they answer, whatever each frame
/// was, and a client that sends a burst and leaves at once loses none of it.
#[tokio::test]
async fn a_burst_is_answered_in_frame_order_and_kept_when_its_sender_leaves() {
    const N: usize = 60;
    let app = spawn_with(|s| s.rates.rate_limits = Switch::Off).await;
    let (alice, bob) = app.friends("alice", "bob").await;
    let carol = app.user("carol").await;
    assert_eq!(
        app.add_contact(&carol.token, "alice").await,
        StatusCode::ACCEPTED
    );
    let (status, _) = app
        .put(&format!("/me/contacts/{}", carol.id), &alice.token, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let mut b = app.ws(&bob.token).await;
    let mut a = app.ws(&alice.token).await;
    // Bob is online, carol is not; every seventh frame is malformed.
    let mut expected = Vec::new();
    for i in 0..N {
        let client_id = format!("c{i}");
        if i % 7 == 3 {
            a.send_text("{\"recipient_username\": 5}").await;
            expected.push("error".to_owned());
        } else if i % 3 == 0 {
            a.send_json(direct("carol", &format!("{i}"), Some(&client_id)))
                .await;
            expected.push("status".to_owned());
            expected.push(format!("sent {client_id}"));
        } else {
            a.send_json(direct("bob", &format!("{i}"), Some(&client_id)))
                .await;
            expected.push(format!("sent {client_id}"));
        }
    }
    let mut replies = Vec::new();
    while replies.len() < expected.len() {
        let reply = frame(&mut a).await;
        replies.push(if reply["type"] == "sent" {
            format!("sent {}", reply["client_id"].as_str().unwrap())
        } else if reply["status"].is_string() {
            "status".to_owned()
        } else {
            assert!(reply["error"].is_string(), "{reply}");
            "error".to_owned()
        });
    }
    assert_eq!(replies, expected, "each reply in the place of its frame");
    let to_bob: Vec<usize> = (0..N).filter(|i| i % 7 != 3 && i % 3 != 0).collect();
    let mut got = Vec::new();
    while got.len() < to_bob.len() {
        got.push(message(&mut b).await.2.parse::<usize>().unwrap());
    }
    assert_eq!(got, to_bob);

    // A burst to carol (offline) from a client that closes right after it:
    // each message of it is stored, once, in order.
    let mut a = app.ws(&alice.token).await;
    for i in 0..N {
        a.send_json(direct("carol", &format!("burst {i}"), None))
            .await;
    }
    a.leave().await;
    crate::helpers::eventually("the whole burst stored", || async {
        app.stored_like("burst %").await == N as i64
    })
    .await;
    let inbox = app.inbox(&carol.token).await;
    let burst: Vec<&String> = inbox.iter().filter(|m| m.starts_with("burst ")).collect();
    let expected: Vec<String> = (0..N).map(|i| format!("burst {i}")).collect();
    assert_eq!(burst, expected.iter().collect::<Vec<_>>());
}
