//! P2P coordination: where to reach a user directly.

use axum::{Json, Router, extract::State, routing::get};

use super::{
    extract::PathParam,
    views::{ConnectionInfo, Detail},
};
use crate::{auth::AuthUser, domain::Username, error::ApiError, state::AppState};

pub fn router() -> Router<AppState> {
    Router::new().route("/users/{username}/connection-info", get(connection_info))
}

/// A user's public key, IP and P2P port. Unknown, offline and not visible to the
/// caller all give the same 404, so strangers cannot probe.
#[utoipa::path(get, path = "/users/{username}/connection-info", tag = "p2p", security(("bearer" = [])),
    params(("username" = String, Path)),
    responses((status = 200, body = ConnectionInfo), (status = 404, body = Detail), (status = 401, body = Detail)))]
async fn connection_info(
    State(state): State<AppState>,
    user: AuthUser,
    PathParam(username): PathParam<String>,
) -> Result<Json<ConnectionInfo>, ApiError> {
    const UNAVAILABLE: ApiError = ApiError::NotFound("User not found or offline");
    let key = Username::lookup_key(&username).ok_or(UNAVAILABLE)?;
    let target = state
        .store
        .visible_user(user.id, &key, state.settings.address_visibility)
        .await?
        .ok_or(UNAVAILABLE)?;
    let at = state.presence.locate(&[target.id]).await?[0]
        .ok_or(UNAVAILABLE)?
        .at;
    Ok(Json(ConnectionInfo {
        username: target.username,
        public_key: target.public_key,
        ip_address: at.ip.to_string(),
        port: at.port,
    }))
}
