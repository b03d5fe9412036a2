//! Any request to a body-reading route (the extractors for JSON, forms,
//! multipart, paths and queries) is answered below 500, in process, by the
//! whole application on an in-memory SQLite database.
#![no_main]

use std::{
    net::SocketAddr,
    sync::{LazyLock, OnceLock},
};

use arbitrary::Arbitrary;
use axum::{
    body::Body,
    extract::ConnectInfo,
    http::{Method, Request},
};
use libfuzzer_sys::fuzz_target;
use secchat::{
    config::{Settings, Switch},
    startup::App,
};
use tower::ServiceExt;

static RUNTIME: LazyLock<tokio::runtime::Runtime> =
    LazyLock::new(|| tokio::runtime::Runtime::new().expect("a runtime"));

/// The application, a user `fuzzer` and its token.
static APP: OnceLock<(App, String)> = OnceLock::new();

fn app() -> &'static (App, String) {
    APP.get_or_init(|| {
        RUNTIME.block_on(async {
            let mut settings = Settings::default();
            settings.listen.bind = "127.0.0.1:0".parse().unwrap();
            settings.storage.database_url = "sqlite::memory:".into();
            settings.rates.rate_limits = Switch::Off;
            let app = App::build(settings).await.expect("the app builds");
            let register = Request::post("/users/")
                .header("content-type", "application/json")
                .body(Body::from(
                    r#"{"username":"fuzzer","email":"f@example.com","password":"pw","public_key":"pk"}"#,
                ))
                .unwrap();
            send(&app, register).await;
            let login = Request::post("/token")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Body::from("username=fuzzer&password=pw"))
                .unwrap();
            let (_, body) = send(&app, login).await;
            let token = body
                .split('"')
                .nth(3)
                .expect("a token in the login answer")
                .to_owned();
            (app, token)
        })
    })
}

async fn send(app: &App, mut request: Request<Body>) -> (u16, String) {
    let peer: SocketAddr = "192.0.2.1:40000".parse().unwrap();
    request.extensions_mut().insert(ConnectInfo(peer));
    let response = app.handler().oneshot(request).await.expect("infallible");
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap_or_default();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    route: u8,
    path_tail: &'a str,
    content_type: u8,
    authorised: bool,
    body: &'a [u8],
}

const ROUTES: [(&str, &str); 8] = [
    ("POST", "/token"),
    ("POST", "/users/"),
    ("POST", "/messages/"),
    ("PUT", "/me/connection-info"),
    ("POST", "/me/contacts/"),
    ("GET", "/users/search/"),
    ("PUT", "/me/contacts/"),
    ("GET", "/me/contacts/"),
];

const CONTENT_TYPES: [&str; 5] = [
    "application/json",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=b",
    "text/plain",
    "",
];

fuzz_target!(|input: Input| {
    let (app, token) = app();
    let (method, base) = ROUTES[usize::from(input.route) % ROUTES.len()];
    // Only a path the router can parse: the fuzzer aims at the extractors.
    let path = format!("{base}{}", input.path_tail);
    let Ok(uri) = path.parse::<axum::http::Uri>() else {
        return;
    };
    let mut request = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).unwrap())
        .uri(uri);
    let content_type = CONTENT_TYPES[usize::from(input.content_type) % CONTENT_TYPES.len()];
    if !content_type.is_empty() {
        request = request.header("content-type", content_type);
    }
    if input.authorised {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request.body(Body::from(input.body.to_vec())).unwrap();
    let (status, body) = RUNTIME.block_on(send(app, request));
    assert!(status < 500, "{status} for {method} {path}: {body}");
});
