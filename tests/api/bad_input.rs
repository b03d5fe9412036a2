//! Whatever a client sends, the answer is a clear 4xx: never a 500 or a hang.

use reqwest::{Method, StatusCode};

use crate::helpers::spawn;

const BODIES: &[&str] = &[
    "",
    "not json",
    "{",
    "[]",
    "null",
    "42",
    r#"{"username": null}"#,
    r#"{"username": ["a"], "email": {}, "password": 1, "public_key": true}"#,
    r#"{"recipient_username": "x' OR '1'='1", "encrypted_content": "x"}"#,
    r#"{"friend_username": "'; DROP TABLE users; --"}"#,
    r#"{"friend_id": 9223372036854775807}"#,
    r#"{"friend_id": -1}"#,
    r#"{"port": 1e99}"#,
    r#"{"port": -5}"#,
    "\u{0}\u{1}\u{2}",
];

#[tokio::test]
async fn malformed_bodies_on_every_route_get_4xx() {
    let app = spawn().await;
    let alice = app.user("alice").await;
    let routes = [
        (Method::POST, "/users/"),
        (Method::POST, "/token"),
        (Method::POST, "/logout"),
        (Method::POST, "/me/contacts/"),
        (Method::PUT, "/me/connection-info"),
        (Method::POST, "/messages/"),
        (Method::PUT, "/me/contacts/1"),
        (Method::DELETE, "/me/contacts/1"),
    ];
    for (method, path) in routes {
        for body in BODIES {
            for content_type in [
                "application/json",
                "text/plain",
                "application/x-www-form-urlencoded",
            ] {
                let response = app
                    .http
                    .request(method.clone(), app.url(path))
                    .bearer_auth(&alice.token)
                    .header("content-type", content_type)
                    .body(body.to_string())
                    .send()
                    .await
                    .unwrap();
                let status = response.status();
                assert!(
                    status.is_success() || status.is_client_error(),
                    "{method} {path} {body:?}: {status}"
                );
            }
        }
    }
    // After all that, alice's token still works (only /logout could end it, and
    // it did): log in again and carry on.
    let token = app.login("alice", None).await;
    assert_eq!(app.get("/users/me", &token).await.0, StatusCode::OK);
}

#[tokio::test]
async fn oversized_bodies_are_413_on_every_body_route() {
    let app = spawn().await;
    let alice = app.user("alice").await;
    let big = format!(r#"{{"x": "{}"}}"#, "y".repeat(65 * 1024));
    for (method, path) in [
        (Method::POST, "/users/"),
        (Method::POST, "/token"),
        (Method::POST, "/me/contacts/"),
        (Method::PUT, "/me/connection-info"),
        (Method::POST, "/messages/"),
    ] {
        let response = app
            .http
            .request(method.clone(), app.url(path))
            .bearer_auth(&alice.token)
            .header("content-type", "application/json")
            .body(big.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn hostile_path_and_query_values_get_4xx_or_empty_answers() {
    let app = spawn().await;
    let alice = app.user("alice").await;
    for path in [
        "/users/'%20OR%201=1--/connection-info",
        "/users/%00/connection-info",
        "/users/search/%F0%9F%92%A3",
        "/users/search/%22%3B%20DROP%20TABLE%20users",
        "/users/search/a?limit=-1",
        "/users/search/a?limit=99999999999999999999",
        "/me/contacts/?skip=abc",
        "/me/contacts/?limit=1e3",
        "/me/contacts/99999999999999999999999",
    ] {
        let (status, _) = app.call(Method::GET, path, Some(&alice.token), None).await;
        assert!(
            status.is_success() || status.is_client_error(),
            "{path}: {status}"
        );
    }
    for path in [
        "/me/contacts/99999999999999999999999",
        "/me/contacts/1.5",
        "/me/contacts/-",
    ] {
        assert_eq!(
            app.put(path, &alice.token, None).await.0,
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }
}

#[tokio::test]
async fn authorization_headers_of_every_shape_are_401() {
    let app = spawn().await;
    for value in [
        "",
        "Bearer",
        "Bearer ",
        "Basic YWxpY2U6cHc=",
        "Bearer a.b.c",
        "bearer x",
        "Token abc",
    ] {
        let response = app
            .http
            .get(app.url("/users/me"))
            .header("authorization", value)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{value:?}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
    }
}
