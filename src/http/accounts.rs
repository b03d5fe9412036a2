//! Registration, login, logout, the caller's profile, search, and the heartbeat.

use axum::{
    Json, Router,
    body::Bytes,
    extract::{FromRequest, Multipart, Request, State},
    http::header,
    routing::{get, post, put},
};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{
    extract::{JsonBody, PathParam, QueryParams, body_rejection},
    peer::Peer,
    views::{Detail, UserBrief, UserOut},
};
use crate::{
    auth::AuthUser,
    bus::Event,
    domain::{Email, Invalid, Password, Port, PublicKey, Username},
    error::{ApiError, ValidationItem},
    state::AppState,
    store::{NewUser, StoreError},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/users", post(register))
        .route("/token", post(login))
        .route("/logout", post(logout))
        .route("/users/me", get(me))
        .route("/users/search/{query}", get(search))
        .route("/me/connection-info", put(heartbeat))
}

#[derive(Deserialize, ToSchema)]
pub struct RegisterRequest {
    /// 1–32 letters, digits, `_`, `-`, `.`; unique regardless of case.
    username: String,
    email: String,
    /// 1–128 characters.
    password: String,
    /// The user's public encryption key, up to 16 KiB of text.
    public_key: String,
}

/// Register a user.
#[utoipa::path(post, path = "/users/", tag = "accounts", request_body = RegisterRequest,
    responses((status = 200, body = UserOut), (status = 400, body = Detail, description = "Username or email taken"),
              (status = 422, description = "Invalid or missing field")))]
async fn register(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<RegisterRequest>,
) -> Result<Json<UserOut>, ApiError> {
    let checks = (
        Username::parse(&body.username),
        Email::parse(&body.email),
        Password::parse(body.password),
        PublicKey::parse(body.public_key),
    );
    let (username, email, password, public_key) = match checks {
        (Ok(u), Ok(e), Ok(p), Ok(k)) => (u, e, p, k),
        (u, e, p, k) => {
            let errors = [u.err(), e.err(), p.err(), k.err()].into_iter().flatten();
            return Err(ApiError::Validation(errors.map(invalid_item).collect()));
        }
    };
    let password_hash = state
        .passwords
        .hash(password)
        .await
        .map_err(ApiError::Internal)?;
    let user = state
        .store
        .create_user(NewUser {
            username_key: username.key(),
            username: username.as_str().to_owned(),
            email_key: email.key(),
            email: email.as_str().to_owned(),
            password_hash,
            public_key: public_key.as_str().to_owned(),
        })
        .await
        .map_err(|e| match e {
            // One answer for both, to say no more than the contract requires.
            StoreError::Duplicate => ApiError::BadRequest("Username or email already registered"),
            other => other.into(),
        })?;
    Ok(Json(UserOut::new(user, false)))
}

fn invalid_item(invalid: Invalid) -> ValidationItem {
    ValidationItem {
        loc: vec!["body".into(), invalid.field.into()],
        msg: invalid.message,
        kind: "value_error",
    }
}

/// The login form, sent url-encoded or as multipart form data.
#[derive(ToSchema)]
#[allow(dead_code)] // documents the form for OpenAPI
pub struct LoginForm {
    username: String,
    password: String,
    /// The client's P2P port (1–65535); without it, the connection's source port.
    port: Option<u16>,
}

struct Login {
    username: String,
    password: Password,
    port: Option<Port>,
}

/// Longest form field read; a username or password is far shorter.
const FORM_FIELD_MAX: usize = 4096;

