//! Extractors shared by the HTTP routes and the WebSocket upgrade, whose
//! rejections are the app's own FastAPI-shaped errors: the JSON body, query
//! and path, the caller (`auth`), and the client's address (`peer`).

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Request, rejection::BytesRejection},
    http::StatusCode,
};
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ValidationItem};

mod auth;
mod peer;

pub use auth::bearer_token;
pub use peer::Peer;

pub use crate::domain::{Whole, whole_number};

/// A JSON body. Parsed whatever the `Content-Type` (FastAPI's clients do not always
/// send one); every failure is a 422 naming the field, an oversized body a 413.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(body_rejection)?;
        parse_json(&bytes).map(JsonBody)
    }
}

pub fn body_rejection(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge
    } else if timed_out(&rejection) {
        ApiError::RequestTimeout
    } else {
        ApiError::Validation(vec![ValidationItem {
            loc: vec!["body".into()],
            msg: rejection.body_text(),
            kind: "value_error",
        }])
    }
}

/// Whether the body stopped arriving before its deadline (`serve`'s
/// `body_read_timeout`).
fn timed_out(rejection: &BytesRejection) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(err) = cause {
        if err.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        cause = err.source();
    }
    false
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed = serde_path_to_error::deserialize(&mut deserializer);
    if parsed.is_ok() && deserializer.end().is_err() {
        return Err(json_invalid());
    }
    parsed.map_err(|err| {
        let mut loc: Vec<serde_json::Value> = vec!["body".into()];
        loc.extend(err.path().iter().map(|segment| {
            segment
                .to_string()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .into()
        }));
        let inner = err.into_inner();
        let item = if inner.is_syntax() || inner.is_eof() {
            return json_invalid();
        } else if let Some(field) = missing_field(&inner.to_string()) {
            loc.push(field.into());
            ValidationItem {
                loc,
                msg: "Field required".into(),
                kind: "missing",
            }
        } else {
            let msg = inner.to_string();
            let msg = msg.split(" at line ").next().unwrap_or_default().to_owned();
            ValidationItem {
                loc,
                msg,
                kind: "type_error",
            }
        };
        ApiError::Validation(vec![item])
    })
}

fn json_invalid() -> ApiError {
    ApiError::Validation(vec![ValidationItem {
        loc: vec!["body".into()],
        msg: "JSON decode error".into(),
        kind: "json_invalid",
    }])
}

/// serde's "missing field `name`" names the field; pull it out.
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

/// Query string parameters.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        serde_urlencoded::from_str(query)
            .map(QueryParams)
            .map_err(|e| {
                ApiError::Validation(vec![ValidationItem {
                    loc: vec!["query".into()],
                    msg: e.to_string(),
                    kind: "value_error",
                }])
            })
    }
}

/// Path parameters.
pub struct PathParam<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParam<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| PathParam(value))
            .map_err(|rejection| {
                ApiError::Validation(vec![ValidationItem {
                    loc: vec!["path".into()],
                    msg: rejection.body_text(),
                    kind: "value_error",
                }])
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        port: u16,
    }

    fn items(result: Result<Body, ApiError>) -> Vec<(Vec<serde_json::Value>, &'static str)> {
        match result {
            Err(ApiError::Validation(items)) => {
                items.into_iter().map(|i| (i.loc, i.kind)).collect()
            }
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn names_the_problem() {
        assert_eq!(
            items(parse_json(b"{")),
            vec![(vec!["body".into()], "json_invalid")]
        );
        assert_eq!(
            items(parse_json(br#"{"name": "a", "port": 1} x"#)),
            vec![(vec!["body".into()], "json_invalid")]
        );
        assert_eq!(
            items(parse_json(br#"{"port": 1}"#)),
            vec![(vec!["body".into(), "name".into()], "missing")]
        );
        assert_eq!(
            items(parse_json(br#"{"name": "a", "port": "x"}"#)),
            vec![(vec!["body".into(), "port".into()], "type_error")]
        );
        assert!(parse_json::<Body>(br#"{"name": "a", "port": 1, "extra": true}"#).is_ok());
    }
}
