//! Registration, login, logout, the caller's profile, search, and the heartbeat.

use axum::{
    Json, Router,
    body::Bytes,
    extract::{FromRequest, Multipart, Request, State},
    http::header,
    routing::{get, post, put},
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::views::{Detail, UserBrief, UserOut};
use crate::{
    domain::{Invalid, Password, Port},
    error::{ApiError, ValidationItem},
    extract::{JsonBody, PathParam, Peer, QueryParams, body_rejection, whole_number},
    service::{accounts::Login, authn::AuthUser, sessions::Grant},
    state::AppState,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/users", post(register))
        .route("/token", post(login))
        .route("/token/refresh", post(refresh))
        .route("/logout", post(logout))
        .route("/logout/all", post(logout_everywhere))
        .route("/users/me", get(me).delete(delete_account))
        .route("/users/me/password", put(change_password))
        .route("/users/me/public-key", put(change_public_key))
        .route("/users/search/{query}", get(search))
        .route("/me/connection-info", put(heartbeat))
}

#[derive(Deserialize, ToSchema)]
pub struct RegisterRequest {
    /// 1–32 letters (of any script, but no invisible, fullwidth or styled
    /// characters), digits, `_`, `-`, `.`; unique regardless of case and of
    /// lookalike characters (`аlice` in Cyrillic is `alice`); reserved names
    /// (`系统消息`, `system`, `admin`, …) and their lookalikes are refused.
    #[schema(min_length = 1, max_length = 32, pattern = "^[\\w.-]+$")]
    username: String,
    /// A valid address, at most 254 bytes; unique regardless of case.
    #[schema(format = Email, max_length = 254)]
    email: String,
    /// 8–128 characters, not among the most common passwords.
    #[schema(min_length = 8, max_length = 128)]
    password: String,
    /// The user's public encryption key, 1 to 16,384 bytes: base64 text, or
    /// a PEM block (which may also hold spaces and line breaks).
    #[schema(min_length = 1, max_length = 16384, pattern = "^[A-Za-z0-9+/=_-]+$")]
    public_key: String,
}

/// Register a user.
#[utoipa::path(post, path = "/users/", tag = "accounts", request_body = RegisterRequest,
    responses((status = 200, body = UserOut), (status = 400, body = Detail, description = "Username or email taken"),
              (status = 422, description = "Invalid or missing field"),
              (status = 429, body = Detail, description = "Too many registrations from this address; wait `Retry-After` seconds"),
              (status = 503, body = Detail, description = "Too many password hashes waiting; retry after `Retry-After`")))]
async fn register(
    State(state): State<AppState>,
    Peer(peer): Peer,
    JsonBody(body): JsonBody<RegisterRequest>,
) -> Result<Json<UserOut>, ApiError> {
    let user = state
        .accounts
        .register(
            peer,
            &body.username,
            &body.email,
            body.password,
            body.public_key,
        )
        .await?;
    Ok(Json(UserOut::new(user, false)))
}

/// The login form, sent url-encoded or as multipart form data.
#[derive(ToSchema)]
#[allow(dead_code)] // documents the form for OpenAPI
pub struct LoginForm {
    /// An empty field counts as missing, as FastAPI's forms have it.
    #[schema(min_length = 1)]
    username: String,
    #[schema(min_length = 1)]
    password: String,
    /// The client's P2P port; without it, the connection's source port.
    #[schema(nullable = false, minimum = 1, maximum = 65535)]
    port: Option<u16>,
}

/// Longest form field read; a username or password is far shorter.
const FORM_FIELD_MAX: usize = 4096;

/// A login form, url-encoded or multipart.
struct LoginRequest(Login);

impl FromRequest<AppState> for LoginRequest {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let mut fields = form_fields(req, state, false).await?;
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
        Ok(LoginRequest(Login {
            username,
            password: Password::to_verify(password),
            port,
        }))
    }
}

/// The fields of a form body, url-encoded or multipart; with `json`, also a
/// JSON object of strings (`POST /token/refresh` takes either).
async fn form_fields(
    req: Request,
    state: &AppState,
    json: bool,
) -> Result<Vec<(String, String)>, ApiError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if content_type.starts_with("multipart/form-data") {
        let mut fields = Vec::new();
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
        return Ok(fields);
    }
    let bytes = Bytes::from_request(req, state)
        .await
        .map_err(body_rejection)?;
    let invalid = |msg: String| {
        ApiError::Validation(vec![ValidationItem {
            loc: vec!["body".into()],
            msg,
            kind: "value_error",
        }])
    };
    if json && content_type.starts_with("application/json") {
        let object: std::collections::HashMap<String, serde_json::Value> =
            serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
        return Ok(object
            .into_iter()
            .filter_map(|(k, v)| match v {
                serde_json::Value::String(s) => Some((k, s)),
                _ => None,
            })
            .collect());
    }
    serde_urlencoded::from_bytes(&bytes).map_err(|e| invalid(e.to_string()))
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
    /// Opaque; trade it for new tokens at `POST /token/refresh`, once.
    refresh_token: String,
    /// Seconds the access token is valid for.
    expires_in: u64,
}

