//! Property-based fuzzing from outside: generated bodies, content types, query
//! strings and WebSocket frames against a running server. Whatever arrives,
//! an HTTP request is answered below 500 with a FastAPI-shaped error, and a
//! WebSocket frame is answered (if at all) with a JSON frame while the
//! connection stays open. `PROPTEST_CASES=10000 cargo test --test api fuzz`
//! runs longer (README: Fuzzing).

use futures_util::{SinkExt, StreamExt};
use proptest::{
    prelude::*,
    test_runner::{Config, TestCaseError, TestRunner},
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use secchat::config::Switch;

use crate::helpers::{PATIENCE, TestApp, spawn_with};

/// Cases per property: proptest's default, or `PROPTEST_CASES`.
fn runner() -> TestRunner {
    TestRunner::new(Config {
        failure_persistence: None,
        ..Config::default()
    })
}

/// A server the fuzzer may hammer from one address, with a signed-in user
/// `fuzzer` and another user `bob`.
fn server(rt: &tokio::runtime::Runtime) -> (TestApp, String) {
    rt.block_on(async {
        let app = spawn_with(|s| s.rates.rate_limits = Switch::Off).await;
        let fuzzer = app.user("fuzzer").await;
        app.register("bob").await;
        (app, fuzzer.token)
    })
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        "(?s).{0,40}".prop_map(Value::from),
        Just(Value::from("bob")),
        Just(Value::from(8080)),
    ];
    leaf.prop_recursive(2, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::hash_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Field names the routes read, and some they do not.
fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("username"),
        Just("password"),
        Just("port"),
        Just("email"),
        Just("public_key"),
        Just("recipient_username"),
        Just("encrypted_content"),
        Just("friend_username"),
        Just("friend_id"),
        Just("other"),
    ]
    .prop_map(str::to_owned)
}

/// A body: raw bytes, a JSON object of known fields, a form, or multipart.
fn body() -> impl Strategy<Value = (Option<String>, Vec<u8>)> {
    let fields = prop::collection::vec((field(), json_value()), 0..5);
    let pairs = || prop::collection::vec((field(), "(?s).{0,30}"), 0..5);
    prop_oneof![
        (
            prop::option::of(prop_oneof![
                Just("application/json".to_owned()),
                Just("application/x-www-form-urlencoded".to_owned()),
                Just("multipart/form-data; boundary=b".to_owned()),
                Just("text/plain".to_owned()),
                "[ -~]{0,40}",
            ]),
            prop::collection::vec(any::<u8>(), 0..300),
        ),
        fields.prop_map(|fields| {
            let object: serde_json::Map<String, Value> = fields.into_iter().collect();
            (
                Some("application/json".to_owned()),
                Value::Object(object).to_string().into_bytes(),
            )
        }),
        pairs().prop_map(|pairs| {
            (
                Some("application/x-www-form-urlencoded".to_owned()),
                serde_urlencoded::to_string(&pairs).unwrap().into_bytes(),
            )
        }),
        pairs().prop_map(|pairs| {
            let mut body = String::new();
            for (name, value) in pairs {
                body.push_str(&format!(
                    "--b\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
                ));
            }
            body.push_str("--b--\r\n");
            (
                Some("multipart/form-data; boundary=b".to_owned()),
                body.into_bytes(),
            )
        }),
    ]
}

fn request() -> impl Strategy<Value = (Method, String, bool)> {
    let segment = "[^/?#]{0,20}".prop_map(|s| urlencoding(&s));
    let number = prop_oneof![
        "-?[0-9]{1,22}",
        Just("".to_owned()),
        "[a-z%.]{1,5}".prop_map(|s| s.to_owned()),
    ];
    prop_oneof![
        Just((Method::POST, "/token".to_owned(), false)),
        Just((Method::POST, "/users/".to_owned(), false)),
        Just((Method::POST, "/messages/".to_owned(), true)),
        Just((Method::PUT, "/me/connection-info".to_owned(), true)),
        Just((Method::POST, "/me/contacts/".to_owned(), true)),
        (segment.clone(), number.clone()).prop_map(|(q, n)| (
            Method::GET,
            format!("/users/search/{q}?limit={n}"),
            true
        )),
        (number.clone(), number.clone()).prop_map(|(s, l)| (
            Method::GET,
            format!("/me/contacts/?skip={s}&limit={l}"),
            true
        )),
        number.prop_map(|id| (Method::PUT, format!("/me/contacts/{id}"), true)),
        segment.prop_map(|u| (Method::GET, format!("/users/{u}/connection-info"), true)),
    ]
}

