use reqwest::StatusCode;
use secchat::config::Visibility;
use serde_json::{Value, json};

use crate::helpers::spawn;

#[tokio::test]
async fn adding_by_name_makes_a_request_the_other_side_accepts() {
    let app = spawn().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let (status, entry) = app
        .post(
            "/me/contacts/",
            &alice.token,
            json!({"friend_username": "bob"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // Both shapes in one entry.
    assert_eq!(entry["id"], bob.id);
    assert_eq!(entry["username"], "bob");
    assert_eq!(entry["public_key"], "pk-bob");
    // Bob has not accepted alice: his presence is not hers to see.
    assert_eq!(entry["is_online"], false);
    assert_eq!(entry["user_id"], alice.id);
    assert_eq!(entry["friend_id"], bob.id);
    assert_eq!(entry["status"], "accepted");
    assert!(entry["created_at"].is_string() && entry["last_seen"].is_null());
    assert!(entry["key_changed_at"].is_null());
    assert_eq!(entry["friend"]["id"], bob.id);
    assert_eq!(entry["friend"]["username"], "bob");

    // Alice lists bob (still without his presence); bob has a request from
    // alice, who consented by asking.
    let (_, list) = app.get("/me/contacts/", &alice.token).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["username"], "bob");
    assert_eq!(
        (&list[0]["is_online"], &list[0]["last_seen"]),
        (&json!(false), &json!(null))
    );
    assert_eq!(list[0]["friend"]["last_seen"], json!(null));
    assert_eq!(app.get("/me/contacts", &bob.token).await.1, json!([]));
    let (status, pending) = app.get("/me/contacts/pending", &bob.token).await;
    assert_eq!(status, StatusCode::OK);
    let request = &pending[0];
    assert_eq!(
        (request["id"].as_i64(), request["user_id"].as_i64()),
        (Some(alice.id), Some(alice.id))
    );
    assert_eq!(request["friend_id"], bob.id);
    assert_eq!(request["status"], "pending");
    assert_eq!(request["username"], "alice");
    assert_eq!(
        request["user"],
        json!({"id": alice.id, "username": "alice", "is_online": true})
    );
    assert!(request["created_at"].is_string());
    assert_eq!(
        app.get("/me/contacts/pending/", &alice.token).await.1,
        json!([])
    );

    // Bob accepts: both sides accepted, the request is gone.
    let (status, accepted) = app
        .put(&format!("/me/contacts/{}", alice.id), &bob.token, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (accepted["id"].as_i64(), accepted["status"].as_str()),
        (Some(alice.id), Some("accepted"))
    );
    assert_eq!(accepted["user_id"], bob.id);
    assert_eq!(accepted["is_online"], true, "alice consented");
    assert_eq!(
        app.get("/me/contacts/", &bob.token).await.1[0]["username"],
        "alice"
    );
    // Now bob consents too.
    let (_, list) = app.get("/me/contacts/", &alice.token).await;
    assert_eq!(list[0]["is_online"], true);
    assert!(list[0]["last_seen"].is_string() && list[0]["friend"]["last_seen"].is_string());
    assert_eq!(
        app.get("/me/contacts/pending", &bob.token).await.1,
        json!([])
    );
    // Accepting again: there is no request any more.
    let (status, _) = app
        .put(&format!("/me/contacts/{}/", alice.id), &bob.token, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn adding_by_id_and_mutual_adds_accept_both_sides() {
    let app = spawn().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let (status, _) = app
        .post("/me/contacts", &alice.token, json!({"friend_id": bob.id}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // Bob adds alice back instead of accepting: same result.
    let (status, entry) = app
        .post(
            "/me/contacts/",
            &bob.token,
            json!({"friend_username": "ALICE"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(entry["status"], "accepted");
    assert_eq!(
        app.get("/me/contacts/pending", &bob.token).await.1,
        json!([])
    );
    assert_eq!(
        app.get("/me/contacts/pending", &alice.token).await.1,
        json!([])
    );
    assert_eq!(
        app.get("/me/contacts/", &alice.token)
            .await
            .1
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        app.get("/me/contacts/", &bob.token)
            .await
            .1
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn adding_oneself_twice_or_nobody_is_refused() {
    let app = spawn().await;
    let alice = app.user("alice").await;
    app.register("bob").await;
    let cases = [
        (json!({"friend_username": "alice"}), StatusCode::BAD_REQUEST),
        (json!({"friend_id": alice.id}), StatusCode::BAD_REQUEST),
        (json!({"friend_username": "nobody"}), StatusCode::NOT_FOUND),
        (json!({"friend_id": 999_999}), StatusCode::NOT_FOUND),
        (json!({"friend_username": "bob"}), StatusCode::ACCEPTED),
        (json!({"friend_username": "bob"}), StatusCode::BAD_REQUEST),
        (json!({}), StatusCode::UNPROCESSABLE_ENTITY),
        (
            json!({"friend_id": "two"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ];
    for (body, expected) in cases {
        let (status, answer) = app.post("/me/contacts/", &alice.token, body.clone()).await;
        assert_eq!(status, expected, "{body}: {answer}");
        if status == StatusCode::BAD_REQUEST || status == StatusCode::NOT_FOUND {
            assert!(answer["detail"].is_string());
        }
    }
}

#[tokio::test]
async fn deleting_removes_both_sides_or_rejects_a_request() {
    let app = spawn().await;
    let (alice, bob) = app.friends("alice", "bob").await;
    let carol = app.user("carol").await;
    let (status, body) = app
        .delete(&format!("/me/contacts/{}", bob.id), &alice.token)
        .await;
    assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
    assert_eq!(app.get("/me/contacts/", &alice.token).await.1, json!([]));
    assert_eq!(app.get("/me/contacts/", &bob.token).await.1, json!([]));
    let (status, _) = app
        .delete(&format!("/me/contacts/{}/", bob.id), &alice.token)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Rejecting a request removes it on both sides.
    app.post(
        "/me/contacts/",
        &carol.token,
        json!({"friend_username": "alice"}),
    )
    .await;
    let (status, _) = app
        .delete(&format!("/me/contacts/{}", carol.id), &alice.token)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        app.get("/me/contacts/pending", &alice.token).await.1,
        json!([])
    );
    assert_eq!(app.get("/me/contacts/", &carol.token).await.1, json!([]));
    let (status, _) = app.delete("/me/contacts/abc", &alice.token).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn the_contact_list_pages_with_skip_and_limit() {
    let app = spawn().await;
    let me = app.user("owner").await;
    for name in ["c1", "c2", "c3", "c4"] {
        app.register(name).await;
        app.post("/me/contacts/", &me.token, json!({"friend_username": name}))
            .await;
    }
    let names = |v: Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|c| c["username"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(app.get("/me/contacts/", &me.token).await.1),
        ["c1", "c2", "c3", "c4"]
    );
    assert_eq!(
        names(app.get("/me/contacts/?skip=1&limit=2", &me.token).await.1),
        ["c2", "c3"]
    );
    assert_eq!(
        app.get("/me/contacts/?skip=-1", &me.token).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
}

#[tokio::test]
async fn the_online_list_shows_consenting_online_contacts_with_addresses() {
    let app = spawn().await;
    let (alice, _bob) = app.friends("alice", "bob").await;
    // Carol is alice's contact only on alice's side: carol has not consented.
    app.user("carol").await;
    app.post(
        "/me/contacts/",
        &alice.token,
        json!({"friend_username": "carol"}),
    )
    .await;
    // Dave is a mutual contact who logs in with a declared port and then logs out.
    let (_, dave) = {
        let dave = app.user("dave").await;
        app.post(
            "/me/contacts/",
            &dave.token,
            json!({"friend_username": "alice"}),
        )
        .await;
        app.post(
            "/me/contacts/",
            &alice.token,
            json!({"friend_username": "dave"}),
        )
        .await;
        ((), dave)
    };
    let bob_token = app.login("bob", Some(7001)).await;
    let (status, online) = app.get("/me/contacts/online", &alice.token).await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<_> = online
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bob", "dave"]);
    let bob_entry = &online[0];
    assert_eq!(bob_entry["ip_address"], "127.0.0.1");
    assert_eq!(bob_entry["port"], 7001);
    assert_eq!(bob_entry["public_key"], "pk-bob");
    assert_eq!(bob_entry["is_online"], true);
    assert!(bob_entry["id"].is_i64() && bob_entry["last_seen"].is_string());
    // Without a declared port, the login connection's source port: always an integer.
    assert!(online[1]["port"].as_u64().unwrap() > 0);

    app.post("/logout", &dave.token, json!(null)).await;
    let online = app.get("/me/contacts/online/", &alice.token).await.1;
    assert_eq!(online.as_array().unwrap().len(), 1);
    drop(bob_token);
}

#[tokio::test]
async fn open_visibility_shows_every_online_contact() {
    let app =
        crate::helpers::spawn_with(|s| s.presence.address_visibility = Visibility::Open).await;
    let alice = app.user("alice").await;
    app.user("carol").await;
    app.post(
        "/me/contacts/",
        &alice.token,
        json!({"friend_username": "carol"}),
    )
    .await;
    let online = app.get("/me/contacts/online", &alice.token).await.1;
    assert_eq!(online[0]["username"], "carol");
}

/// Usernames in the caller's online panel.
async fn online_names(app: &crate::helpers::TestApp, token: &str) -> Vec<String> {
    let (status, online) = app.get("/me/contacts/online", token).await;
    assert_eq!(status, StatusCode::OK);
    online
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["username"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_online_panel_follows_every_contact_change_at_once() {
    let app = spawn().await;
    let (alice, bob) = app.friends("alice", "bob").await;
    assert_eq!(online_names(&app, &alice.token).await, ["bob"]);
    // Removed by the other side: gone from the next answer.
    let remove = format!("/me/contacts/{}", alice.id);
    let (status, _) = app.delete(&remove, &bob.token).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(online_names(&app, &alice.token).await.is_empty());
    // Asked again: bob has not accepted, so alice may not see his address yet.
    app.post(
        "/me/contacts/",
        &alice.token,
        json!({"friend_username": "bob"}),
    )
    .await;
    assert!(online_names(&app, &alice.token).await.is_empty());
    assert!(online_names(&app, &bob.token).await.is_empty());
    let accept = format!("/me/contacts/{}", alice.id);
    let (status, _) = app.put(&accept, &bob.token, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(online_names(&app, &alice.token).await, ["bob"]);
    assert_eq!(online_names(&app, &bob.token).await, ["alice"]);
    // A new contact appears too.
    let carol = app.user("carol").await;
    app.post(
        "/me/contacts/",
        &carol.token,
        json!({"friend_username": "alice"}),
    )
    .await;
    app.post(
        "/me/contacts/",
        &alice.token,
        json!({"friend_username": "carol"}),
    )
    .await;
    assert_eq!(online_names(&app, &alice.token).await, ["bob", "carol"]);
}

#[tokio::test]
async fn the_online_panel_shows_the_address_and_last_seen_of_the_latest_heartbeat() {
    let app = spawn().await;
    let (alice, bob) = app.friends("alice", "bob").await;
    let entry = |online: Value| online[0].clone();
    let before = entry(app.get("/me/contacts/online", &alice.token).await.1);
    // last_seen is to the second: let one pass.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (status, _) = app
        .put(
            "/me/connection-info",
            &bob.token,
            Some(json!({"port": 4242})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let after = entry(app.get("/me/contacts/online", &alice.token).await.1);
    assert_eq!(after["port"], 4242);
    assert!(
        after["last_seen"].as_str() > before["last_seen"].as_str(),
        "{before} then {after}"
    );
    // The same instant the contact list shows.
    let listed = app.get("/me/contacts/", &alice.token).await.1;
    assert_eq!(listed[0]["last_seen"], after["last_seen"]);
    assert_eq!(listed[0]["friend"]["last_seen"], after["last_seen"]);
}

/// `{"id", "username", "public_key"}` of a user `TestApp::user` registered.
fn card(user: &crate::helpers::TestUser) -> Value {
    json!({
        "id": user.id,
        "username": user.name,
        "public_key": crate::helpers::public_key_of(&user.name),
    })
}

#[tokio::test]
async fn requests_acceptances_and_removals_reach_the_other_side_live() {
    let app = spawn().await;
    let (alice, bob, carol, dave) = (
        app.user("alice").await,
        app.user("bob").await,
        app.user("carol").await,
        app.user("dave").await,
    );
    let (mut a, mut b, mut c, mut d) = (
        app.ws(&alice.token).await,
        app.ws(&bob.token).await,
        app.ws(&carol.token).await,
        app.ws(&dave.token).await,
    );

    // A request: the addressee hears of it at once; the requester's entry is
    // not mutual yet.
    assert_eq!(
        app.add_contact(&alice.token, "bob").await,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        b.json().await,
        json!({"type": "contact_request", "user": card(&alice)})
    );
    let (_, listed) = app.get("/me/contacts/", &alice.token).await;
    assert_eq!(listed[0]["mutual"], false, "{listed}");

    // Accepted: the requester hears of it; both entries are mutual.
    let (status, entry) = app
        .put(&format!("/me/contacts/{}", alice.id), &bob.token, None)
        .await;
    assert_eq!((status, &entry["mutual"]), (StatusCode::OK, &json!(true)));
    assert_eq!(
        a.json().await,
        json!({"type": "contact_accepted", "user": card(&bob)})
    );
    let (_, listed) = app.get("/me/contacts/", &alice.token).await;
    assert_eq!(listed[0]["mutual"], true, "{listed}");

    // Removed: the other side hears who.
    let path = format!("/me/contacts/{}", alice.id);
    assert_eq!(
        app.delete(&path, &bob.token).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        a.json().await,
        json!({"type": "contact_removed", "username": "bob"})
    );

    // Both asked: the second add accepts both sides, and says so.
    assert_eq!(
        app.add_contact(&carol.token, "alice").await,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        a.json().await,
        json!({"type": "contact_request", "user": card(&carol)})
    );
    let (status, entry) = app
        .post(
            "/me/contacts/",
            &alice.token,
            json!({"friend_username": "carol"}),
        )
        .await;
    assert_eq!(
        (status, &entry["mutual"]),
        (StatusCode::ACCEPTED, &json!(true))
    );
    assert_eq!(
        c.json().await,
        json!({"type": "contact_accepted", "user": card(&alice)})
    );

    // Nobody else learns of any of it.
    d.silent_for(std::time::Duration::from_millis(500)).await;
    b.silent_for(std::time::Duration::from_millis(100)).await;
}
