use reqwest::{Method, StatusCode};
use secchat::config::Settings;
use serde_json::{Value, json};

use crate::helpers::spawn;

#[tokio::test]
async fn health_and_readiness() {
    let app = spawn().await;
    let health = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let ready = app.http.get(app.url("/readyz/")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "ready");
}

/// The values of a page's `href="…"` and `src="…"` attributes.
fn linked_assets(html: &str) -> Vec<String> {
    let mut found = Vec::new();
    for attribute in ["href=\"", "src=\""] {
        let mut rest = html;
        while let Some(at) = rest.find(attribute) {
            rest = &rest[at + attribute.len()..];
            let end = rest.find('"').expect("a closed attribute");
            found.push(rest[..end].to_owned());
            rest = &rest[end..];
        }
    }
    found
}

#[tokio::test]
async fn docs_and_openapi_are_served_from_the_binary() {
    let app = spawn().await;
    for path in ["/docs", "/docs/"] {
        let page = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(page.status(), StatusCode::OK, "{path}: no redirect");
        // On the messenger's origin: a policy of its own, no framing, no sniffing.
        let headers = page.headers();
        let policy = headers["content-security-policy"].to_str().unwrap();
        assert!(policy.contains("frame-ancestors 'none'") && policy.contains("script-src 'self'"));
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["x-frame-options"], "DENY");
        let html = page.text().await.unwrap();
        assert!(
            html.contains("swagger-ui") && !html.contains("cdn"),
            "{path}"
        );
        // Every asset the page loads, resolved as a browser resolves it
        // against the page's own URL, answers 200 from either form.
        let page_url = reqwest::Url::parse(&app.url(path)).unwrap();
        let assets = linked_assets(&html);
        assert!(assets.len() >= 5, "{path}: {assets:?}");
        for asset in assets {
            let url = page_url.join(&asset).unwrap();
            let response = app.http.get(url.clone()).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{path} loads {url}");
        }
    }
    for asset in [
        "/docs/swagger-ui.css",
        "/docs/swagger-ui-bundle.js",
        "/docs/swagger-initializer.js",
    ] {
        let response = app.http.get(app.url(asset)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{asset}");
    }
    let initializer = app.text("/docs/swagger-initializer.js").await;
    assert!(initializer.contains("/openapi.json"));
    let (status, spec) = app.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let paths = spec["paths"].as_object().unwrap();
    for path in [
        "/users/",
        "/token",
        "/logout",
        "/users/me",
        "/users/search/{query}",
        "/me/connection-info",
        "/me/contacts/",
        "/me/contacts/pending",
        "/me/contacts/{user_id}",
        "/me/contacts/online",
        "/users/{username}/connection-info",
        "/messages/",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(
            paths.contains_key(path),
            "{path} missing from the OpenAPI document"
        );
    }
}