impl FromRequest<AppState> for Login {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let is_multipart = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"));
        let mut fields: Vec<(String, String)> = Vec::new();
        if is_multipart {
            let mut form = Multipart::from_request(req, state)
                .await
                .map_err(|e| multipart_error(e.status(), e.body_text()))?;
            while let Some(field) = form
                .next_field()
                .await
                .map_err(|e| multipart_error(e.status(), e.body_text()))?
            {
                let name = field.name().unwrap_or_default().to_owned();
                let value = field
                    .text()
                    .await
                    .map_err(|e| multipart_error(e.status(), e.body_text()))?;
                fields.push((name, value));
            }
        } else {
            let bytes = Bytes::from_request(req, state)
                .await
                .map_err(body_rejection)?;
            fields = serde_urlencoded::from_bytes(&bytes).map_err(|e| {
                ApiError::Validation(vec![ValidationItem {
                    loc: vec!["body".into()],
                    msg: e.to_string(),
                    kind: "value_error",
                }])
            })?;
        }
        let mut take = |name: &str| {
            fields
                .iter()
                .position(|(n, _)| n == name)
                .map(|i| fields.swap_remove(i).1)
        };
        let username = take("username")
            .filter(|u| !u.is_empty())
            .ok_or_else(|| ApiError::missing("body", "username"))?;
        let password = take("password")
            .filter(|p| !p.is_empty())
            .ok_or_else(|| ApiError::missing("body", "password"))?;
        let port = match take("port").filter(|p| !p.trim().is_empty()) {
            None => None,
            Some(raw) => Some(
                raw.trim()
                    .parse::<i64>()
                    .map_err(|_| Invalid::new("port", "must be an integer from 1 to 65535"))
                    .and_then(|n| Port::parse(n, "port"))?,
            ),
        };
        if username.len() > FORM_FIELD_MAX || password.len() > FORM_FIELD_MAX {
            return Err(ApiError::BAD_CREDENTIALS);
        }
        Ok(Login {
            username,
            password: Password::to_verify(password),
            port,
        })
    }
}

fn multipart_error(status: axum::http::StatusCode, text: String) -> ApiError {
    if status == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge
    } else {
        ApiError::Validation(vec![ValidationItem {
            loc: vec!["body".into()],
            msg: text,
            kind: "value_error",
        }])
    }
}

#[derive(Serialize, ToSchema)]
pub struct TokenOut {
    access_token: String,
    #[schema(example = "bearer")]
    token_type: &'static str,
}

/// Log in: get a bearer token, and be marked online at the caller's address.
#[utoipa::path(post, path = "/token", tag = "accounts",
    request_body(content = LoginForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, body = TokenOut), (status = 401, body = Detail), (status = 422)))]
async fn login(
    State(state): State<AppState>,
    Peer(peer): Peer,
    login: Login,
) -> Result<Json<TokenOut>, ApiError> {
    let credentials = match Username::lookup_key(&login.username) {
        Some(key) => state.store.credentials(&key).await?,
        None => None, // verified against the dummy hash below all the same
    };
    let (stored_hash, user) = match credentials {
        Some(c) => (Some(c.password_hash), Some((c.id, c.username))),
        None => (None, None),
    };
    let matches = state
        .passwords
        .verify(login.password, stored_hash)
        .await
        .map_err(ApiError::Internal)?;
    let Some((id, username)) = user.filter(|_| matches) else {
        crate::metrics::login(false);
        return Err(ApiError::BAD_CREDENTIALS);
    };
    let access_token = state
        .tokens
        .issue(id, &username)
        .map_err(ApiError::Internal)?;
    let endpoint = crate::presence::Endpoint {
        port: login.port.map_or(peer.port, |p| p.0),
        ..peer
    };
    announce(&state, id, endpoint).await?;
    crate::metrics::login(true);
    tracing::info!(user_id = id, "login");
    Ok(Json(TokenOut {
        access_token,
        token_type: "bearer",
    }))
}

/// Login and the heartbeat: the user is at `endpoint`, seen now (the same instant
/// in presence and in the store).
async fn announce(
    state: &AppState,
    user: crate::store::UserId,
    endpoint: crate::presence::Endpoint,
) -> Result<(), ApiError> {
    let now = Utc::now();
    state.presence.announce(user, endpoint, now).await?;
    Ok(state.store.touch_last_seen(user, now).await?)
}

