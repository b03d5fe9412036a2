//! Sessions that last (API.md): a login opens a session of refresh tokens
//! beside its access token; each refresh token works once and is replaced by
//! the next (rotation), and one presented again ends the whole session, its
//! access tokens included (reuse detection, OAuth 2.0 Security BCP 4.14).
//! Logging out ends the caller's session; logging out everywhere, a password
//! change (but the caller's) and deletion end all of the user's.

use argon2::password_hash::rand_core::{OsRng, RngCore};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::Utc;
use sha2::{Digest, Sha256};

use super::{
    accounts::Accounts,
    authn::{AuthUser, Issued},
    budget::spend,
    error::{Error, Result},
};
use crate::{
    bus::{Event, Sessions},
    domain::{Endpoint, UserId, client_key},
    ratelimit::Limit,
    refresh::{LiveAccess, RefreshRecord, Spend},
};

/// The longest refresh token worth hashing: ours are 43 characters.
const MAX_PRESENTED_CHARS: usize = 256;

/// What a login or a refresh hands out.
pub struct Grant {
    pub access_token: String,
    pub refresh_token: String,
    /// Seconds the access token is valid for.
    pub expires_in: u64,
}

/// A new refresh token (256 random bits, URL-safe) and what is kept of it.
fn new_refresh_token(access: &Issued, idle: chrono::Duration) -> (String, RefreshRecord) {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    let token = URL_SAFE_NO_PAD.encode(bytes);
    let record = RefreshRecord {
        hash: hash_of(&token),
        access_jti: access.jti.clone(),
        access_expires_at: access.expires_at,
        lapses_at: Utc::now() + idle,
    };
    (token, record)
}

/// SHA-256, hex: enough for 256 random bits, which no one can guess.
fn hash_of(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Accounts {
    fn refresh_idle(&self) -> chrono::Duration {
        chrono::Duration::seconds(
            i64::try_from(self.settings.accounts.refresh_idle_secs).unwrap_or(i64::MAX / 1000),
        )
    }

    fn grant(&self, access: Issued, refresh_token: String) -> Grant {
        Grant {
            access_token: access.token,
            refresh_token,
            expires_in: self.settings.accounts.token_ttl_secs,
        }
    }

    /// Opens a session for a login's first access token.
    pub(super) async fn open_session(&self, user: UserId, access: Issued) -> Result<Grant> {
        let (token, record) = new_refresh_token(&access, self.refresh_idle());
        let session = uuid::Uuid::new_v4().simple().to_string();
        self.refresh_tokens.open(user, &session, &record).await?;
        Ok(self.grant(access, token))
    }

    /// A new access token and a new refresh token for a live refresh token,
    /// which is spent. Limited per client address like logins.
    pub async fn refresh(&self, presented: &str, peer: Endpoint) -> Result<Grant> {
        spend(
            self.limiter.as_ref(),
            Limit::RefreshPerIp,
            &client_key(peer.ip),
        )
        .await?;
        if presented.is_empty() || presented.len() > MAX_PRESENTED_CHARS {
            return Err(Error::BAD_REFRESH_TOKEN);
        }
        match self
            .refresh_tokens
            .spend(&hash_of(presented), Utc::now())
            .await?
        {
            Spend::Fresh { user, session } => {
                let Some(found) = self.store.user_by_id(user).await? else {
                    return Err(Error::BAD_REFRESH_TOKEN);
                };
                let access = self.authn.issue(user, &found.username).await?;
                let (token, record) = new_refresh_token(&access, self.refresh_idle());
                if !self.refresh_tokens.rotate(&session, &record).await? {
                    // Logged out meanwhile: what was just issued goes too.
                    self.revocations
                        .revoke(&access.jti, access.expires_at)
                        .await?;
                    return Err(Error::BAD_REFRESH_TOKEN);
                }
                self.names.remember(user, &found.username);
                Ok(self.grant(access, token))
            }
            Spend::Reused { user, live } => {
                tracing::warn!(
                    user_id = user,
                    "a spent refresh token was presented again: its session is revoked"
                );
                self.revoke_access(user, live).await?;
                Err(Error::Unauthenticated(
                    "Refresh token already used: this session is revoked; please log in again",
                ))
            }
            Spend::Unknown => Err(Error::BAD_REFRESH_TOKEN),
        }
    }

    /// Ends the session `user`'s token was issued in: its refresh tokens and
    /// its other access tokens stop working (logout).
    pub(super) async fn end_session(&self, user: &AuthUser) -> Result<()> {
        let live = self.refresh_tokens.end_session_of(&user.jti).await?;
        let others = live.into_iter().filter(|(jti, _)| *jti != user.jti);
        self.revoke_access(user.id, others.collect()).await
    }

    /// Revokes access tokens of an ended session and closes their WebSockets.
    async fn revoke_access(&self, user: UserId, live: Vec<LiveAccess>) -> Result<()> {
        for (jti, expires_at) in live {
            self.revocations.revoke(&jti, expires_at).await?;
            self.bus
                .publish(Event::CloseSessions {
                    user,
                    sessions: Sessions::Of(jti),
                })
                .await?;
        }
        Ok(())
    }
}