impl From<Grant> for TokenOut {
    fn from(grant: Grant) -> Self {
        Self {
            access_token: grant.access_token,
            token_type: "bearer",
            refresh_token: grant.refresh_token,
            expires_in: grant.expires_in,
        }
    }
}

/// Log in: get a bearer token, and be marked online at the caller's address.
#[utoipa::path(post, path = "/token", tag = "accounts",
    request_body(content = LoginForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, body = TokenOut), (status = 401, body = Detail), (status = 422),
              (status = 429, body = Detail, description = "Too many attempts from this address, or the account is locked out after failed logins; wait `Retry-After` seconds"),
              (status = 503, body = Detail, description = "Too many password hashes waiting; retry after `Retry-After`")))]
async fn login(
    State(state): State<AppState>,
    Peer(peer): Peer,
    LoginRequest(login): LoginRequest,
) -> Result<Json<TokenOut>, ApiError> {
    Ok(Json(state.accounts.login(login, peer).await?.into()))
}

/// A refresh request: `refresh_token`, as a form or a JSON object.
struct RefreshRequest(String);

impl FromRequest<AppState> for RefreshRequest {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let fields = form_fields(req, state, true).await?;
        fields
            .into_iter()
            .find(|(name, value)| name == "refresh_token" && !value.is_empty())
            .map(|(_, value)| RefreshRequest(value))
            .ok_or_else(|| ApiError::missing("body", "refresh_token"))
    }
}

#[derive(Deserialize, ToSchema)]
#[allow(dead_code)] // documents the body; `RefreshRequest` reads it
pub struct RefreshForm {
    #[schema(min_length = 1)]
    refresh_token: String,
}

/// Trade a refresh token for a new access token and a new refresh token. Each
/// refresh token works once: one presented again revokes every token of its
/// login (the thief's and the owner's alike), and the owner logs in again.
#[utoipa::path(post, path = "/token/refresh", tag = "accounts",
    request_body(content = RefreshForm, content_type = "application/x-www-form-urlencoded",
                 description = "Also as JSON: `{\"refresh_token\": \"...\"}`"),
    responses((status = 200, body = TokenOut), (status = 401, body = Detail, description = "Unknown, lapsed, revoked or reused refresh token"),
              (status = 422),
              (status = 429, body = Detail, description = "Too many refreshes from this address; wait `Retry-After` seconds")))]
async fn refresh(
    State(state): State<AppState>,
    Peer(peer): Peer,
    RefreshRequest(presented): RefreshRequest,
) -> Result<Json<TokenOut>, ApiError> {
    Ok(Json(state.accounts.refresh(&presented, peer).await?.into()))
}

/// Log out: the token stops working and its WebSockets close.
#[utoipa::path(post, path = "/logout", tag = "accounts", security(("bearer" = [])),
    responses((status = 200, body = Detail), (status = 401, body = Detail)))]
async fn logout(State(state): State<AppState>, user: AuthUser) -> Result<Json<Detail>, ApiError> {
    state.accounts.logout(&user).await?;
    Ok(Json(Detail {
        detail: "Logged out successfully",
    }))
}

/// Log out everywhere: every token of the caller's, this one included, stops
/// working, and every WebSocket of the caller closes.
#[utoipa::path(post, path = "/logout/all", tag = "accounts", security(("bearer" = [])),
    responses((status = 200, body = Detail), (status = 401, body = Detail)))]
async fn logout_everywhere(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<Detail>, ApiError> {
    state.accounts.logout_everywhere(&user).await?;
    Ok(Json(Detail {
        detail: "Logged out everywhere",
    }))
}

#[derive(Deserialize, ToSchema)]
pub struct PasswordChange {
    old_password: String,
    /// 8–128 characters, not among the most common passwords.
    #[schema(min_length = 8, max_length = 128)]
    new_password: String,
}

/// Change the password: every other token of the caller's stops working and
/// their WebSockets close, on every replica; the token used stays valid.
#[utoipa::path(put, path = "/users/me/password", tag = "accounts", security(("bearer" = [])),
    request_body = PasswordChange,
    responses((status = 200, body = Detail), (status = 401, body = Detail, description = "Wrong old password (counted like a failed login), or no valid token"),
              (status = 422, description = "Invalid new password"),
              (status = 429, body = Detail, description = "Locked out after failed attempts; wait `Retry-After` seconds")))]
async fn change_password(
    State(state): State<AppState>,
    user: AuthUser,
    JsonBody(body): JsonBody<PasswordChange>,
) -> Result<Json<Detail>, ApiError> {
    state
        .accounts
        .change_password(&user, body.old_password, body.new_password)
        .await?;
    Ok(Json(Detail {
        detail: "Password changed; other sessions were logged out",
    }))
}

