//! The web messenger (`web/`): static files embedded in the binary at build
//! time, served at `/` (the page) and `/app/...` (its modules and styles).
//! The page encrypts in the browser; nothing here sees a message.

use axum::{
    Router,
    extract::Path,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use rust_embed::RustEmbed;

use crate::{error::ApiError, state::AppState};

#[derive(RustEmbed)]
#[folder = "web/"]
struct Files;

/// Only this origin's scripts, styles and sockets; no frames, no plugins, no
/// inline script: what a script injected into a message could do is little.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; manifest-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/",
            get(|headers: HeaderMap| async move { serve("index.html", headers).await }),
        )
        .route(
            "/app/{*file}",
            get(|Path(file): Path<String>, headers: HeaderMap| async move {
                serve(&file, headers).await
            }),
        )
}

async fn serve(path: &str, request: HeaderMap) -> Response {
    let Some(file) = Files::get(path) else {
        return ApiError::NotFound("Not Found").into_response();
    };
    // Revalidated on every load (a new binary serves new files at once),
    // answered 304 while unchanged.
    let etag = format!(
        "\"{}\"",
        file.metadata
            .sha256_hash()
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let unchanged = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag));
    let mut headers = HeaderMap::new();
    let mime = file.metadata.mimetype();
    let content_type = if mime.starts_with("text/") || mime.ends_with("javascript") {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_owned()
    };
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&content_type).expect("a MIME type is a header value"),
    );
    headers.insert(
        header::ETAG,
        HeaderValue::from_str(&etag).expect("hex is a header value"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if unchanged {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    (headers, file.data.into_owned()).into_response()
}
