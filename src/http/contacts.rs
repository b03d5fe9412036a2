//! Contacts and friend requests, and the online-contacts panel.

use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, put},
};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::{
    extract::{JsonBody, PathParam, QueryParams},
    views::{ContactEntry, Detail, OnlineContact, PendingEntry},
};
use crate::{
    auth::AuthUser,
    error::ApiError,
    state::AppState,
    store::{StoreError, UserId},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/me/contacts", get(list).post(add))
        .route("/me/contacts/pending", get(pending))
        .route("/me/contacts/online", get(online))
        .route("/me/contacts/{user_id}", put(accept).delete(remove))
}

/// Either the seed's `friend_username` or the revision's `friend_id`.
#[derive(Deserialize, ToSchema)]
pub struct AddContactRequest {
    friend_username: Option<String>,
    friend_id: Option<UserId>,
}

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
    let friend = match (body.friend_username, body.friend_id) {
        (Some(name), _) => state
            .names
            .resolve(state.store.as_ref(), &name)
            .await?
            .map(|n| n.id),
        (None, Some(id)) => state.store.user_by_id(id).await?.map(|u| u.id),
        (None, None) => return Err(ApiError::missing("body", "friend_username")),
    }
    .ok_or(ApiError::NotFound("User not found"))?;
    if friend == user.id {
        return Err(ApiError::BadRequest("You cannot add yourself as a contact"));
    }
    let contact = state
        .store
        .add_contact(user.id, friend)
        .await
        .map_err(|e| match e {
            StoreError::AlreadyContact => ApiError::BadRequest("Already a contact"),
            other => other.into(),
        })?;
    contacts_changed(&state, user.id, friend).await?;
    let online = state.presence.locate(&[friend]).await?[0].is_some();
    Ok((
        StatusCode::ACCEPTED,
        Json(ContactEntry::new(user.id, contact, online)),
    ))
}

#[derive(Deserialize, IntoParams)]
pub struct Page {
    /// Entries to skip (default 0).
    skip: Option<u32>,
    /// Entries to return (default 100, at most 1000).
    limit: Option<u32>,
}

/// The caller's accepted contacts.
#[utoipa::path(get, path = "/me/contacts/", tag = "contacts", security(("bearer" = [])), params(Page),
    responses((status = 200, body = [ContactEntry]), (status = 401, body = Detail)))]
async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    QueryParams(page): QueryParams<Page>,
) -> Result<Json<Vec<ContactEntry>>, ApiError> {
    let skip = i64::from(page.skip.unwrap_or(0));
    let limit = i64::from(page.limit.unwrap_or(100).min(1000));
    let contacts = state.store.contacts(user.id, skip, limit).await?;
    let ids: Vec<_> = contacts.iter().map(|c| c.other.id).collect();
    let online = state.presence.locate(&ids).await?;
    Ok(Json(
        contacts
            .into_iter()
            .zip(online)
            .map(|(c, at)| ContactEntry::new(user.id, c, at.is_some()))
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
    let requests = state.store.pending_requests(user.id).await?;
    let ids: Vec<_> = requests.iter().map(|r| r.other.id).collect();
    let online = state.presence.locate(&ids).await?;
    Ok(Json(
        requests
            .into_iter()
            .zip(online)
            .map(|(r, at)| PendingEntry::new(user.id, r, at.is_some()))
            .collect(),
    ))
}

/// Accept that user's request: both sides become accepted.
#[utoipa::path(put, path = "/me/contacts/{user_id}", tag = "contacts", security(("bearer" = [])),
    params(("user_id" = i64, Path, description = "The requester's id")),
    responses((status = 200, body = ContactEntry), (status = 404, body = Detail), (status = 401, body = Detail)))]
async fn accept(
    State(state): State<AppState>,
    user: AuthUser,
    PathParam(requester): PathParam<UserId>,
) -> Result<Json<ContactEntry>, ApiError> {
    let contact = state
        .store
        .accept_request(user.id, requester)
        .await?
        .ok_or(ApiError::NotFound("Friend request not found"))?;
    contacts_changed(&state, user.id, requester).await?;
    let online = state.presence.locate(&[requester]).await?[0].is_some();
    Ok(Json(ContactEntry::new(user.id, contact, online)))
}

/// Remove a contact, or reject or cancel a request, on both sides.
#[utoipa::path(delete, path = "/me/contacts/{user_id}", tag = "contacts", security(("bearer" = [])),
    params(("user_id" = i64, Path, description = "The other user's id")),
    responses((status = 204), (status = 404, body = Detail), (status = 401, body = Detail)))]
async fn remove(
    State(state): State<AppState>,
    user: AuthUser,
    PathParam(other): PathParam<UserId>,
) -> Result<StatusCode, ApiError> {
    if state.store.remove_contact(user.id, other).await? {
        contacts_changed(&state, user.id, other).await?;
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("Contact not found"))
    }
}

/// After the store changed the relation of `a` and `b`: both lists are stale
/// wherever the online panel has them cached.
async fn contacts_changed(state: &AppState, a: UserId, b: UserId) -> Result<(), ApiError> {
    Ok(state.presence.contacts_changed(&[a, b]).await?)
}

/// The caller's contacts that are online now and whose address it may see:
/// one presence round trip, however many contacts (and one store query when
/// the caller's contact list changed).
#[utoipa::path(get, path = "/me/contacts/online", tag = "contacts", security(("bearer" = [])),
    responses((status = 200, body = [OnlineContact]), (status = 401, body = Detail)))]
async fn online(State(state): State<AppState>, user: AuthUser) -> Result<Response, ApiError> {
    let online = state
        .online
        .of(
            state.store.as_ref(),
            state.presence.as_ref(),
            user.id,
            state.settings.address_visibility,
        )
        .await?;
    let entries: Vec<_> = online
        .iter()
        .map(|(card, seen)| OnlineContact::new(card, seen))
        .collect();
    Ok(Json(entries).into_response())
}