/// Log out: the token stops working and its WebSockets close.
#[utoipa::path(post, path = "/logout", tag = "accounts", security(("bearer" = [])),
    responses((status = 200, body = Detail), (status = 401, body = Detail)))]
async fn logout(State(state): State<AppState>, user: AuthUser) -> Result<Json<Detail>, ApiError> {
    state.revocations.revoke(&user.jti, user.expires_at).await?;
    state
        .bus
        .publish(Event::CloseSessions {
            user: user.id,
            jti: user.jti.clone(),
        })
        .await?;
    let now = Utc::now();
    state.presence.sign_off(user.id, &user.jti, now).await?;
    state.store.touch_last_seen(user.id, now).await?;
    Ok(Json(Detail {
        detail: "Logged out successfully",
    }))
}

/// The caller's own user object.
#[utoipa::path(get, path = "/users/me", tag = "accounts", security(("bearer" = [])),
    responses((status = 200, body = UserOut), (status = 401, body = Detail)))]
async fn me(State(state): State<AppState>, user: AuthUser) -> Result<Json<UserOut>, ApiError> {
    let found = state
        .store
        .user_by_id(user.id)
        .await?
        .ok_or(ApiError::BAD_TOKEN)?;
    let online = state.presence.locate(&[user.id]).await?[0].is_some();
    Ok(Json(UserOut::new(found, online)))
}

#[derive(Deserialize, IntoParams)]
pub struct SearchParams {
    /// At most this many results (default 20, at most 100).
    limit: Option<u32>,
}

/// Users whose name contains `query`, ignoring case; the caller is left out.
#[utoipa::path(get, path = "/users/search/{query}", tag = "accounts", security(("bearer" = [])),
    params(("query" = String, Path, description = "Substring to find; `%` and `_` are literal"), SearchParams),
    responses((status = 200, body = [UserBrief]), (status = 401, body = Detail)))]
async fn search(
    State(state): State<AppState>,
    user: AuthUser,
    PathParam(query): PathParam<String>,
    QueryParams(params): QueryParams<SearchParams>,
) -> Result<Json<Vec<UserBrief>>, ApiError> {
    let limit = params.limit.unwrap_or(20).min(100);
    let Some(needle) = Username::search_needle(&query).filter(|_| limit > 0) else {
        return Ok(Json(Vec::new())); // nothing can match
    };
    let users = state
        .store
        .search_users(&needle, user.id, i64::from(limit))
        .await?;
    let ids: Vec<_> = users.iter().map(|u| u.id).collect();
    let online = state.presence.locate(&ids).await?;
    Ok(Json(
        users
            .into_iter()
            .zip(online)
            .map(|(u, at)| UserBrief {
                id: u.id,
                username: u.username,
                is_online: at.is_some(),
            })
            .collect(),
    ))
}

#[derive(Deserialize, ToSchema)]
pub struct HeartbeatRequest {
    /// The client's P2P port, 1–65535.
    port: i64,
}

/// The heartbeat: be online at the caller's IP and this port, and renew the lease.
#[utoipa::path(put, path = "/me/connection-info", tag = "p2p", security(("bearer" = [])),
    request_body = HeartbeatRequest,
    responses((status = 200, body = UserBrief), (status = 401, body = Detail), (status = 422)))]
async fn heartbeat(
    State(state): State<AppState>,
    user: AuthUser,
    Peer(peer): Peer,
    JsonBody(body): JsonBody<HeartbeatRequest>,
) -> Result<Json<UserBrief>, ApiError> {
    let port = Port::parse(body.port, "port")?;
    let endpoint = crate::presence::Endpoint {
        port: port.0,
        ..peer
    };
    announce(&state, user.id, endpoint).await?;
    Ok(Json(UserBrief {
        id: user.id,
        username: user.username,
        is_online: true,
    }))
}
