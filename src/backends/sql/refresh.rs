//! Refresh tokens in SQL, written once for SQLite and Postgres: a session row
//! per login, and its tokens (spent ones kept until the session lapses, so
//! that a reuse is recognised). `refresh_tokens!` implements the trait for a
//! store with a `pool`; the SQL is the same on both databases.

use chrono::{DateTime, Utc};

use crate::{metrics, refresh::RefreshError};

pub fn failed(err: sqlx::Error) -> RefreshError {
    metrics::backend_error(metrics::Backend::Store);
    RefreshError(err.into())
}

/// Keeps the access tokens of an ended session that are still valid.
pub fn still_valid(access: Vec<(String, DateTime<Utc>)>) -> Vec<(String, DateTime<Utc>)> {
    let now = Utc::now();
    access.into_iter().filter(|(_, exp)| *exp > now).collect()
}

pub const DELETE_LAPSED_SESSIONS: &str = "DELETE FROM login_sessions WHERE lapses_at < $1";
pub const INSERT_SESSION: &str =
    "INSERT INTO login_sessions (id, user_id, lapses_at) VALUES ($1, $2, $3)";
pub const INSERT_TOKEN: &str = "INSERT INTO refresh_tokens
     (token_hash, session_id, access_jti, access_expires_at, lapses_at) VALUES ($1, $2, $3, $4, $5)";
/// One statement decides which of two racing callers spends a token.
pub const SPEND: &str = "UPDATE refresh_tokens SET spent = TRUE
     WHERE token_hash = $1 AND spent = FALSE AND lapses_at > $2 RETURNING session_id";
pub const SESSION_USER: &str = "SELECT user_id FROM login_sessions WHERE id = $1";
pub const SPENT_SESSION: &str =
    "SELECT session_id FROM refresh_tokens WHERE token_hash = $1 AND spent = TRUE";
/// Locks the session row: a logout ending it waits, or has ended it already.
pub const EXTEND_SESSION: &str =
    "UPDATE login_sessions SET lapses_at = $2 WHERE id = $1 RETURNING id";
pub const SESSION_OF_ACCESS: &str =
    "SELECT session_id FROM refresh_tokens WHERE access_jti = $1 LIMIT 1";
pub const END_TOKENS: &str =
    "DELETE FROM refresh_tokens WHERE session_id = $1 RETURNING access_jti, access_expires_at";
/// A write that changes nothing: it takes the session row's lock (SQLite has
/// no `FOR UPDATE`; its writers take turns anyway).
pub const LOCK_SESSION: &str =
    "UPDATE login_sessions SET lapses_at = lapses_at WHERE id = $1 RETURNING user_id";
pub const END_SESSION: &str = "DELETE FROM login_sessions WHERE id = $1";
/// The kept session is named by an access token issued in it; the tokens of
/// the others go with them through the foreign key.
pub const END_SESSIONS_BUT: &str = "DELETE FROM login_sessions WHERE user_id = $1 AND id NOT IN
     (SELECT session_id FROM refresh_tokens WHERE access_jti = $2)";

