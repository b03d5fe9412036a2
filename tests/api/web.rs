//! The web messenger's files, served from the binary. (The messenger itself
//! is tested in Chromium: tests/web/.)

use reqwest::{StatusCode, header};

use crate::helpers::spawn;

#[tokio::test]
async fn the_page_and_its_modules_are_served_with_a_strict_policy() {
    let app = spawn().await;
    let page = app.http.get(app.url("/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let headers = page.headers().clone();
    assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
    let policy = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(policy.contains(directive), "{directive} in {policy}");
    }
    assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    let html = page.text().await.unwrap();
    // Everything the page loads comes from this server, and is there.
    for asset in ["/app/app.css", "/app/main.js"] {
        assert!(html.contains(asset), "{asset} linked");
    }
    for module in [
        "main.js",
        "api.js",
        "crypto.js",
        "db.js",
        "relay.js",
        "app.css",
    ] {
        let file = app
            .http
            .get(app.url(&format!("/app/{module}")))
            .send()
            .await
            .unwrap();
        assert_eq!(file.status(), StatusCode::OK, "{module}");
        let kind = file.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            kind.starts_with(if module.ends_with(".js") {
                "text/javascript"
            } else {
                "text/css"
            }),
            "{kind}"
        );
        let body = file.text().await.unwrap();
        assert!(!body.is_empty());
        // No script from elsewhere (no CDN).
        assert!(
            !body.contains("https://"),
            "{module} loads nothing from elsewhere"
        );
    }
}

#[tokio::test]
async fn an_unchanged_file_is_not_sent_again_and_unknown_ones_are_404() {
    let app = spawn().await;
    let first = app
        .http
        .get(app.url("/app/crypto.js"))
        .send()
        .await
        .unwrap();
    let etag = first.headers()[header::ETAG].clone();
    assert_eq!(first.headers()[header::CACHE_CONTROL], "no-cache");
    let again = app
        .http
        .get(app.url("/app/crypto.js"))
        .header(header::IF_NONE_MATCH, etag.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(again.headers()[header::ETAG], etag);
    let other = app
        .http
        .get(app.url("/app/crypto.js"))
        .header(header::IF_NONE_MATCH, "\"something-else\"")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::OK);
    for path in [
        "/app/missing.js",
        "/app/",
        "/app/../Cargo.toml",
        "/app/%2e%2e/Cargo.toml",
        "/app/..%2fsrc%2fmain.rs",
        "/index.html.bak",
    ] {
        let answer = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(answer.status(), StatusCode::NOT_FOUND, "{path}");
        let body: serde_json::Value = answer.json().await.unwrap();
        assert_eq!(body["detail"], "Not Found", "{path}");
    }
}
