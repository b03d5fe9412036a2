//! Spawns the real server on a random port with its own database, and talks to it
//! over HTTP and WebSocket like a client would.

use std::{net::SocketAddr, time::Duration};

use futures_util::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use secchat::{
    config::{LogFormat, Settings},
    startup::App,
};
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::{net::TcpStream, sync::oneshot, task::JoinHandle};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, connect_async,
    tungstenite::{Message, protocol::frame::coding::CloseCode},
};

/// The secret test apps sign with, so tests can forge tokens.
pub const JWT_SECRET: &str = "test-secret-test-secret-test-secret!";

pub struct TestApp {
    pub addr: SocketAddr,
    /// Where `/metrics` is served, when `METRICS_BIND` gave it its own listener.
    pub metrics_addr: Option<SocketAddr>,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
    /// The backend of a single-replica test lives as long as its app.
    _backend: Option<Backend>,
}

pub struct TestUser {
    pub id: i64,
    pub name: String,
    pub token: String,
}

/// Where one test's data lives: a fresh SQLite file (the embedded default), or,
/// with `SECCHAT_TEST_BACKEND=cluster`, a fresh Postgres schema and Redis key
/// prefix on the servers named by `TEST_DATABASE_URL` and `TEST_REDIS_URL`.
/// Replicas built on one `Backend` share its data.
pub struct Backend {
    pub database_url: String,
    pub redis: Option<RedisSpace>,
    _dir: tempfile::TempDir,
}

/// A Redis server and the key prefix a test's replicas share on it.
pub struct RedisSpace {
    pub url: String,
    pub prefix: String,
}

pub fn cluster_requested() -> bool {
    std::env::var("SECCHAT_TEST_BACKEND").is_ok_and(|b| b == "cluster")
}

pub fn test_database_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub fn test_redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// `TEST_LOG=<filter>` (e.g. `TEST_LOG=debug`, `TEST_LOG=secchat=trace`)
/// shows the servers' logs in the test output.
fn logs_if_asked() {
    if let Ok(filter) = std::env::var("TEST_LOG") {
        secchat::telemetry::init_with(LogFormat::Text, &filter);
    }
}

impl Backend {
    pub async fn new() -> Self {
        if cluster_requested() {
            Self::cluster().await
        } else {
            Self::embedded()
        }
    }