/// `impl RefreshTokens` for a SQL store whose `pool` field runs statements
/// and whose `begin_write` begins a writing transaction of type `$tx`.
macro_rules! refresh_tokens {
    ($store:ty, $tx:ty) => {
        #[async_trait::async_trait]
        impl $crate::refresh::RefreshTokens for $store {
            async fn open(
                &self,
                user: $crate::domain::UserId,
                session: &str,
                first: &$crate::refresh::RefreshRecord,
            ) -> Result<(), $crate::refresh::RefreshError> {
                use $crate::backends::sql::refresh::*;
                let mut tx = self.begin_write().await.map_err(failed)?;
                sqlx::query(DELETE_LAPSED_SESSIONS)
                    .bind(chrono::Utc::now())
                    .execute(&mut *tx)
                    .await
                    .map_err(failed)?;
                sqlx::query(INSERT_SESSION)
                    .bind(session)
                    .bind(user)
                    .bind(first.lapses_at)
                    .execute(&mut *tx)
                    .await
                    .map_err(failed)?;
                Self::insert_token(&mut tx, session, first).await?;
                tx.commit().await.map_err(failed)
            }

            async fn spend(
                &self,
                hash: &str,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<$crate::refresh::Spend, $crate::refresh::RefreshError> {
                use $crate::{backends::sql::refresh::*, refresh::Spend};
                let mut tx = self.begin_write().await.map_err(failed)?;
                let spent: Option<(String,)> = sqlx::query_as(SPEND)
                    .bind(hash)
                    .bind(now)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(failed)?;
                let outcome = if let Some((session,)) = spent {
                    let (user,): (i64,) = sqlx::query_as(SESSION_USER)
                        .bind(&session)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(failed)?;
                    Spend::Fresh { user, session }
                } else {
                    let reused: Option<(String,)> = sqlx::query_as(SPENT_SESSION)
                        .bind(hash)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(failed)?;
                    match reused {
                        Some((session,)) => match Self::end_session(&mut tx, &session).await? {
                            Some((user, live)) => Spend::Reused { user, live },
                            None => Spend::Unknown,
                        },
                        None => Spend::Unknown,
                    }
                };
                tx.commit().await.map_err(failed)?;
                Ok(outcome)
            }

            async fn rotate(
                &self,
                session: &str,
                next: &$crate::refresh::RefreshRecord,
            ) -> Result<bool, $crate::refresh::RefreshError> {
                use $crate::backends::sql::refresh::*;
                let mut tx = self.begin_write().await.map_err(failed)?;
                let extended: Option<(String,)> = sqlx::query_as(EXTEND_SESSION)
                    .bind(session)
                    .bind(next.lapses_at)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(failed)?;
                if extended.is_none() {
                    return Ok(false);
                }
                Self::insert_token(&mut tx, session, next).await?;
                tx.commit().await.map_err(failed)?;
                Ok(true)
            }

            async fn end_session_of(
                &self,
                access_jti: &str,
            ) -> Result<Vec<$crate::refresh::LiveAccess>, $crate::refresh::RefreshError> {
                use $crate::backends::sql::refresh::*;
                let mut tx = self.begin_write().await.map_err(failed)?;
                let session: Option<(String,)> = sqlx::query_as(SESSION_OF_ACCESS)
                    .bind(access_jti)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(failed)?;
                let live = match session {
                    Some((session,)) => Self::end_session(&mut tx, &session).await?,
                    None => None,
                };
                tx.commit().await.map_err(failed)?;
                Ok(live.map(|(_, live)| live).unwrap_or_default())
            }

            async fn end_sessions(
                &self,
                user: $crate::domain::UserId,
                keep: Option<&str>,
            ) -> Result<(), $crate::refresh::RefreshError> {
                use $crate::backends::sql::refresh::*;
                sqlx::query(END_SESSIONS_BUT)
                    .bind(user)
                    .bind(keep.unwrap_or_default())
                    .execute(&self.pool)
                    .await
                    .map_err(failed)?;
                Ok(())
            }
        }

        impl $store {
            async fn insert_token(
                tx: &mut $tx,
                session: &str,
                token: &$crate::refresh::RefreshRecord,
            ) -> Result<(), $crate::refresh::RefreshError> {
                use $crate::backends::sql::refresh::*;
                sqlx::query(INSERT_TOKEN)
                    .bind(&token.hash)
                    .bind(session)
                    .bind(&token.access_jti)
                    .bind(token.access_expires_at)
                    .bind(token.lapses_at)
                    .execute(&mut **tx)
                    .await
                    .map_err(failed)?;
                Ok(())
            }

            /// Ends `session` inside `tx`: its user, and its access tokens
            /// still valid; `None` if it had ended already.
            async fn end_session(
                tx: &mut $tx,
                session: &str,
            ) -> Result<
                Option<($crate::domain::UserId, Vec<$crate::refresh::LiveAccess>)>,
                $crate::refresh::RefreshError,
            > {
                use $crate::backends::sql::refresh::*;
                // The session row first: a rotation under way holds it, and
                // is waited for, so that the token (and access token) it adds
                // is among those read next; one that comes later finds the
                // session gone.
                let user: Option<(i64,)> = sqlx::query_as(LOCK_SESSION)
                    .bind(session)
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err(failed)?;
                let Some((user,)) = user else {
                    return Ok(None);
                };
                let access: Vec<(String, chrono::DateTime<chrono::Utc>)> =
                    sqlx::query_as(END_TOKENS)
                        .bind(session)
                        .fetch_all(&mut **tx)
                        .await
                        .map_err(failed)?;
                sqlx::query(END_SESSION)
                    .bind(session)
                    .execute(&mut **tx)
                    .await
                    .map_err(failed)?;
                Ok(Some((user, still_valid(access))))
            }
        }
    };
}
pub(crate) use refresh_tokens;