#[derive(Deserialize, ToSchema)]
pub struct PublicKeyChange {
    /// Base64 text, or a PEM block; at most 16,384 bytes.
    #[schema(min_length = 1, max_length = 16384, pattern = "^[A-Za-z0-9+/=_-]+$")]
    public_key: String,
    /// The caller's password: a token alone (a stolen one, say) cannot swap
    /// the key contacts encrypt to.
    password: String,
}

/// Publish a new public key, confirmed with the caller's password (a wrong
/// one counts as a failed login). Contacts online receive `{"type":
/// "key_changed", "username", "public_key"}`; contact entries carry
/// `key_changed_at`. At most `KEY_CHANGE_RATE_PER_USER` (5 an hour).
#[utoipa::path(put, path = "/users/me/public-key", tag = "accounts", security(("bearer" = [])),
    request_body = PublicKeyChange,
    responses((status = 200, body = UserOut), (status = 401, body = Detail), (status = 422),
              (status = 429, body = Detail, description = "Too many key changes, or failed logins; wait `Retry-After` seconds")))]
async fn change_public_key(
    State(state): State<AppState>,
    user: AuthUser,
    JsonBody(body): JsonBody<PublicKeyChange>,
) -> Result<Json<UserOut>, ApiError> {
    let (changed, online) = state
        .accounts
        .change_public_key(&user, body.public_key, body.password)
        .await?;
    Ok(Json(UserOut::new(changed, online)))
}

#[derive(Deserialize, ToSchema)]
pub struct AccountDeletion {
    password: String,
}

/// Delete the caller's account: its contacts, requests and stored messages
/// are removed, every token stops working, its WebSockets close, and its name
/// stays unavailable for `DELETED_NAME_RETENTION_SECS`.
#[utoipa::path(delete, path = "/users/me", tag = "accounts", security(("bearer" = [])),
    request_body = AccountDeletion,
    responses((status = 204, description = "Deleted"), (status = 401, body = Detail, description = "Wrong password, or no valid token"),
              (status = 422), (status = 429, body = Detail, description = "Locked out after failed attempts; wait `Retry-After` seconds")))]
async fn delete_account(
    State(state): State<AppState>,
    user: AuthUser,
    JsonBody(body): JsonBody<AccountDeletion>,
) -> Result<axum::http::StatusCode, ApiError> {
    state.accounts.delete_account(&user, body.password).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// The caller's own user object.
#[utoipa::path(get, path = "/users/me", tag = "accounts", security(("bearer" = [])),
    responses((status = 200, body = UserOut), (status = 401, body = Detail)))]
async fn me(State(state): State<AppState>, user: AuthUser) -> Result<Json<UserOut>, ApiError> {
    let (found, online) = state.accounts.me(&user).await?;
    Ok(Json(UserOut::new(found, online)))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// At most this many results (default 20; more than 100 counts as 100).
    #[param(value_type = i64, required = false, minimum = 0, maximum = 4294967295_i64)]
    limit: Option<u32>,
}

/// Users whose name contains `query`, ignoring case; the caller is left out.
#[utoipa::path(get, path = "/users/search/{query}", tag = "accounts", security(("bearer" = [])),
    params(("query" = String, Path, min_length = 3,
            description = "Substring to find, at least `SEARCH_MIN_CHARS` (3) characters; `%` and `_` are literal"),
           SearchParams),
    responses((status = 200, body = [UserBrief]), (status = 401, body = Detail),
              (status = 422, description = "Query shorter than `SEARCH_MIN_CHARS` (3), or a bad `limit`"),
              (status = 429, body = Detail, description = "Too many searches; wait `Retry-After` seconds")))]
async fn search(
    State(state): State<AppState>,
    user: AuthUser,
    PathParam(query): PathParam<String>,
    QueryParams(params): QueryParams<SearchParams>,
) -> Result<Json<Vec<UserBrief>>, ApiError> {
    let min = state.settings.accounts.search_min_chars;
    if query.chars().count() < min {
        return Err(ApiError::Validation(vec![ValidationItem {
            loc: vec!["path".into(), "query".into()],
            msg: format!("String should have at least {min} characters"),
            kind: "string_too_short",
        }]));
    }
    let limit = params.limit.unwrap_or(20).min(100);
    let found = state.accounts.search(&user, &query, limit).await?;
    Ok(Json(
        found
            .into_iter()
            .map(|(u, is_online)| UserBrief {
                id: u.id,
                username: u.username,
                is_online,
            })
            .collect(),
    ))
}

#[derive(Deserialize, ToSchema)]
pub struct HeartbeatRequest {
    /// The client's P2P port. (A JSON number with no fraction, such as `8080.0`,
    /// is an integer too.)
    #[schema(value_type = i64, minimum = 1, maximum = 65535)]
    port: serde_json::Number,
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
    // Anything that is not a whole number in range is refused alike (0).
    let whole = whole_number(&body.port);
    let port = Port::parse(whole.unwrap_or(0), "port")?;
    state.accounts.heartbeat(&user, peer, port).await?;
    Ok(Json(UserBrief {
        id: user.id,
        username: user.username,
        is_online: true,
    }))
}