#[tokio::test]
async fn metrics_move_with_traffic_and_keep_labels_bounded() {
    let app = spawn().await;
    // Series with fixed labels are exported at zero from the start, and every
    // server of a test process shares one recorder: these must move.
    let moving = [
        r#"secchat_logins_total{result="success"}"#,
        r#"secchat_logins_total{result="failure"}"#,
        r#"secchat_online_panel_reads_total{list="uncached"}"#,
        r#"secchat_online_panel_reads_total{list="cached"}"#,
        r#"secchat_online_panel_reads_total{list="changed"}"#,
    ];
    let mut before = Vec::new();
    for series in moving {
        before.push(app.metric(series).await);
    }
    let (alice, _bob) = app.friends("metric-alice", "metric-bob").await;
    app.get("/users/metric-bob/connection-info", &alice.token)
        .await;
    // The online panel: read, read again from the cache, read after a change.
    for _ in 0..2 {
        app.get("/me/contacts/online", &alice.token).await;
    }
    app.user("metric-carol").await;
    app.post(
        "/me/contacts/",
        &alice.token,
        json!({"friend_username": "metric-carol"}),
    )
    .await;
    app.get("/me/contacts/online", &alice.token).await;
    app.http
        .post(app.url("/token"))
        .form(&[("username", "metric-alice"), ("password", "wrong")])
        .send()
        .await
        .unwrap();
    for (series, before) in moving.iter().zip(before) {
        assert!(app.metric(series).await > before, "{series} did not move");
    }
    let text = app.text("/metrics").await;
    for needle in [
        r#"secchat_http_requests_total{route="/users/{username}/connection-info",method="GET",status="200"}"#,
        "secchat_http_request_duration_seconds_bucket",
        "secchat_password_hash_seconds_count",
    ] {
        assert!(text.contains(needle), "{needle} missing");
    }
    assert!(
        !text.contains("metric-alice")
            && !text.contains("metric-bob")
            && !text.contains("metric-carol"),
        "no usernames in labels"
    );
    assert!(!text.contains("/users/metric"), "no raw paths in labels");
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_the_api_shape() {
    let app = spawn().await;
    let (status, body) = app.call(Method::GET, "/no/such/route", None, None).await;
    assert_eq!(
        (status, body),
        (StatusCode::NOT_FOUND, json!({"detail": "Not Found"}))
    );
    let (status, body) = app.call(Method::DELETE, "/token", None, None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(body["detail"].is_string());
}

#[tokio::test]
async fn every_route_answers_with_and_without_its_trailing_slash() {
    let app = spawn().await;
    let (alice, bob) = app.friends("alice", "bob").await;
    let routes = [
        (Method::GET, "/users/me"),
        (Method::GET, "/users/search/bob"),
        (Method::GET, "/me/contacts"),
        (Method::GET, "/me/contacts/pending"),
        (Method::GET, "/me/contacts/online"),
        (Method::GET, "/users/bob/connection-info"),
        (Method::GET, "/messages"),
        (Method::GET, "/healthz"),
        (Method::GET, "/readyz"),
        (Method::GET, "/metrics"),
        (Method::GET, "/openapi.json"),
    ];
    for (method, path) in routes {
        for form in [path.to_owned(), format!("{path}/")] {
            let response = app
                .http
                .request(method.clone(), app.url(&form))
                .bearer_auth(&alice.token)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{method} {form}");
        }
    }
    let body = json!({"port": 4000});
    for form in ["/me/connection-info", "/me/connection-info/"] {
        assert_eq!(
            app.put(form, &bob.token, Some(body.clone())).await.0,
            StatusCode::OK
        );
    }
}

#[tokio::test]
async fn the_embedded_default_keeps_its_generated_secret_across_restarts() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("chat.db").display());
    let settings = || {
        let mut s = Settings::default();
        s.listen.bind = "127.0.0.1:0".parse().unwrap();
        s.storage.database_url = db.clone();
        s
    };
    let first = crate::helpers::TestApp::start(settings()).await;
    let alice = first.user("alice").await;
    first.stop().await;

    let secret = dir.path().join("chat.db.jwt-secret");
    let mode = std::fs::metadata(&secret)
        .expect("secret kept beside the database")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(std::fs::read_to_string(&secret).unwrap().trim().len() >= 32);

    let second = crate::helpers::TestApp::start(settings()).await;
    assert_eq!(
        second.get("/users/me", &alice.token).await.0,
        StatusCode::OK,
        "a token from before the restart still works"
    );
}

#[tokio::test]
async fn postgres_without_an_explicit_secret_refuses_to_start() {
    let mut settings = Settings::default();
    settings.listen.bind = "127.0.0.1:0".parse().unwrap();
    settings.storage.database_url = "postgres://nobody@127.0.0.1:1/none".into();
    let error = secchat::startup::App::build(settings)
        .await
        .err()
        .expect("refused");
    assert!(error.to_string().contains("JWT_SECRET"), "{error:#}");
}

#[tokio::test]
async fn bad_secrets_are_refused_without_being_quoted() {
    let long = "long-enough-secret-long-enough-secret";
    for (flag, value, hidden, why) in [
        (
            "--jwt-secret",
            "too-short-secret",
            "too-short",
            "at least 32 bytes",
        ),
        (
            "--jwt-keys",
            &format!("next:{long},bad id:{long}") as &str,
            "long-enough",
            "an id is",
        ),
        ("--turn-secret", "", "", "must not be empty"),
        (
            "--database-url",
            "mysql://app:hunter2@db/app",
            "hunter2",
            "must be sqlite://",
        ),
    ] {
        let error = Settings::from_args([flag, value]).unwrap_err().to_string();
        assert!(error.contains(flag) && error.contains(why), "{error}");
        assert!(hidden.is_empty() || !error.contains(hidden), "{error}");
    }
    let both = Settings::from_args(["--jwt-secret", long, "--jwt-keys", &format!("a:{long}")]);
    assert!(
        both.unwrap_err()
            .to_string()
            .contains("cannot be used with")
    );
}

