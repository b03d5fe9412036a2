//! P2P coordination: where to reach a user directly, and relay credentials
//! for when a direct connection fails.

use axum::{Json, Router, extract::State, routing::get};

use super::views::{ConnectionInfo, Detail, TurnCredentialsOut};
use crate::{error::ApiError, extract::PathParam, service::authn::AuthUser, state::AppState};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/users/{username}/connection-info", get(connection_info))
        .route("/me/turn-credentials", get(turn_credentials))
}

/// Short-lived credentials for the configured TURN servers (coturn's REST
/// API: `use-auth-secret` with the same `TURN_SECRET`), for clients whose
/// direct connection fails. `404` when no TURN server is configured.
#[utoipa::path(get, path = "/me/turn-credentials", tag = "p2p", security(("bearer" = [])),
    responses((status = 200, body = TurnCredentialsOut), (status = 404, body = Detail, description = "No TURN server is configured"),
              (status = 401, body = Detail)))]
async fn turn_credentials(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<TurnCredentialsOut>, ApiError> {
    Ok(Json(state.accounts.turn_credentials(&user).await?.into()))
}

/// A user's public key, IP and P2P port. Unknown, offline and not visible to the
/// caller all give the same 404, so strangers cannot probe.
#[utoipa::path(get, path = "/users/{username}/connection-info", tag = "p2p", security(("bearer" = [])),
    params(("username" = String, Path, example = "bob")),
    responses((status = 200, body = ConnectionInfo), (status = 404, body = Detail), (status = 401, body = Detail)))]
async fn connection_info(
    State(state): State<AppState>,
    user: AuthUser,
    PathParam(username): PathParam<String>,
) -> Result<Json<ConnectionInfo>, ApiError> {
    let (target, at) = state.contacts.connection_info(&user, &username).await?;
    Ok(Json(ConnectionInfo {
        username: target.username,
        public_key: target.public_key,
        ip_address: at.ip.to_string(),
        port: at.port,
    }))
}
