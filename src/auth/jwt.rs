//! Access tokens: HS256 only, with `exp` and a `jti` that logout revokes.

use std::time::Duration;

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::domain::UserId;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The username, as the seed's clients expect.
    pub sub: String,
    pub uid: UserId,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
}

impl Claims {
    pub fn expires_at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp(self.exp, 0).unwrap_or_else(Utc::now)
    }
}

pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

impl Tokens {
    pub fn new(secret: &SecretString, ttl: Duration) -> Self {
        let key = secret.expose_secret().as_bytes();
        // Pinned: a token signed with any other algorithm, or with "none", is refused.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(key),
            decoding: DecodingKey::from_secret(key),
            validation,
            ttl,
        }
    }

    /// A new token for the user, and its claims.
    pub fn issue(&self, uid: UserId, username: &str) -> anyhow::Result<(String, Claims)> {
        let now = Utc::now().timestamp();
        let claims = Claims {
            sub: username.to_owned(),
            uid,
            iat: now,
            exp: now + self.ttl.as_secs() as i64,
            jti: uuid::Uuid::new_v4().simple().to_string(),
        };
        let token = encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?;
        Ok((token, claims))
    }

    /// The claims of a well-signed, unexpired token; revocation is checked elsewhere.
    pub fn verify(&self, token: &str) -> Option<Claims> {
        decode::<Claims>(token, &self.decoding, &self.validation)
            .ok()
            .map(|data| data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(ttl: u64) -> Tokens {
        Tokens::new(
            &SecretString::from("k".repeat(32)),
            Duration::from_secs(ttl),
        )
    }

    #[test]
    fn round_trip() {
        let t = tokens(60);
        let claims = t.verify(&t.issue(7, "alice").unwrap().0).unwrap();
        assert_eq!((claims.uid, claims.sub.as_str()), (7, "alice"));
        assert_eq!(claims.jti.len(), 32);
    }

    #[test]
    fn refuses_other_keys_and_garbage() {
        let other = Tokens::new(&SecretString::from("x".repeat(32)), Duration::from_secs(60));
        assert!(tokens(60).verify(&other.issue(1, "a").unwrap().0).is_none());
        assert!(tokens(60).verify("not.a.token").is_none());
    }
}
