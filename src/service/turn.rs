//! Relay credentials for P2P: when a direct connection fails, clients relay
//! through a TURN server (coturn) rather than through this server. The
//! credentials follow coturn's REST API ("TURN REST API", `use-auth-secret`):
//! the username is `expiry:user_id` and the password the base64 of its
//! HMAC-SHA1 under the secret shared with the TURN server, which checks both
//! without asking us.

use base64::Engine as _;
use chrono::Utc;
use hmac::{Hmac, Mac};
use secrecy::ExposeSecret;

use super::{
    accounts::Accounts,
    authn::AuthUser,
    budget::spend,
    error::{Error, Result},
};
use crate::ratelimit::Limit;

/// Credentials for the configured TURN servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnCredentials {
    /// `<expiry, Unix seconds>:<user id>`.
    pub username: String,
    pub password: String,
    /// Seconds they stay valid.
    pub ttl: u64,
    pub uris: Vec<String>,
}

impl Accounts {
    /// Credentials valid for the configured time, under the user's budget;
    /// not found when no TURN server is configured.
    pub async fn turn_credentials(&self, user: &AuthUser) -> Result<TurnCredentials> {
        let secret = self
            .settings
            .turn
            .turn_secret
            .as_ref()
            .ok_or(Error::NotFound("No TURN server is configured"))?;
        spend(
            self.limiter.as_ref(),
            Limit::TurnPerUser,
            &user.id.to_string(),
        )
        .await?;
        let ttl = self.settings.turn.turn_ttl;
        let expiry = Utc::now().timestamp().saturating_add_unsigned(ttl);
        let username = format!("{expiry}:{}", user.id);
        Ok(TurnCredentials {
            password: password(secret.expose_secret().as_bytes(), &username),
            username,
            ttl,
            uris: self.settings.turn.turn_uris.clone(),
        })
    }
}

/// base64(HMAC-SHA1(secret, username)), as coturn computes it.
fn password(secret: &[u8], username: &str) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    /// RFC 2202's first HMAC-SHA1 test case.
    #[test]
    fn hmac_sha1_matches_rfc_2202() {
        let key = [0x0b; 20];
        let expected = "thcxhlUFcmTii8C2+zeMjvFGvgA="; // b617318655057264e28bc0b6fb378c8ef146be00
        assert_eq!(super::password(&key, "Hi There"), expected);
    }
}
