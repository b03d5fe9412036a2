//! `AuthUser`: the caller named by a valid, unrevoked bearer token.

use axum::{
    extract::FromRequestParts,
    http::{header, request::Parts},
};
use chrono::{DateTime, Utc};

use crate::{error::ApiError, state::AppState, store::UserId};

#[derive(Debug, Clone)]
pub struct AuthUser {
    pub id: UserId,
    pub username: String,
    pub jti: String,
    pub expires_at: DateTime<Utc>,
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or(ApiError::Unauthorized("Not authenticated"))?;
        authenticate(state, token).await
    }
}

/// Verifies a token (signature, algorithm, expiry) and that logout has not revoked it.
pub async fn authenticate(state: &AppState, token: &str) -> Result<AuthUser, ApiError> {
    let claims = state.tokens.verify(token).ok_or(ApiError::BAD_TOKEN)?;
    if state.revocations.is_revoked(&claims.jti).await? {
        return Err(ApiError::BAD_TOKEN);
    }
    Ok(AuthUser {
        id: claims.uid,
        expires_at: claims.expires_at(),
        username: claims.sub,
        jti: claims.jti,
    })
}