/// A deleted name must stay retired longer than replicas remember names, or
/// one could resolve to an account that is gone after someone else took it.
#[tokio::test]
async fn a_name_retention_shorter_than_the_name_cache_is_refused() {
    let backend = crate::helpers::Backend::embedded();
    let mut settings = backend.settings();
    settings.accounts.deleted_name_retention_secs = 60;
    let refused = secchat::startup::App::build(settings).await;
    let message = format!("{:#}", refused.err().expect("refused"));
    assert!(message.contains("DELETED_NAME_RETENTION_SECS"), "{message}");
}

#[tokio::test]
async fn relay_metrics_move_with_websocket_traffic() {
    let app = crate::helpers::spawn_with(|s| {
        s.presence.presence_lease_secs = 3;
        s.presence.address_visibility = secchat::config::Visibility::Open;
    })
    .await;
    let alice = app.user("ws-alice").await;
    let bob = app.user("ws-bob").await;
    let mut a = app.ws(&alice.token).await;
    let mut b = app.ws(&bob.token).await;
    a.text().await;
    a.send_json(json!({"recipient_username": "ws-bob", "content": "x"}))
        .await;
    b.json().await;
    b.send_text("to all").await;
    a.text().await;
    drop(b);
    assert_eq!(a.text().await, "系统消息: 用户 ws-bob 已下线。");
    a.send_json(json!({"recipient_username": "ws-bob", "content": "y"}))
        .await;
    a.json().await;
    // The online-users gauge is refreshed with each presence renewal (lease /
    // 3). The recorder is the process's, and the other tests' servers set the
    // same gauge to their own counts, so wait for a reading of this server's.
    let scrape = || app.text("/metrics");
    let gauge = |text: &str, needle: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(needle))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    let deadline = tokio::time::Instant::now() + crate::helpers::PATIENCE;
    let text = loop {
        let text = scrape().await;
        if gauge(&text, "secchat_online_users").is_some_and(|n| n >= 1.0) {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the online-users gauge never counted alice"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let value = |needle: &str| -> f64 {
        gauge(&text, needle).unwrap_or_else(|| panic!("{needle} missing from\n{text}"))
    };
    assert!(value(r#"secchat_ws_deliveries_total{kind="direct"}"#) >= 1.0);
    assert!(value(r#"secchat_ws_deliveries_total{kind="broadcast"}"#) >= 1.0);
    assert!(value(r#"secchat_messages_stored_total{via="offline"}"#) >= 1.0);
    assert!(value(r#"secchat_bus_published_total{kind="direct"}"#) >= 2.0);
    assert!(value(r#"secchat_bus_received_total{kind="broadcast"}"#) >= 1.0);
    assert!(value("secchat_ws_connections") >= 1.0);
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(
            !line.contains("ws-alice") && !line.contains("ws-bob"),
            "{line}"
        );
    }
}

/// The real binary, with JSON logs at debug level: every line is JSON, requests
/// and WebSocket sessions carry a request id, and no secret or body is logged.
#[tokio::test]
async fn logs_are_json_with_request_ids_and_no_secrets() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    let port = crate::helpers::free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_secchat"))
        .args([
            "--bind",
            &format!("127.0.0.1:{port}"),
            "--log-format",
            "json",
        ])
        .env("RUST_LOG", "debug")
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    crate::helpers::eventually("the server answers", || {
        let (http, base) = (&http, &base);
        async move { http.get(format!("{base}/healthz")).send().await.is_ok() }
    })
    .await;
    let password = "PASSWORD-never-logged";
    let body = "BODY-never-logged";
    for name in ["logalice", "logbob"] {
        let user = json!({"username": name, "email": format!("{name}@example.com"), "password": password, "public_key": "k"});
        http.post(format!("{base}/users/"))
            .json(&user)
            .send()
            .await
            .unwrap();
    }
    let login: Value = http
        .post(format!("{base}/token"))
        .form(&[("username", "logalice"), ("password", password)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["access_token"].as_str().unwrap().to_owned();
    http.post(format!("{base}/messages/"))
        .bearer_auth(&token)
        .json(&json!({"recipient_username": "logbob", "encrypted_content": body}))
        .send()
        .await
        .unwrap();
    {
        let (stream, _) =
            tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws?token={token}"))
                .await
                .unwrap();
        let mut ws = crate::helpers::WsClient { stream };
        ws.send_json(json!({"recipient_username": "logbob", "content": body}))
            .await;
        ws.json().await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let pid = child.id().unwrap().to_string();
    tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    child.wait().await.unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();

    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not a JSON line: {l}")))
        .collect();
    assert!(lines.len() > 5, "{out}");
    for secret in [
        password,
        body,
        token.as_str(),
        token.split('.').nth(2).unwrap(),
    ] {
        assert!(!out.contains(secret), "{secret} appears in the logs");
    }
    let with_request_id = |message: &str| {
        lines.iter().any(|l| {
            l["message"] == message
                && l["spans"]
                    .as_array()
                    .is_some_and(|spans| spans.iter().any(|s| s["request_id"].is_string()))
        })
    };
    assert!(with_request_id("login"), "{out}");
    assert!(with_request_id("websocket open"), "{out}");
    assert!(with_request_id("websocket closed"), "{out}");
}

#[tokio::test]
async fn the_healthcheck_flag_probes_a_running_server() {
    let app = crate::helpers::spawn().await;
    let probe = |addr: String| async move {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_secchat"))
            .args(["--healthcheck", "--bind", &addr])
            .status()
            .await
            .unwrap()
            .success()
    };
    assert!(probe(app.addr.to_string()).await);
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    assert!(!probe(closed).await);
}

#[tokio::test]
async fn cors_allows_only_the_configured_origins() {
    let app = crate::helpers::spawn_with(|s| {
        s.listen.cors_origins = vec!["https://chat.example.com".into()]
    })
    .await;
    let preflight = |origin: &'static str| {
        app.http
            .request(Method::OPTIONS, app.url("/users/me"))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let allowed = preflight("https://chat.example.com").await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://chat.example.com"
    );
    let other = preflight("https://evil.example.net").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
}

/// With `METRICS_BIND`, `/metrics` is served on that internal listener only.
#[tokio::test]
async fn metrics_can_move_to_an_internal_listener() {
    let app = crate::helpers::spawn_with(|s| {
        s.telemetry.metrics_bind = Some("127.0.0.1:0".parse().unwrap())
    })
    .await;
    let (status, _) = app.call(reqwest::Method::GET, "/metrics", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let internal = app.metrics_addr.expect("a metrics listener");
    let response = app
        .http
        .get(format!("http://{internal}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.text().await.unwrap().contains("secchat_"));
    // Nothing else is served there.
    let other = app
        .http
        .get(format!("http://{internal}/users/me"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
}

/// Tokens stay out of the logs, even at debug level: the request span names
/// the path only, never the query string that may carry `?token=`.
#[tokio::test]
async fn tokens_never_reach_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", crate::helpers::free_port());
    let log = dir.path().join("server.log");
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_secchat"))
        .args([
            "--bind",
            &addr,
            "--database-url",
            &format!("sqlite://{}", dir.path().join("db.sqlite").display()),
        ])
        .env("RUST_LOG", "debug")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.path().join("server.err")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("the server binary starts");
    let app = crate::helpers::TestApp::at(addr.parse().unwrap());
    crate::helpers::eventually("the server is ready", || async {
        app.http
            .get(app.url("/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK)
    })
    .await;
    let (alice, bob) = app.friends("alice", "bob").await;
    let mut a = app.ws(&alice.token).await;
    a.send_json(json!({"recipient_username": "bob", "content": "hi"}))
        .await;
    a.json().await;
    let mut b = app.ws_manual(&bob.token).await;
    let pushed = b.json().await;
    b.ack(&[pushed["id"].as_i64().unwrap()]).await;
    // A token in the query of an HTTP request too.
    let (status, _) = app
        .get(&format!("/me/contacts?token={}", alice.token), &alice.token)
        .await;
    assert_eq!(status, StatusCode::OK);
    drop((a, b, child));
    let mut logged = std::fs::read_to_string(&log).unwrap();
    logged += &std::fs::read_to_string(dir.path().join("server.err")).unwrap();
    assert!(logged.contains("websocket open"), "the logs were written");
    for token in [&alice.token, &bob.token] {
        let signature = token.rsplit('.').next().unwrap();
        assert!(!logged.contains(signature), "a token in the logs");
    }
}

/// Text logs are coloured on a terminal only: a file or a pipe gets plain
/// text, and `NO_COLOR` turns colour off on a terminal too. `script` gives
/// the server a pseudo-terminal as its standard output.
#[tokio::test]
async fn logs_are_coloured_only_on_a_terminal_without_no_color() {
    use std::process::Stdio;
    let run = |terminal: bool, no_color: Option<&'static str>| async move {
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("127.0.0.1:{}", crate::helpers::free_port());
        let server = format!(
            "{} --bind {addr} --database-url sqlite://{}",
            env!("CARGO_BIN_EXE_secchat"),
            dir.path().join("db.sqlite").display()
        );
        let pid_file = dir.path().join("pid");
        let mut command = if terminal {
            let mut script = tokio::process::Command::new("script");
            script.args([
                "-qfec",
                &format!("echo $$ > {}; exec {server}", pid_file.display()),
                "/dev/null",
            ]);
            script
        } else {
            let mut shell = tokio::process::Command::new("sh");
            shell.args([
                "-c",
                &format!("echo $$ > {}; exec {server}", pid_file.display()),
            ]);
            shell
        };
        command.env_remove("NO_COLOR").env_remove("RUST_LOG");
        if let Some(value) = no_color {
            command.env("NO_COLOR", value);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("script (util-linux) and the server start");
        let app = crate::helpers::TestApp::at(addr.parse().unwrap());
        crate::helpers::eventually("the server is ready", || async {
            app.http
                .get(app.url("/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK)
        })
        .await;
        // A request logged at info level, then a clean stop.
        let (status, _) = app.call(Method::GET, "/nowhere", None, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        let killed = tokio::process::Command::new("kill")
            .args(["-TERM", pid.trim()])
            .status()
            .await
            .unwrap();
        assert!(killed.success());
        let output = child.wait_with_output().await.unwrap();
        let logged = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        assert!(logged.contains("INFO"), "the logs were written: {logged}");
        logged
    };
    let escape = "\u{1b}[";
    let piped = run(false, None).await;
    assert!(!piped.contains(escape), "colour codes in a pipe: {piped:?}");
    let terminal = run(true, None).await;
    assert!(
        terminal.contains(escape),
        "no colour on a terminal: {terminal:?}"
    );
    for value in ["1", "0"] {
        let plain = run(true, Some(value)).await;
        assert!(!plain.contains(escape), "NO_COLOR={value}: {plain:?}");
    }
    let empty = run(true, Some("")).await;
    assert!(empty.contains(escape), "an empty NO_COLOR keeps colour");
}

/// One setting as documented: its heading, variable, flag, and default (as
/// `--help` prints it; the README's default cell starts with it in backquotes).
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Documented {
    heading: String,
    variable: String,
    flag: String,
    default: Option<String>,
}

/// The settings `secchat --help` lists, under their headings.
fn settings_in_help() -> Vec<Documented> {
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_secchat"))
        .arg("--help")
        .output()
        .expect("secchat --help runs");
    assert!(help.status.success());
    let help = String::from_utf8(help.stdout).unwrap();
    let mut found: Vec<Documented> = Vec::new();
    let (mut heading, mut flag) = (String::new(), None::<String>);
    for line in help.lines() {
        let trimmed = line.trim();
        if !line.starts_with(' ') && trimmed.ends_with(':') {
            heading = trimmed.trim_end_matches(':').to_owned();
        } else if let Some(long) = trimmed
            .split(' ')
            .find_map(|word| word.trim_end_matches(',').strip_prefix("--"))
            .filter(|_| trimmed.starts_with('-'))
        {
            flag = Some(format!("--{long}"));
        } else if let Some(variable) = trimmed
            .strip_prefix("[env: ")
            .and_then(|rest| rest.split(['=', ']']).next())
        {
            found.push(Documented {
                heading: heading.clone(),
                variable: variable.to_owned(),
                flag: flag.clone().expect("an [env] line follows its flag"),
                default: None,
            });
        } else if let Some(default) = trimmed
            .strip_prefix("[default: ")
            .and_then(|rest| rest.strip_suffix(']'))
        {
            let last = found.last_mut().expect("a default follows its [env] line");
            last.default = Some(default.to_owned());
        }
    }
    found
}

/// The rows of README.md's settings tables, under their `###` headings.
fn settings_in_readme(help: &[Documented]) -> Vec<Documented> {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("\n## Settings\n")
        .nth(1)
        .expect("README.md has a Settings section");
    let section = section.split("\n## ").next().unwrap();
    let mut found = Vec::new();
    let mut heading = String::new();
    for line in section.lines() {
        if let Some(h) = line.strip_prefix("### ") {
            heading = h.to_owned();
            continue;
        }
        let cells: Vec<&str> = line
            .split(" | ")
            .map(|c| c.trim_matches('|').trim())
            .collect();
        let [variable, flag, default, _meaning] = cells[..] else {
            continue;
        };
        let (Some(variable), Some(flag)) = (
            variable.strip_prefix('`').and_then(|v| v.strip_suffix('`')),
            flag.strip_prefix('`').and_then(|f| f.strip_suffix('`')),
        ) else {
            continue; // the header row
        };
        // The default as help prints it, if the README's cell starts with it.
        let printed = help
            .iter()
            .find(|d| d.variable == variable)
            .and_then(|d| d.default.clone())
            .filter(|printed| default.starts_with(&format!("`{printed}`")));
        found.push(Documented {
            heading: heading.clone(),
            variable: variable.to_owned(),
            flag: flag.to_owned(),
            default: printed,
        });
    }
    found
}

#[test]
fn the_readme_lists_every_setting_as_help_does() {
    let mut help = settings_in_help();
    let mut readme = settings_in_readme(&help);
    assert!(help.len() > 40, "help lists the settings: {help:?}");
    help.sort();
    readme.sort();
    let missing: Vec<_> = help.iter().filter(|d| !readme.contains(d)).collect();
    let extra: Vec<_> = readme.iter().filter(|d| !help.contains(d)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "README.md's settings tables differ from `secchat --help` (heading, variable, flag, default):\n\
         only in --help: {missing:#?}\nonly in README.md: {extra:#?}"
    );
}

/// The real binary, its standard output and error one pipe whose reader goes
/// away at once (`cargo run --release 2>&1 | head -1`): it goes on serving,
/// logging all the while, instead of dying of the first failed log write.
#[tokio::test]
async fn the_server_outlives_whatever_read_its_logs() {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::helpers::free_port();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_secchat"))
        .args(["--bind", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "debug")
        .current_dir(dir.path())
        .stdout(writer.try_clone().unwrap())
        .stderr(writer)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    crate::helpers::eventually("the server answers", || {
        let (http, base) = (&http, &base);
        async move { http.get(format!("{base}/healthz")).send().await.is_ok() }
    })
    .await;
    // Every request logs (debug): many writes to the broken pipe.
    for _ in 0..20 {
        let status = http
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::OK);
    }
    assert!(child.try_wait().unwrap().is_none(), "the server exited");
}

/// README's first command in an environment that sets the server's
/// variables to the empty string (an env file's `VAR=`, compose's
/// `${VAR:-}`): every one counts as unset, and the binary serves its
/// defaults (the embedded store) instead of refusing to start.
#[tokio::test]
async fn settings_set_to_the_empty_string_count_as_unset() {
    use clap::CommandFactory as _;
    let dir = tempfile::tempdir().unwrap();
    let port = crate::helpers::free_port();
    let command = secchat::config::Settings::command();
    let names: Vec<String> = command
        .get_arguments()
        .filter_map(|arg| arg.get_env())
        .map(|name| name.to_string_lossy().into_owned())
        .collect();
    for name in [
        "DATABASE_URL",
        "REDIS_URL",
        "TURN_SECRET",
        "LOG_FORMAT",
        "BIND",
    ] {
        assert!(names.iter().any(|n| n == name), "{name} is a setting");
    }
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_secchat"));
    for name in &names {
        server.env(name, "");
    }
    let mut child = server
        .args(["--bind", &format!("127.0.0.1:{port}")])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let ready = format!("http://127.0.0.1:{port}/readyz");
    crate::helpers::eventually("the server is ready on its defaults", || {
        let (http, ready) = (&http, &ready);
        async move {
            http.get(ready.as_str())
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the server is still running"
    );
    assert!(
        dir.path().join("secchat.db").exists(),
        "the embedded default's file"
    );
    child.kill().await.unwrap();
}
