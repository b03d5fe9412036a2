//! Health, readiness, metrics, and the API documentation. `/metrics` is served
//! beside the API, or alone on an internal listener (`METRICS_BIND`).

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use serde_json::json;
use utoipa::OpenApi;
use utoipa_swagger_ui::Config;

use super::ApiDoc;
use crate::{service, state::AppState};

pub fn router() -> Router<AppState> {
    let docs = Arc::new(Config::from("/openapi.json"));
    let index = docs.clone();
    let pages = Router::new()
        .route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
        .route("/docs", get(move || docs_index(index.clone())))
        .route(
            "/docs/{*file}",
            get(move |Path(file): Path<String>| docs_file(file, docs.clone())),
        )
        .layer(axum::middleware::map_response(docs_headers));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(pages)
}

/// Swagger UI shares the messenger's origin: its pages get a policy of their
/// own (its scripts and styles from here only; Swagger UI sets inline styles),
/// may not be framed, and are never sniffed into another type.
const DOCS_CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

async fn docs_headers(mut response: Response) -> Response {
    use axum::http::{HeaderValue, header};
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(DOCS_CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200)))]
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// The store and the presence and fan-out backends answer, and the server is not
/// shutting down.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses((status = 200), (status = 503)))]
async fn readyz(State(state): State<AppState>) -> Response {
    let probe = state.health.probe().await;
    let up = |backend: &str| probe.iter().any(|(name, up, _)| *name == backend && *up);
    let draining = state.shutdown.is_cancelled();
    let ready = service::health::ready(&probe, draining);
    let body = json!({
        "status": if ready { "ready" } else { "unavailable" },
        "store": up("store"), "presence": up("presence"), "bus": up("bus"), "draining": draining,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// `/metrics` alone.
pub fn metrics_router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, content_type = "text/plain")))]
async fn metrics(State(state): State<AppState>) -> Response {
    let probe = state.health.probe().await;
    let ready = service::health::ready(&probe, state.shutdown.is_cancelled());
    crate::metrics::readiness(&probe, ready);
    state.metrics.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// Swagger UI's page, with asset links made absolute so that it works at both
/// `/docs` and `/docs/` without a redirect.
async fn docs_index(config: Arc<Config<'static>>) -> Response {
    match utoipa_swagger_ui::serve("index.html", config) {
        Ok(Some(file)) => Html(under_docs(&String::from_utf8_lossy(&file.bytes))).into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// `page` with every relative `href` and `src` (`./a.css`, `a.css`) made
/// absolute under `/docs/`: relative links would resolve against `/` from
/// the page at `/docs`.
fn under_docs(page: &str) -> String {
    let mut out = String::with_capacity(page.len() + 64);
    let mut rest = page;
    while let Some(at) = ["href=\"", "src=\""]
        .iter()
        .filter_map(|attribute| rest.find(attribute).map(|i| i + attribute.len()))
        .min()
    {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let value = &rest[..rest.find('"').unwrap_or(rest.len())];
        // Not a path from the root, a fragment, or a URL with a scheme.
        let relative = !value.starts_with(['/', '#']) && !value.contains(':');
        if relative {
            out.push_str("/docs/");
            rest = rest.strip_prefix("./").unwrap_or(rest);
        }
    }
    out.push_str(rest);
    out
}

async fn docs_file(file: String, config: Arc<Config<'static>>) -> Response {
    match utoipa_swagger_ui::serve(&file, config) {
        Ok(Some(file)) => {
            let mut response = (
                [(header::CONTENT_TYPE, file.content_type)],
                file.bytes.into_owned(),
            )
                .into_response();
            if file.gzpipped {
                response.headers_mut().insert(
                    header::CONTENT_ENCODING,
                    header::HeaderValue::from_static("gzip"),
                );
            }
            response
        }
        _ => crate::error::ApiError::NotFound("Not Found").into_response(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn relative_links_go_under_docs() {
        let page = r#"<link href="./a.css"><link href="b.css"><script src="/c.js"></script><a href="https://x.org/d">"#;
        assert_eq!(
            super::under_docs(page),
            r#"<link href="/docs/a.css"><link href="/docs/b.css"><script src="/c.js"></script><a href="https://x.org/d">"#
        );
    }
}
