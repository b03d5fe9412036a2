//! Contacts and friend requests, and the online-contacts panel.

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, put},
};
use serde::Deserialize;
use utoipa::IntoParams;

use super::views::{ContactEntry, Detail, OnlineContact, PendingEntry, online_contacts_json};
use crate::{
    domain::UserId,
    error::ApiError,
    extract::{JsonBody, PathParam, QueryParams, Whole},
    service::{authn::AuthUser, contacts::ContactTarget},
    state::AppState,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/me/contacts", get(list).post(add))
        .route("/me/contacts/pending", get(pending))
        .route("/me/contacts/online", get(online))
        .route("/me/contacts/{user_id}", put(accept).delete(remove))
}

/// Either the seed's `friend_username` or the revision's `friend_id`.
#[derive(Deserialize)]
pub struct AddContactRequest {
    friend_username: Option<String>,
    /// A whole number, with or without a fraction.
    friend_id: Option<Whole>,
}

/// Documented by hand: one of the two fields must be present (a derived
/// schema would make both optional).
impl utoipa::PartialSchema for AddContactRequest {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{AnyOfBuilder, ObjectBuilder, Type};
        let by = |field: &str, of: Type, description: &str, example: serde_json::Value| {
            let mut property = ObjectBuilder::new()
                .schema_type(of.clone())
                .description(Some(description))
                .examples([example]);
            if of == Type::Integer {
                // Ids are 64-bit.
                property = property
                    .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                        utoipa::openapi::KnownFormat::Int64,
                    )))
                    .minimum(Some(i64::MIN as f64))
                    .maximum(Some(i64::MAX as f64));
            }
            ObjectBuilder::new()
                .property(field, property)
                .required(field)
        };
        AnyOfBuilder::new()
            .item(by(
                "friend_username",
                Type::String,
                "The seed's form",
                "bob".into(),
            ))
            .item(by(
                "friend_id",
                Type::Integer,
                "The revision's form",
                2.into(),
            ))
            .description(Some(
                "Either the seed's `friend_username` or the revision's `friend_id`; \
                 `friend_username` wins when both are given",
            ))
            .into()
    }
}

impl utoipa::ToSchema for AddContactRequest {}

/// Add a contact: accepted on the caller's side; the other user gets a request
/// (or, if it had asked already, both sides are accepted).
#[utoipa::path(post, path = "/me/contacts/", tag = "contacts", security(("bearer" = [])),
    request_body = AddContactRequest,
    responses((status = 202, body = ContactEntry), (status = 400, body = Detail), (status = 404, body = Detail),
              (status = 401, body = Detail), (status = 422)))]
async fn add(
    State(state): State<AppState>,
    user: AuthUser,
    JsonBody(body): JsonBody<AddContactRequest>,
) -> Result<(StatusCode, Json<ContactEntry>), ApiError> {
    let target = match (body.friend_username, body.friend_id) {
        (Some(name), _) => ContactTarget::Name(name),
        (None, Some(Whole(id))) => ContactTarget::Id(id),
        (None, None) => return Err(ApiError::missing("body", "friend_username")),
    };
    let (contact, seen) = state.contacts.add_contact(&user, target).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(ContactEntry::new(user.id, contact, seen)),
    ))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Page {
    /// Entries to skip (default 0).
    #[param(value_type = i64, required = false, minimum = 0, maximum = 4294967295_i64)]
    skip: Option<u32>,
    /// Entries to return (default 100; more than 1000 counts as 1000).
    #[param(value_type = i64, required = false, minimum = 0, maximum = 4294967295_i64)]
    limit: Option<u32>,
}

/// The caller's accepted contacts.
#[utoipa::path(get, path = "/me/contacts/", tag = "contacts", security(("bearer" = [])), params(Page),
    responses((status = 200, body = [ContactEntry]), (status = 401, body = Detail),
              (status = 422, description = "`skip` or `limit` is not a whole number from 0 to 2³²−1")))]
async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    QueryParams(page): QueryParams<Page>,
) -> Result<Json<Vec<ContactEntry>>, ApiError> {
    let (skip, limit) = (page.skip.unwrap_or(0), page.limit.unwrap_or(100).min(1000));
    let contacts = state.contacts.contacts(&user, skip, limit).await?;
    Ok(Json(
        contacts
            .into_iter()
            .map(|(c, seen)| ContactEntry::new(user.id, c, seen))
            .collect(),
    ))
}

/// Requests others sent the caller that it has not answered.
#[utoipa::path(get, path = "/me/contacts/pending", tag = "contacts", security(("bearer" = [])),
    responses((status = 200, body = [PendingEntry]), (status = 401, body = Detail)))]
async fn pending(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<Vec<PendingEntry>>, ApiError> {
    let requests = state.contacts.pending_requests(&user).await?;
    Ok(Json(
        requests
            .into_iter()
            .map(|(r, seen)| PendingEntry::new(user.id, r, seen))
            .collect(),
    ))
}

/// Accept that user's request: both sides become accepted.
#[utoipa::path(put, path = "/me/contacts/{user_id}", tag = "contacts", security(("bearer" = [])),
    params(("user_id" = i64, Path, example = 2, description = "The requester's id")),
    responses((status = 200, body = ContactEntry), (status = 404, body = Detail), (status = 401, body = Detail),
              (status = 422, description = "`user_id` is not an integer")))]
async fn accept(
    State(state): State<AppState>,
    user: AuthUser,
    PathParam(requester): PathParam<UserId>,
) -> Result<Json<ContactEntry>, ApiError> {
    let (contact, seen) = state.contacts.accept_request(&user, requester).await?;
    Ok(Json(ContactEntry::new(user.id, contact, seen)))
}

/// Remove a contact, or reject or cancel a request, on both sides.
#[utoipa::path(delete, path = "/me/contacts/{user_id}", tag = "contacts", security(("bearer" = [])),
    params(("user_id" = i64, Path, example = 2, description = "The other user's id")),
    responses((status = 204), (status = 404, body = Detail), (status = 401, body = Detail),
              (status = 422, description = "`user_id` is not an integer")))]
async fn remove(
    State(state): State<AppState>,
    user: AuthUser,
    PathParam(other): PathParam<UserId>,
) -> Result<StatusCode, ApiError> {
    state.contacts.remove_contact(&user, other).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's contacts that are online now and whose address it may see:
/// one presence round trip, however many contacts (and one store query when
/// the caller's contact list changed).
#[utoipa::path(get, path = "/me/contacts/online", tag = "contacts", security(("bearer" = [])),
    responses((status = 200, body = [OnlineContact]), (status = 401, body = Detail)))]
async fn online(State(state): State<AppState>, user: AuthUser) -> Result<Response, ApiError> {
    let online = state.contacts.online_contacts(&user).await?;
    let body = online_contacts_json(online.iter());
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}
