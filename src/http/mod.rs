//! The HTTP API: one file per resource, each with its own `router()`.

use std::time::Instant;

use axum::{
    Router,
    extract::{DefaultBodyLimit, MatchedPath, Request},
    http::StatusCode,
    middleware::{self, Next},
    response::Response,
};
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

use crate::{error::ApiError, state::AppState};

mod accounts;
mod contacts;
mod messages;
mod ops;
mod p2p;
mod views;
mod web;

#[derive(OpenApi)]
#[openapi(
    info(title = "secchat", description = "Secure instant-messaging server: accounts, contacts, presence for P2P, \
        a WebSocket relay at `/ws?token=<jwt>`, and offline messages. Every route also answers without (or with) \
        its trailing slash.\n\nThe WebSocket token may also come as `Authorization: Bearer <jwt>`, or as the first frame \
        `{\"type\": \"auth\", \"token\": \"<jwt>\"}` within `WS_AUTH_TIMEOUT_SECS` (else close `1008`). \
        On the WebSocket, besides the seed's frames: `{\"type\": \"auth\", \"token\": \"<jwt>\"}` renews \
        the connection with a newer token of the same user (answer `{\"type\": \"authenticated\", \"expires_at\"}`); \
        without renewal the connection closes with `1008` `WS_TOKEN_GRACE_SECS` after its token expires. A contact's \
        new public key arrives as `{\"type\": \"key_changed\", \"username\", \"public_key\"}`. A broadcast with a \
        line break is refused with `{\"error\"}`. Presence (`is_online`, `last_seen`, addresses, notices) is shown \
        only to users the subject accepted, unless the server runs with `ADDRESS_VISIBILITY=open`.\n\n\
        Reliable delivery (opt-in): connect with `/ws?ack=manual` and offline and directed messages carry their \
        `\"id\"`; acknowledge with `{\"type\": \"ack\", \"ids\": [...]}` (at most 1000); what is unacknowledged when the \
        connection ends is delivered again, oldest first, on the next connection (any replica). A directed frame may \
        carry `\"client_id\"` (1-64 characters): the sender then gets `{\"type\": \"sent\", \"client_id\", \"id\"}` once \
        the message was handed to a replica holding the recipient or stored, the same `sent` (and no second delivery) \
        for a repeat within `DEDUP_WINDOW_SECS`, and `{\"type\": \"delivered\", \"id\"}` when the recipient \
        acknowledges it. One sender's messages arrive in the order sent."),
    paths(
        accounts::register, accounts::login, accounts::refresh, accounts::logout, accounts::logout_everywhere, accounts::me,
        accounts::change_password, accounts::change_public_key, accounts::delete_account,
        accounts::search, accounts::heartbeat,
        contacts::add, contacts::list, contacts::pending, contacts::accept, contacts::remove, contacts::online,
        p2p::connection_info, p2p::turn_credentials, messages::send, messages::fetch, messages::ack,
        ops::healthz, ops::readyz, ops::metrics,
    ),
    modifiers(&BearerAuth),
    tags((name = "accounts"), (name = "contacts"), (name = "p2p"), (name = "messages"), (name = "operations"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// Every HTTP route of the API, `/metrics` too unless it has a listener of
/// its own; the WebSocket route is merged beside it by `startup`.
pub fn router(with_metrics: bool) -> Router<AppState> {
    let routes = Router::new()
        .merge(accounts::router())
        .merge(contacts::router())
        .merge(p2p::router())
        .merge(messages::router())
        .merge(ops::router())
        .merge(web::router());
    if with_metrics {
        routes.merge(ops::metrics_router())
    } else {
        routes
    }
}

pub use ops::metrics_router;

/// What every route shares: the 404 and 405 answers, the body limit, and
/// request metrics.
pub fn finish(routes: Router<AppState>, state: AppState) -> Router {
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.settings.listen.max_body_bytes))
        .layer(middleware::from_fn(record_metrics))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("Not Found")
}

async fn method_not_allowed() -> (StatusCode, axum::Json<views::Detail>) {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        axum::Json(views::Detail {
            detail: "Method Not Allowed",
        }),
    )
}

async fn record_metrics(request: Request, next: Next) -> Response {
    let started = Instant::now();
    // The route template, never the raw path, keeps label values a fixed set.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let method = request.method().clone();
    let response = next.run(request).await;
    crate::metrics::http_request(
        &route,
        method.as_str(),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}