    pub fn embedded() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let database_url = format!("sqlite://{}", dir.path().join("test.db").display());
        Self {
            database_url,
            redis: None,
            _dir: dir,
        }
    }

    /// Postgres and Redis, each test in its own schema and key prefix.
    pub async fn cluster() -> Self {
        Self::cluster_on_redis(&test_redis_url()).await
    }

    pub async fn cluster_on_redis(redis_url: &str) -> Self {
        let base = test_database_url();
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let admin = sqlx::PgPool::connect(&base)
            .await
            .expect("Postgres reachable at TEST_DATABASE_URL");
        sqlx::query(&format!("CREATE SCHEMA {name}"))
            .execute(&admin)
            .await
            .expect("schema created");
        admin.close().await;
        let separator = if base.contains('?') { '&' } else { '?' };
        Self {
            database_url: format!("{base}{separator}options=-c%20search_path%3D{name}"),
            redis: Some(RedisSpace {
                url: redis_url.into(),
                prefix: name,
            }),
            _dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// A database of this test's own, created on `server` (a `postgres://`
    /// URL without a database) and reached at `reached_at/<name>` (through a
    /// pooler, say), with a Redis key prefix on `TEST_REDIS_URL`.
    pub async fn own_database(server: &str, reached_at: &str) -> Self {
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let admin = sqlx::PgPool::connect(&format!("{server}/postgres"))
            .await
            .expect("Postgres reachable");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .expect("database created");
        admin.close().await;
        Self {
            database_url: format!("{reached_at}/{name}"),
            redis: Some(RedisSpace {
                url: test_redis_url(),
                prefix: name,
            }),
            _dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// A backend on a database that exists already (one a test restored,
    /// say), with a fresh Redis key prefix where tests use Redis: what is in
    /// Redis is not backed up.
    pub fn on_database(database_url: String) -> Self {
        let prefix = format!("r_{}", uuid::Uuid::new_v4().simple());
        Self {
            database_url,
            redis: cluster_requested().then(|| RedisSpace {
                url: test_redis_url(),
                prefix,
            }),
            _dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// Runs one SQL statement on this backend's database, as an operator (or
    /// an earlier release) would.
    pub async fn execute(&self, sql: &str) {
        if self.database_url.starts_with("sqlite:") {
            let db = sqlx::SqlitePool::connect(&self.database_url).await.unwrap();
            sqlx::query(sql).execute(&db).await.unwrap();
        } else {
            let db = sqlx::PgPool::connect(&self.database_url).await.unwrap();
            sqlx::query(sql).execute(&db).await.unwrap();
        }
    }

    /// The settings of a replica on this backend, on a free port.
    pub fn settings(&self) -> Settings {
        let mut settings = Settings::default();
        settings.listen.bind = "127.0.0.1:0".parse().unwrap();
        settings.storage.database_url = self.database_url.clone();
        settings.accounts.jwt_secret = Some(SecretString::from(JWT_SECRET));
        if let Some(redis) = &self.redis {
            settings.storage.redis_url = Some(redis.url.clone());
            settings.storage.redis_prefix = redis.prefix.clone();
        }
        settings
    }

    /// The same settings as command-line flags, for a replica in its own process.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec!["--database-url".into(), self.database_url.clone()];
        if let Some(redis) = &self.redis {
            args.extend([
                "--redis-url".into(),
                redis.url.clone(),
                "--redis-prefix".into(),
                redis.prefix.clone(),
            ]);
        }
        args.extend(["--jwt-secret".into(), JWT_SECRET.into()]);
        args
    }

    /// A replica in this process, with `configure` applied to its settings.
    pub async fn spawn(&self, configure: impl FnOnce(&mut Settings)) -> TestApp {
        let mut settings = self.settings();
        configure(&mut settings);
        TestApp::start(settings).await
    }
}

/// A server on this test's own backend.
pub async fn spawn() -> TestApp {
    spawn_with(|_| {}).await
}

/// A server that shows every user's presence to everyone, as the seed's did
/// (`ADDRESS_VISIBILITY=open`): online/offline notices reach every connected user.
pub async fn spawn_open() -> TestApp {
    spawn_with(|s| s.presence.address_visibility = secchat::config::Visibility::Open).await
}

/// A server with some settings changed, e.g. `|s| s.presence.presence_lease_secs = 1`.
/// The backend's data lives as long as the returned app.
pub async fn spawn_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    let backend = Backend::new().await;
    let mut app = backend.spawn(configure).await;
    app._backend = Some(backend);
    app
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The public key `register` gives a user: `pk-{name}`, with each character
/// that base64 text cannot hold as `_`.
pub fn public_key_of(name: &str) -> String {
    let base64 = |c: char| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '-' | '_');
    let key: String = name
        .chars()
        .map(|c| if base64(c) { c } else { '_' })
        .collect();
    format!("pk-{key}")
}

pub fn password_of(name: &str) -> String {
    format!("pw-{name}-secret")
}

impl TestApp {
    /// A client of a server running elsewhere (a process of its own).
    pub fn at(addr: SocketAddr) -> TestApp {
        TestApp {
            addr,
            metrics_addr: None,
            http: reqwest::Client::new(),
            stop: None,
            server: None,
            _backend: None,
        }
    }

    /// A server built from exactly these settings.
    pub async fn start(settings: Settings) -> TestApp {
        logs_if_asked();
        let app = App::build(settings).await.expect("app builds");
        let addr = app.local_addr();
        let metrics_addr = app.metrics_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until_stopped(async {
            let _ = stopped.await;
        }));
        TestApp {
            addr,
            metrics_addr,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            stop: Some(stop),
            server: Some(server),
            _backend: None,
        }
    }

    /// The database of an app of [`spawn`].
    pub fn database_url(&self) -> &str {
        &self
            ._backend
            .as_ref()
            .expect("an app of spawn()")
            .database_url
    }

    /// How many stored messages' content is `LIKE` `pattern` (without `%`
    /// or `_`, equal to it), read from the database itself.
    pub async fn stored_like(&self, pattern: &str) -> i64 {
        let url = self.database_url();
        let query = "SELECT COUNT(*) FROM messages WHERE encrypted_content LIKE $1";
        if url.starts_with("sqlite:") {
            let db = sqlx::SqlitePool::connect(url).await.unwrap();
            sqlx::query_scalar(query)
                .bind(pattern)
                .fetch_one(&db)
                .await
                .unwrap()
        } else {
            let db = sqlx::PgPool::connect(url).await.unwrap();
            sqlx::query_scalar(query)
                .bind(pattern)
                .fetch_one(&db)
                .await
                .unwrap()
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/ws{}", self.addr, query)
    }

    /// Sends a request with an optional bearer token and JSON body; returns the
    /// status and the body parsed as JSON (`Value::Null` when empty).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let text = response.text().await.expect("body read");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        assert!(status.as_u16() < 500, "{path} answered {status}: {value}");
        (status, value)
    }

    /// The contents of the unread messages `GET /messages/` hands `token`'s
    /// user (and so marks read), oldest first.
    pub async fn inbox(&self, token: &str) -> Vec<String> {
        let (status, inbox) = self.get("/messages/", token).await;
        assert_eq!(status, StatusCode::OK, "{inbox}");
        inbox
            .as_array()
            .expect("a list")
            .iter()
            .map(|m| m["encrypted_content"].as_str().unwrap().to_owned())
            .collect()
    }

    /// The body of `GET path`, unauthenticated, as text (pages, `/metrics`).
    pub async fn text(&self, path: &str) -> String {
        let response = self.http.get(self.url(path)).send().await.unwrap();
        response.text().await.unwrap()
    }

    /// The value of one series of `/metrics` (`name{labels}` as exported),
    /// 0 when it is not there yet. Every server of a test process shares one
    /// recorder: compare a value before and after, never an exact count.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.text("/metrics").await;
        let prefix = format!("{series} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    pub async fn put(&self, path: &str, token: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call(Method::PUT, path, Some(token), body).await
    }

    pub async fn delete(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, Some(token), None).await
    }

    pub async fn register(&self, name: &str) -> Value {
        let (status, body) = self
            .call(
                Method::POST,
                "/users/",
                None,
                Some(json!({
                    "username": name,
                    "email": format!("{name}@example.com"),
                    "password": password_of(name),
                    "public_key": public_key_of(name),
                })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "register {name}: {body}");
        body
    }

    /// Logs in with the url-encoded form; `port` is the declared P2P port.
    pub async fn login(&self, name: &str, port: Option<u16>) -> String {
        let body = self.login_with(name, port).await;
        assert_eq!(body["token_type"], "bearer");
        body["access_token"].as_str().unwrap().to_owned()
    }

    /// Logs in; the whole answer (access and refresh tokens).
    pub async fn login_answer(&self, name: &str) -> Value {
        self.login_with(name, None).await
    }

    async fn login_with(&self, name: &str, port: Option<u16>) -> Value {
        let mut form = vec![
            ("username", name.to_owned()),
            ("password", password_of(name)),
        ];
        if let Some(port) = port {
            form.push(("port", port.to_string()));
        }
        let response = self
            .http
            .post(self.url("/token"))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "login {name}");
        response.json().await.unwrap()
    }

    /// `POST /token/refresh` with the token as a form; the status and answer.
    pub async fn refresh(&self, refresh_token: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .post(self.url("/token/refresh"))
            .form(&[("refresh_token", refresh_token)])
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// `POST /token` with this password, optionally through a proxy that
    /// sends `X-Forwarded-For`; returns the status.
    pub async fn try_login(
        &self,
        name: &str,
        password: &str,
        forwarded_for: Option<&str>,
    ) -> StatusCode {
        let mut request = self.http.post(self.url("/token"));
        if let Some(hops) = forwarded_for {
            request = request.header("x-forwarded-for", hops);
        }
        let form = [("username", name), ("password", password)];
        request.form(&form).send().await.unwrap().status()
    }

    /// `token`'s user adds `friend` as a contact; returns the status.
    pub async fn add_contact(&self, token: &str, friend: &str) -> StatusCode {
        let body = json!({"friend_username": friend});
        self.post("/me/contacts/", token, body).await.0
    }

    /// Registers and logs in.
    pub async fn user(&self, name: &str) -> TestUser {
        let id = self.register(name).await["id"].as_i64().unwrap();
        let token = self.login(name, None).await;
        TestUser {
            id,
            name: name.to_owned(),
            token,
        }
    }

    /// Two users that have accepted each other.
    pub async fn friends(&self, a: &str, b: &str) -> (TestUser, TestUser) {
        let (a, b) = (self.user(a).await, self.user(b).await);
        assert_eq!(
            self.add_contact(&a.token, &b.name).await,
            StatusCode::ACCEPTED
        );
        let (status, _) = self
            .call(
                Method::PUT,
                &format!("/me/contacts/{}", a.id),
                Some(&b.token),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        (a, b)
    }

    pub async fn ws(&self, token: &str) -> WsClient {
        let (stream, _) = connect_async(self.ws_url(&format!("?token={token}")))
            .await
            .expect("ws connects");
        WsClient { stream }
    }

    /// A WebSocket that acknowledges its messages (`?ack=manual`).
    pub async fn ws_manual(&self, token: &str) -> WsClient {
        let (stream, _) = connect_async(self.ws_url(&format!("?token={token}&ack=manual")))
            .await
            .expect("ws connects");
        WsClient { stream }
    }

    /// Stops the server the way SIGTERM does, and waits for it to finish.
    pub async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        let server = self.server.take().unwrap();
        tokio::time::timeout(Duration::from_secs(15), server)
            .await
            .expect("server stops in time")
            .unwrap()
            .unwrap();
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(server) = &self.server {
            server.abort();
        }
    }
}

pub struct WsClient {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// How long a test waits for a frame that should come.
pub const PATIENCE: Duration = Duration::from_secs(5);

impl WsClient {
    pub async fn send_text(&mut self, text: &str) {
        self.stream
            .send(Message::text(text))
            .await
            .expect("ws send");
    }

    pub async fn send_json(&mut self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    /// The next text frame; pings and pongs are skipped (but do not extend
    /// the wait).
    pub async fn text(&mut self) -> String {
        self.text_within(PATIENCE).await
    }

    /// The next text frame within `patience` (a large transfer on a busy
    /// machine may take longer than `PATIENCE` between frames).
    pub async fn text_within(&mut self, patience: Duration) -> String {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .expect("a frame in time")
                .expect("the stream is open")
                .expect("a valid frame");
            match frame {
                Message::Text(text) => return text.to_string(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    pub async fn json(&mut self) -> Value {
        self.json_within(PATIENCE).await
    }

    /// The next JSON frame within `patience`. Presence notices (plain text,
    /// never JSON) are skipped: one published just before this connection
    /// opened may still reach it, through a replica that reads its
    /// subscription late. Tests of notices read them with `text`.
    pub async fn json_within(&mut self, patience: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let text = self.text_within(left).await;
            if !text.starts_with("系统消息: ") {
                break serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
            }
        }
    }

    /// `{"type": "ack", "ids"}`.
    pub async fn ack(&mut self, ids: &[i64]) {
        self.send_json(serde_json::json!({"type": "ack", "ids": ids}))
            .await;
    }

    /// Closes from the client's side, as a client that leaves does.
    pub async fn leave(mut self) {
        let _ = self.stream.close(None).await;
        // Until the server answers the close: it has let the connection go.
        let _ = tokio::time::timeout(PATIENCE, async {
            while let Some(Ok(_)) = self.stream.next().await {}
        })
        .await;
    }

    /// The next frame, which must be an `{"error"}` frame; returns its text.
    /// Presence notices (plain text, about other users coming and going
    /// whenever they do) are skipped.
    pub async fn error(&mut self) -> String {
        let frame = loop {
            let text = self.text().await;
            if !text.starts_with("系统消息") {
                break serde_json::from_str::<Value>(&text)
                    .unwrap_or_else(|_| panic!("not JSON: {text}"));
            }
        };
        frame["error"]
            .as_str()
            .unwrap_or_else(|| panic!("expected an error frame, got {frame}"))
            .to_owned()
    }

    /// Whether `text` is the notice of one of `users` coming online.
    fn online_notice_of(text: &str, users: &[&str]) -> bool {
        users
            .iter()
            .any(|user| text == format!("系统消息: 用户 {user} 已上线。"))
    }

    /// The next text frame that is not the notice of one of `users` coming
    /// online: one published just before this connection opened may still
    /// reach it through a replica that reads its subscription late.
    pub async fn text_but_notices_of(&mut self, users: &[&str]) -> String {
        loop {
            let text = self.text().await;
            if !Self::online_notice_of(&text, users) {
                return text;
            }
        }
    }

    /// Asserts that no text frame arrives within `wait` but notices of
    /// `users` coming online (see [`WsClient::text_but_notices_of`]).
    pub async fn silent_but_notices_of(&mut self, users: &[&str], wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(Some(Ok(Message::Text(text)))) if Self::online_notice_of(&text, users) => {
                    continue;
                }
                Ok(other) => panic!("expected silence, got {other:?}"),
            }
        }
    }

    /// Asserts that no text frame arrives within `wait`.
    pub async fn silent_for(&mut self, wait: Duration) {
        self.silent_but_notices_of(&[], wait).await
    }

    /// Reads until the server closes; returns the close code and reason.
    pub async fn closed(&mut self) -> (u16, String) {
        loop {
            let frame = tokio::time::timeout(PATIENCE, self.stream.next())
                .await
                .expect("close in time");
            match frame {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (u16::from(frame.code), frame.reason.to_string());
                }
                Some(Ok(Message::Close(None))) => {
                    return (u16::from(CloseCode::Status), String::new());
                }
                Some(Ok(_)) => continue,
                Some(Err(err)) => panic!("connection failed instead of closing: {err}"),
                None => panic!("stream ended without a close frame"),
            }
        }
    }
}

/// Polls `check` until it holds or `PATIENCE` runs out.
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_within(what, PATIENCE, check).await
}

/// Polls `check` until it holds or `patience` runs out.
pub async fn eventually_within<F, Fut>(what: &str, patience: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + patience;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
