//! `AuthUser` from the `Authorization: Bearer` header.

use axum::{
    extract::FromRequestParts,
    http::{header, request::Parts},
};

use crate::{error::ApiError, service::authn::AuthUser, state::AppState};

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token =
            bearer_token(&parts.headers).ok_or(ApiError::Unauthorized("Not authenticated"))?;
        Ok(state.accounts.authenticate(token).await?)
    }
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
}
