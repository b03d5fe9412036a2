//! The SQL both databases run: one text, `$N` placeholders (which SQLite binds by
//! number too), instantiated per backend by [`sql_store!`].

/// The columns of a user in a JSON object, for the aggregating queries.
macro_rules! user_json_fields {
    () => {
        "'id', u.id, 'username', u.username, 'email', u.email, 'public_key', u.public_key, \
         'created_at', u.created_at, 'last_seen', u.last_seen"
    };
}

/// The condition shared by the aggregating queries: `$1`'s accepted contacts
/// whose address `$1` may see (`$2`: visibility is open).
macro_rules! visible_contacts_where {
    () => {
        " FROM contacts c JOIN users u ON u.id = c.friend_id \
         WHERE c.user_id = $1 AND c.status = 'accepted' \
           AND ($2 OR EXISTS (SELECT 1 FROM contacts r \
                              WHERE r.user_id = c.friend_id AND r.friend_id = c.user_id \
                                AND r.status = 'accepted'))"
    };
}

pub(crate) use {user_json_fields, visible_contacts_where};

/// `%needle%` for `LIKE … ESCAPE '\'`, with the needle's own wildcards escaped.
pub fn like_pattern(needle: &str) -> String {
    let mut pattern = String::with_capacity(needle.len() + 2);
    pattern.push('%');
    for c in needle.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

pub const USER_COLUMNS: &str = "u.id, u.username, u.email, u.public_key, u.created_at, u.last_seen";

pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// Implements `Store` for `$store` (a struct with a `pool` field) whose rows are
/// `$row`; `$visible_contacts` is the one query written per dialect (it
/// aggregates to JSON). A macro rather than generics because sqlx's
/// executor bounds would outweigh the code they share.
macro_rules! sql_store {
    ($store:ty, $row:ty, $visible_contacts:expr) => {
        const _: () = {
        use async_trait::async_trait;
        use chrono::{DateTime, Utc};
        use sqlx::{QueryBuilder, Row};

        use $crate::{
            config::Visibility,
            store::{
                Contact, ContactStatus, Credentials, INBOX_PAGE, InboxMessage, Message, NewMessage, NewUser,
                StoreError, StoreResult, User, UserId,
                sql::{USER_COLUMNS, is_unique_violation, like_pattern},
            },
        };

        fn contact_from_row(row: &$row) -> Result<$crate::store::Contact, sqlx::Error> {
            let status: String = row.try_get("status")?;
            Ok($crate::store::Contact {
                other: sqlx::FromRow::from_row(row)?,
                status: if status == "accepted" {
                    $crate::store::ContactStatus::Accepted
                } else {
                    $crate::store::ContactStatus::Pending
                },
                created_at: row.try_get("contact_created_at")?,
            })
        }

        impl $store {
            /// Records a revoked token, dropping those that expired anyway.
            async fn insert_revocation(&self, jti: &str, expires_at: DateTime<Utc>) -> StoreResult<()> {
                sqlx::query("DELETE FROM revoked_tokens WHERE expires_at < $1")
                    .bind(Utc::now())
                    .execute(&self.pool)
                    .await?;
                sqlx::query(
                    "INSERT INTO revoked_tokens (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING",
                )
                .bind(jti)
                .bind(expires_at)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            /// A user a contact row refers to: users are never deleted, so one
            /// that is missing is an inconsistent store, not a client error.
            async fn existing_user(&self, id: UserId) -> StoreResult<User> {
                use $crate::store::Store as _;
                self.user_by_id(id)
                    .await?
                    .ok_or_else(|| StoreError::Other(anyhow::anyhow!("user {id} is referred to but missing")))
            }
        }

        #[async_trait]
        impl $crate::store::Store for $store {
            async fn ping(&self) -> StoreResult<()> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn create_user(&self, user: NewUser) -> StoreResult<User> {
                let created = sqlx::query_as::<_, User>(
                    "INSERT INTO users (username, username_key, email, email_key, password_hash, public_key, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)
                     RETURNING id, username, email, public_key, created_at, last_seen",
                )
                .bind(&user.username)
                .bind(&user.username_key)
                .bind(&user.email)
                .bind(&user.email_key)
                .bind(&user.password_hash)
                .bind(&user.public_key)
                .bind(Utc::now())
                .fetch_one(&self.pool)
                .await;
                match created {
                    Err(e) if is_unique_violation(&e) => Err(StoreError::Duplicate),
                    other => Ok(other?),
                }
            }

            async fn credentials(&self, username_key: &str) -> StoreResult<Option<Credentials>> {
                Ok(
                    sqlx::query_as("SELECT id, username, password_hash FROM users WHERE username_key = $1")
                        .bind(username_key)
                        .fetch_optional(&self.pool)
                        .await?,
                )
            }

            async fn user_by_id(&self, id: UserId) -> StoreResult<Option<User>> {
                Ok(sqlx::query_as(&format!(
                    "SELECT {USER_COLUMNS} FROM users u WHERE u.id = $1"
                ))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn user_by_username(&self, username_key: &str) -> StoreResult<Option<User>> {
                Ok(sqlx::query_as(&format!(
                    "SELECT {USER_COLUMNS} FROM users u WHERE u.username_key = $1"
                ))
                .bind(username_key)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn search_users(
                &self,
                needle: &str,
                exclude: UserId,
                limit: i64,
            ) -> StoreResult<Vec<User>> {
                // Escaped, so that '%' and '_' in the needle are plain characters.
                Ok(sqlx::query_as(&format!(
                    "SELECT {USER_COLUMNS} FROM users u
                     WHERE u.username_key LIKE $1 ESCAPE '\\' AND u.id <> $2
                     ORDER BY u.username_key LIMIT $3"
                ))
                .bind(like_pattern(needle))
                .bind(exclude)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn touch_last_seen(&self, id: UserId, at: DateTime<Utc>) -> StoreResult<()> {
                sqlx::query("UPDATE users SET last_seen = $1 WHERE id = $2")
                    .bind(at)
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn add_contact(&self, owner: UserId, other: UserId) -> StoreResult<Contact> {
                let now = Utc::now();
                // The first statement writes, so the transaction takes the write lock at once
                // and cannot deadlock upgrading a read lock.
                let mut tx = self.pool.begin().await?;
                let accepted = sqlx::query(
                    "INSERT INTO contacts (user_id, friend_id, status, created_at) VALUES ($1, $2, 'accepted', $3)
                     ON CONFLICT (user_id, friend_id) DO UPDATE SET status = 'accepted'
                     WHERE contacts.status = 'pending'
                     RETURNING created_at",
                )
                .bind(owner)
                .bind(other)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(row) = accepted else {
                    return Err(StoreError::AlreadyContact);
                };
                let created_at: DateTime<Utc> = row.try_get("created_at")?;
                sqlx::query(
                    "INSERT INTO contacts (user_id, friend_id, status, created_at) VALUES ($1, $2, 'pending', $3)
                     ON CONFLICT (user_id, friend_id) DO NOTHING",
                )
                .bind(other)
                .bind(owner)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                let user = self.existing_user(other).await?;
                Ok(Contact {
                    other: user,
                    status: ContactStatus::Accepted,
                    created_at,
                })
            }

            async fn contacts(&self, owner: UserId, skip: i64, limit: i64) -> StoreResult<Vec<Contact>> {
                let rows = sqlx::query(&format!(
                    "SELECT {USER_COLUMNS}, c.status, c.created_at AS contact_created_at
                     FROM contacts c JOIN users u ON u.id = c.friend_id
                     WHERE c.user_id = $1 AND c.status = 'accepted'
                     ORDER BY u.username_key LIMIT $2 OFFSET $3"
                ))
                .bind(owner)
                .bind(limit)
                .bind(skip)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .iter()
                    .map(|row: &$row| contact_from_row(row))
                    .collect::<Result<_, _>>()?)
            }

            async fn pending_requests(&self, owner: UserId) -> StoreResult<Vec<Contact>> {
                let rows = sqlx::query(&format!(
                    "SELECT {USER_COLUMNS}, c.status, c.created_at AS contact_created_at
                     FROM contacts c JOIN users u ON u.id = c.friend_id
                     WHERE c.user_id = $1 AND c.status = 'pending'
                     ORDER BY c.created_at, u.id"
                ))
                .bind(owner)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .iter()
                    .map(|row: &$row| contact_from_row(row))
                    .collect::<Result<_, _>>()?)
            }

            async fn accept_request(
                &self,
                owner: UserId,
                requester: UserId,
            ) -> StoreResult<Option<Contact>> {
                let mut tx = self.pool.begin().await?;
                let accepted = sqlx::query(
                    "UPDATE contacts SET status = 'accepted'
                     WHERE user_id = $1 AND friend_id = $2 AND status = 'pending'
                     RETURNING created_at",
                )
                .bind(owner)
                .bind(requester)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(row) = accepted else {
                    return Ok(None);
                };
                let created_at: DateTime<Utc> = row.try_get("created_at")?;
                sqlx::query(
                    "INSERT INTO contacts (user_id, friend_id, status, created_at) VALUES ($1, $2, 'accepted', $3)
                     ON CONFLICT (user_id, friend_id) DO UPDATE SET status = 'accepted'",
                )
                .bind(requester)
                .bind(owner)
                .bind(Utc::now())
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                let user = self.existing_user(requester).await?;
                Ok(Some(Contact {
                    other: user,
                    status: ContactStatus::Accepted,
                    created_at,
                }))
            }

            async fn remove_contact(&self, owner: UserId, other: UserId) -> StoreResult<bool> {
                let done = sqlx::query(
                    "DELETE FROM contacts
                     WHERE (user_id = $1 AND friend_id = $2) OR (user_id = $2 AND friend_id = $1)",
                )
                .bind(owner)
                .bind(other)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn visible_contacts(
                &self,
                viewer: UserId,
                visibility: Visibility,
            ) -> StoreResult<Vec<User>> {
                // One row holding a JSON array: a contact list can be long, and
                // rows cost more to hand over one by one than to decode at once.
                let list: String = sqlx::query_scalar($visible_contacts)
                    .bind(viewer)
                    .bind(visibility == Visibility::Open)
                    .fetch_one(&self.pool)
                    .await?;
                let mut users: Vec<User> =
                    serde_json::from_str(&list).map_err(|e| StoreError::Other(e.into()))?;
                users.sort_by_cached_key(|u| u.username.to_lowercase());
                Ok(users)
            }

            async fn visible_user(
                &self,
                viewer: UserId,
                username_key: &str,
                visibility: Visibility,
            ) -> StoreResult<Option<User>> {
                Ok(sqlx::query_as(&format!(
                    "SELECT {USER_COLUMNS} FROM users u
                     WHERE u.username_key = $1
                       AND ($2 OR u.id = $3 OR EXISTS (SELECT 1 FROM contacts r
                                                     WHERE r.user_id = u.id AND r.friend_id = $3
                                                       AND r.status = 'accepted'))"
                ))
                .bind(username_key)
                .bind(visibility == Visibility::Open)
                .bind(viewer)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn watchers(&self, subject: UserId) -> StoreResult<Vec<UserId>> {
                Ok(sqlx::query_scalar(
                    "SELECT user_id FROM contacts WHERE friend_id = $1 AND status = 'accepted'",
                )
                .bind(subject)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn store_messages(&self, messages: &[NewMessage]) -> StoreResult<Vec<Message>> {
                if messages.is_empty() {
                    return Ok(Vec::new());
                }
                let mut stored = Vec::with_capacity(messages.len());
                // SQLite binds at most 32766 parameters per statement; four per message.
                for chunk in messages.chunks(8000) {
                    let mut insert = QueryBuilder::new(
                        "INSERT INTO messages (sender_id, receiver_id, encrypted_content, sent_at) ",
                    );
                    insert.push_values(chunk, |mut row, m| {
                        row.push_bind(m.sender_id)
                            .push_bind(m.receiver_id)
                            .push_bind(&m.content)
                            .push_bind(m.sent_at);
                    });
                    insert.push(" RETURNING id, sender_id, receiver_id, encrypted_content, sent_at");
                    let mut rows: Vec<Message> = insert.build_query_as().fetch_all(&self.pool).await?;
                    rows.sort_by_key(|m| m.id);
                    stored.extend(rows);
                }
                Ok(stored)
            }

            async fn peek_unread(&self, receiver: UserId) -> StoreResult<Vec<InboxMessage>> {
                Ok(sqlx::query_as(
                    "SELECT m.id, m.sender_id, m.receiver_id, m.encrypted_content, m.sent_at,
                            u.username AS sender_username
                     FROM messages m JOIN users u ON u.id = m.sender_id
                     WHERE m.receiver_id = $1 AND m.read_at IS NULL
                     ORDER BY m.id LIMIT $2",
                )
                .bind(receiver)
                .bind(INBOX_PAGE)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn mark_read(&self, receiver: UserId, ids: &[i64]) -> StoreResult<()> {
                if ids.is_empty() {
                    return Ok(());
                }
                let mut update = QueryBuilder::new("UPDATE messages SET read_at = ");
                update.push_bind(Utc::now());
                update.push(" WHERE read_at IS NULL AND receiver_id = ");
                update.push_bind(receiver);
                update.push(" AND id IN (");
                let mut list = update.separated(", ");
                for id in ids {
                    list.push_bind(*id);
                }
                update.push(")");
                update.build().execute(&self.pool).await?;
                Ok(())
            }

            async fn take_unread(&self, receiver: UserId) -> StoreResult<Vec<Message>> {
                // One statement. SQLite runs writers one at a time; in Postgres a second
                // concurrent take waits on the first one's row locks and then re-checks
                // `read_at IS NULL` on the updated rows. Either way no message is handed out twice.
                let mut taken: Vec<Message> = sqlx::query_as(
                    "UPDATE messages SET read_at = $1
                     WHERE read_at IS NULL
                       AND id IN (SELECT id FROM messages WHERE receiver_id = $2 AND read_at IS NULL
                                  ORDER BY id LIMIT $3)
                     RETURNING id, sender_id, receiver_id, encrypted_content, sent_at",
                )
                .bind(Utc::now())
                .bind(receiver)
                .bind(INBOX_PAGE)
                .fetch_all(&self.pool)
                .await?;
                taken.sort_by_key(|m| m.id);
                Ok(taken)
            }
        }

        };
    };
}

pub(crate) use sql_store;

#[cfg(test)]
mod tests {
    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(super::like_pattern("a_b%c\\"), "%a\\_b\\%c\\\\%");
    }
}
