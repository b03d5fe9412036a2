//! The one error type handlers return, rendered the way FastAPI renders errors,
//! because the existing clients parse them that way.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

use crate::{domain::Invalid, service};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 422 with FastAPI's `[{loc, msg, type}]` list.
    #[error("validation failed")]
    Validation(Vec<ValidationItem>),
    #[error("{0}")]
    BadRequest(&'static str),
    /// 401, always with `WWW-Authenticate: Bearer`.
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    NotFound(&'static str),
    /// 409: the target has no room (a full mailbox).
    #[error("{0}")]
    Conflict(&'static str),
    #[error("request body too large")]
    PayloadTooLarge,
    /// 408: the body did not arrive in time.
    #[error("request body not received in time")]
    RequestTimeout,
    /// 429, with `Retry-After` (whole seconds, at least one).
    #[error("{0}")]
    TooManyRequests(&'static str, std::time::Duration),
    /// 503 with `Retry-After`: too busy right now.
    #[error("{0}")]
    Busy(&'static str),
    /// A backend is unreachable: the client may retry.
    #[error("service unavailable")]
    Unavailable(#[source] anyhow::Error),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

#[derive(Debug, Clone)]
pub struct ValidationItem {
    pub loc: Vec<serde_json::Value>,
    pub msg: String,
    pub kind: &'static str,
}

impl ValidationItem {
    /// An invalid field of the request body.
    pub fn body(invalid: Invalid) -> Self {
        Self {
            loc: vec!["body".into(), invalid.field.into()],
            msg: invalid.message,
            kind: "value_error",
        }
    }
}

impl ApiError {
    pub const BAD_CREDENTIALS: Self = Self::Unauthorized("Incorrect username or password");

    pub fn missing(location: &'static str, field: &str) -> Self {
        Self::Validation(vec![ValidationItem {
            loc: vec![location.into(), field.into()],
            msg: "Field required".into(),
            kind: "missing",
        }])
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::TooManyRequests(..) => StatusCode::TOO_MANY_REQUESTS,
            Self::Busy(_) | Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<Invalid> for ApiError {
    fn from(invalid: Invalid) -> Self {
        Self::Validation(vec![ValidationItem::body(invalid)])
    }
}

impl From<service::error::Error> for ApiError {
    fn from(err: service::error::Error) -> Self {
        match err {
            service::error::Error::Unauthenticated(m) => Self::Unauthorized(m),
            service::error::Error::NotFound(m) => Self::NotFound(m),
            service::error::Error::Refused(m) => Self::BadRequest(m),
            service::error::Error::Limited(m, wait) => Self::TooManyRequests(m, wait),
            service::error::Error::Busy(m) => Self::Busy(m),
            service::error::Error::Full(m) => Self::Conflict(m),
            service::error::Error::Invalid(fields) => {
                Self::Validation(fields.into_iter().map(ValidationItem::body).collect())
            }
            service::error::Error::Unavailable(e) => Self::Unavailable(e),
            service::error::Error::Internal(e) => Self::Internal(e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match &self {
            Self::Validation(items) => {
                let detail: Vec<_> = items
                    .iter()
                    .map(|i| json!({"loc": i.loc, "msg": i.msg, "type": i.kind}))
                    .collect();
                json!({ "detail": detail })
            }
            Self::BadRequest(m)
            | Self::Unauthorized(m)
            | Self::NotFound(m)
            | Self::Conflict(m)
            | Self::TooManyRequests(m, _)
            | Self::Busy(m) => {
                json!({ "detail": m })
            }
            Self::PayloadTooLarge => json!({ "detail": "Request body too large" }),
            Self::RequestTimeout => json!({ "detail": "Request body not received in time" }),
            // The cause is logged once here; the client learns nothing internal.
            Self::Unavailable(cause) => {
                tracing::warn!(error = format!("{cause:#}"), "backend unavailable");
                json!({ "detail": "Service temporarily unavailable" })
            }
            Self::Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), "internal error");
                json!({ "detail": "Internal server error" })
            }
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        let retry_after = match &self {
            Self::TooManyRequests(_, wait) => Some(wait.as_secs_f64().ceil().max(1.0) as u64),
            _ if status == StatusCode::SERVICE_UNAVAILABLE => Some(1),
            _ => None,
        };
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
