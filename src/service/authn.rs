//! Who a token names, and issuing tokens that can be revoked.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::{
    error::{Error, Result},
    names::NameCache,
};
use crate::{auth::jwt::Tokens, domain::UserId, revocation::Revocations, store::Store};

/// The caller named by a valid, unrevoked token of an existing user.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub id: UserId,
    /// As registered.
    pub username: String,
    pub jti: String,
    pub expires_at: DateTime<Utc>,
}

/// An access token just issued.
pub struct Issued {
    pub token: String,
    pub jti: String,
    pub expires_at: DateTime<Utc>,
}

/// Issues tokens and checks them: shared by the accounts flow and the relay
/// (which renews a connection's token in-band).
pub struct Authenticator {
    pub tokens: Tokens,
    pub revocations: Arc<dyn Revocations>,
    pub store: Arc<dyn Store>,
    pub names: Arc<NameCache>,
}

impl Authenticator {
    /// The caller a token names: well signed (HS256), unexpired, not revoked,
    /// and naming an existing user by both its id and its name. The name is
    /// checked through the name cache, so a valid token costs no store read.
    pub async fn authenticate(&self, token: &str) -> Result<AuthUser> {
        let claims = self.tokens.verify(token).ok_or(Error::BAD_TOKEN)?;
        if self.revocations.is_revoked(&claims.jti).await? {
            return Err(Error::BAD_TOKEN);
        }
        let named = self.names.resolve(self.store.as_ref(), &claims.sub).await?;
        let Some(named) = named.filter(|n| n.id == claims.uid) else {
            return Err(Error::BAD_TOKEN);
        };
        Ok(AuthUser {
            id: named.id,
            username: named.username.to_string(),
            expires_at: claims.expires_at(),
            jti: claims.jti,
        })
    }

    /// A new token for the user, recorded so that it can be revoked with all
    /// the user's others.
    pub async fn issue(&self, id: UserId, username: &str) -> Result<Issued> {
        let (token, claims) = self.tokens.issue(id, username).map_err(Error::Internal)?;
        let expires_at = claims.expires_at();
        self.revocations.issued(id, &claims.jti, expires_at).await?;
        Ok(Issued {
            token,
            jti: claims.jti,
            expires_at,
        })
    }
}
