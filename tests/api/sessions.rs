//! Sessions that last (API.md): refresh tokens, rotated at every use, with
//! reuse detection; ended by logout, logout everywhere, a password change and
//! deletion; lapsing unused; limited per address.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, password_of, spawn, spawn_with};

fn token(answer: &Value, field: &str) -> String {
    answer[field].as_str().unwrap().to_owned()
}

async fn works(app: &TestApp, access_token: &str) -> bool {
    app.get("/users/me", access_token).await.0 == StatusCode::OK
}

#[tokio::test]
async fn refresh_tokens_rotate_and_each_works_once() {
    let app = spawn_with(|s| s.accounts.token_ttl_secs = 600).await;
    app.register("alice").await;
    let first = app.login_answer("alice").await;
    assert_eq!(first["token_type"], "bearer");
    assert_eq!(first["expires_in"], 600);
    let r1 = token(&first, "refresh_token");
    assert!(r1.len() >= 22, "at least 128 bits: {r1}");

    // As a form...
    let (status, second) = app.refresh(&r1).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(second["token_type"], "bearer");
    assert_eq!(second["expires_in"], 600);
    let (a2, r2) = (
        token(&second, "access_token"),
        token(&second, "refresh_token"),
    );
    assert_ne!(r2, r1);
    assert!(works(&app, &a2).await);
    let (_, me) = app.get("/users/me", &a2).await;
    assert_eq!(me["username"], "alice");

    // ...and as JSON, without the trailing slash or with it.
    let response = app
        .http
        .post(app.url("/token/refresh/"))
        .json(&json!({"refresh_token": r2}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let third: Value = response.json().await.unwrap();
    assert!(works(&app, &token(&third, "access_token")).await);
    assert!(
        works(&app, &a2).await,
        "earlier access tokens live out their time"
    );
}

/// A spent refresh token presented again (a thief's copy, or the owner's
/// after the thief's use) revokes the whole login: its access tokens, its
/// refresh tokens and its WebSockets; another login of the user is untouched.
#[tokio::test]
async fn a_reused_refresh_token_revokes_its_whole_login() {
    let app = spawn().await;
    app.register("alice").await;
    let stolen = app.login_answer("alice").await;
    let elsewhere = app.login_answer("alice").await;
    let r1 = token(&stolen, "refresh_token");
    let (_, second) = app.refresh(&r1).await;
    let (a2, r2) = (
        token(&second, "access_token"),
        token(&second, "refresh_token"),
    );
    let mut socket = app.ws(&a2).await;

    let (status, answer) = app.refresh(&r1).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    assert!(
        answer["detail"].as_str().unwrap().contains("already used"),
        "{answer}"
    );
    assert!(!works(&app, &a2).await, "the access token of the rotation");
    assert!(
        !works(&app, &token(&stolen, "access_token")).await,
        "the login's first"
    );
    assert_eq!(app.refresh(&r2).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(socket.closed().await.0, 1008);

    assert!(works(&app, &token(&elsewhere, "access_token")).await);
    let (status, _) = app.refresh(&token(&elsewhere, "refresh_token")).await;
    assert_eq!(status, StatusCode::OK, "the other login goes on");
}

/// Two refreshes racing with one token: exactly one wins, and the other is
/// a reuse, which ends the login.
#[tokio::test]
async fn racing_refreshes_with_one_token_never_both_succeed() {
    let app = spawn().await;
    app.register("alice").await;
    let r1 = token(&app.login_answer("alice").await, "refresh_token");
    let (a, b) = tokio::join!(app.refresh(&r1), app.refresh(&r1));
    let statuses = [a.0, b.0];
    assert!(statuses.contains(&StatusCode::UNAUTHORIZED), "{statuses:?}");
    for (status, answer) in [a, b] {
        if status == StatusCode::OK {
            assert!(!works(&app, &token(&answer, "access_token")).await);
            let (again, _) = app.refresh(&token(&answer, "refresh_token")).await;
            assert_eq!(again, StatusCode::UNAUTHORIZED);
        }
    }
}

#[tokio::test]
async fn logout_ends_its_login_and_account_controls_end_the_others() {
    let app = spawn().await;
    app.register("alice").await;

    // Logout: its own login's refresh token stops, another login's does not.
    let one = app.login_answer("alice").await;
    let two = app.login_answer("alice").await;
    let (_, rotated) = app.refresh(&token(&one, "refresh_token")).await;
    app.post("/logout", &token(&rotated, "access_token"), json!({}))
        .await;
    assert_eq!(
        app.refresh(&token(&rotated, "refresh_token")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert!(
        !works(&app, &token(&one, "access_token")).await,
        "the login's earlier access token goes too"
    );
    let (status, two) = app.refresh(&token(&two, "refresh_token")).await;
    assert_eq!(status, StatusCode::OK);

    // A password change: every login but the caller's.
    let three = app.login_answer("alice").await;
    let change = json!({"old_password": password_of("alice"), "new_password": "a-new-long-secret"});
    let (status, _) = app
        .call(
            Method::PUT,
            "/users/me/password",
            Some(&token(&three, "access_token")),
            Some(change),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        app.refresh(&token(&two, "refresh_token")).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, three) = app.refresh(&token(&three, "refresh_token")).await;
    assert_eq!(status, StatusCode::OK, "the caller's own login goes on");

    // Logging out everywhere: all of them.
    app.post("/logout/all", &token(&three, "access_token"), json!({}))
        .await;
    assert_eq!(
        app.refresh(&token(&three, "refresh_token")).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn deleting_the_account_ends_its_logins() {
    let app = spawn().await;
    app.register("alice").await;
    let session = app.login_answer("alice").await;
    let response = app
        .http
        .delete(app.url("/users/me"))
        .bearer_auth(token(&session, "access_token"))
        .json(&json!({"password": password_of("alice")}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let (status, _) = app.refresh(&token(&session, "refresh_token")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn refresh_tokens_lapse_unused() {
    let app = spawn_with(|s| s.accounts.refresh_idle_secs = 1).await;
    app.register("alice").await;
    let session = app.login_answer("alice").await;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let (status, answer) = app.refresh(&token(&session, "refresh_token")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    assert!(
        answer["detail"].as_str().unwrap().contains("log in again"),
        "{answer}"
    );
}

#[tokio::test]
async fn refreshes_are_limited_per_address() {
    let app = spawn_with(|s| s.rates.refresh_rate_per_ip = "2/hour".parse().unwrap()).await;
    app.register("alice").await;
    let mut current = token(&app.login_answer("alice").await, "refresh_token");
    for _ in 0..2 {
        let (status, answer) = app.refresh(&current).await;
        assert_eq!(status, StatusCode::OK);
        current = token(&answer, "refresh_token");
    }
    let response = app
        .http
        .post(app.url("/token/refresh"))
        .form(&[("refresh_token", current.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key("retry-after"));
}

#[tokio::test]
async fn bad_refresh_requests_are_clear_4xx() {
    let app = spawn().await;
    let url = app.url("/token/refresh");
    for (body, content_type, expected) in [
        (
            "",
            "application/x-www-form-urlencoded",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "refresh_token=",
            "application/x-www-form-urlencoded",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        ("{}", "application/json", StatusCode::UNPROCESSABLE_ENTITY),
        (
            "{\"refresh_token\": 5}",
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        ("[1,", "application/json", StatusCode::UNPROCESSABLE_ENTITY),
        (
            "refresh_token=made-up",
            "application/x-www-form-urlencoded",
            StatusCode::UNAUTHORIZED,
        ),
    ] {
        let response = app
            .http
            .post(&url)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), expected, "{body:?}");
        if expected == StatusCode::UNAUTHORIZED {
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
        }
    }
    let huge = format!("refresh_token={}", "x".repeat(200_000));
    let response = app
        .http
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
}