fn urlencoding(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn http_requests_of_any_shape_get_a_clear_answer() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (app, token) = server(&rt);
    runner()
        .run(
            &(request(), body()),
            |((method, path, authed), (content_type, body))| {
                let (status, text) = rt.block_on(async {
                    let mut request = app.http.request(method, app.url(&path)).body(body);
                    if let Some(content_type) = content_type {
                        request = request.header("Content-Type", content_type);
                    }
                    if authed {
                        request = request.bearer_auth(&token);
                    }
                    let response = request.send().await.expect("an answer");
                    (response.status(), response.text().await.unwrap_or_default())
                });
                prop_assert!(status.as_u16() < 500, "{} {}: {}", status, path, text);
                if status.is_client_error() && status != StatusCode::METHOD_NOT_ALLOWED {
                    let value: Value = serde_json::from_str(&text).map_err(|_| {
                        TestCaseError::fail(format!("{status} {path}: not JSON: {text}"))
                    })?;
                    prop_assert!(
                        value.get("detail").is_some(),
                        "{} {}: {}",
                        status,
                        path,
                        text
                    );
                }
                Ok(())
            },
        )
        .unwrap();
    rt.block_on(async {
        let (status, _) = app.call(Method::GET, "/healthz", None, None).await;
        assert_eq!(status, StatusCode::OK);
    });
}

/// A frame the fuzzer sends: text of any kind, a directed message with odd
/// fields, binary, or a ping.
fn frame() -> impl Strategy<Value = Message> {
    let recipient = prop_oneof![Just("fuzzer".to_owned()), Just("bob".to_owned()), ".{0,40}"];
    prop_oneof![
        "(?s).{0,200}".prop_map(Message::text),
        json_value().prop_map(|v| Message::text(v.to_string())),
        (
            recipient,
            json_value(),
            prop::collection::hash_map(field(), json_value(), 0..3)
        )
            .prop_map(|(recipient, content, extra)| {
                let mut object: serde_json::Map<String, Value> = extra.into_iter().collect();
                object.insert("recipient_username".into(), recipient.into());
                object.insert("content".into(), content);
                Message::text(Value::Object(object).to_string())
            }),
        prop::collection::vec(any::<u8>(), 0..200).prop_map(Message::binary),
        prop::collection::vec(any::<u8>(), 0..100).prop_map(|b| Message::Ping(b.into())),
    ]
}

#[test]
fn websocket_frames_of_any_shape_get_a_json_answer_or_none() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (app, token) = server(&rt);
    // `run` takes a shared closure; the connection and the count live in cells.
    let ws = std::cell::RefCell::new(rt.block_on(app.ws(&token)));
    let sentinel = std::cell::Cell::new(0u64);
    runner()
        .run(&frame(), |frame| {
            sentinel.set(sentinel.get() + 1);
            let marker = format!("sentinel-{}", sentinel.get());
            let mut ws = ws.borrow_mut();
            rt.block_on(async {
                ws.stream.send(frame).await.expect("the connection is open");
                // A message to oneself comes back after whatever the frame caused.
                ws.send_json(json!({"recipient_username": "fuzzer", "content": marker}))
                    .await;
                loop {
                    let next = tokio::time::timeout(PATIENCE, ws.stream.next())
                        .await
                        .map_err(|_| TestCaseError::fail("no answer in time"))?;
                    let text = match next {
                        Some(Ok(Message::Text(text))) => text.to_string(),
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        other => {
                            return Err(TestCaseError::fail(format!("closed or odd: {other:?}")));
                        }
                    };
                    let value: Value = serde_json::from_str(&text)
                        .map_err(|_| TestCaseError::fail(format!("not JSON: {text}")))?;
                    if value["content"] == marker.as_str() {
                        return Ok(());
                    }
                    let known = value.get("error").is_some_and(Value::is_string)
                        || value.get("status").is_some_and(Value::is_string)
                        || value["type"] == "p2p_message";
                    prop_assert!(known, "{}", text);
                    prop_assert!(
                        text.len() < 512 || value["type"] == "p2p_message",
                        "{}",
                        text
                    );
                }
            })
        })
        .unwrap();
}
