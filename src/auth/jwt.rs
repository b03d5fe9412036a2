//! Access tokens: HS256 only, with `exp` and a `jti` that logout revokes.

use std::time::Duration;

use chrono::{DateTime, Utc};
use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, decode_header, encode,
};
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

/// The secrets tokens are signed with, each under an id (the token header's
/// `kid`): the first signs, every one verifies. Rotating adds a key, then
/// moves it first, then drops the old one, replica by replica, and no valid
/// token is refused at any step (docs/OPERATIONS.md, "Rotating the signing key").
#[derive(Clone)]
pub struct SigningKeys(Vec<(String, SecretString)>);

impl SigningKeys {
    /// The id `JWT_SECRET` (one secret, no id given) signs under.
    pub const DEFAULT_ID: &str = "default";
    /// Shortest secret accepted: HS256 keys below 256 bits are guessable offline.
    pub const MIN_SECRET_BYTES: usize = 32;

    /// One secret under [`Self::DEFAULT_ID`].
    pub fn single(secret: SecretString) -> Self {
        Self(vec![(Self::DEFAULT_ID.to_owned(), secret)])
    }

    /// `id:secret,id:secret,…` as `JWT_KEYS` holds it. Ids are 1–64 of
    /// `A-Z a-z 0-9 . _ -`, each once; secrets at least 32 bytes, without
    /// commas (base64 and hex have none). The error never quotes a secret.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut keys: Vec<(String, SecretString)> = Vec::new();
        for (n, entry) in raw.split(',').map(str::trim).enumerate() {
            let n = n + 1;
            let Some((id, secret)) = entry.split_once(':') else {
                return Err(format!("key {n} is not id:secret"));
            };
            let id_ok = (1..=64).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            if !id_ok {
                return Err(format!(
                    "key {n}: an id is 1-64 letters, digits, '.', '_' or '-'"
                ));
            }
            if keys.iter().any(|(other, _)| other == id) {
                return Err(format!("key {n}: the id {id:?} is listed twice"));
            }
            if secret.len() < Self::MIN_SECRET_BYTES {
                return Err(format!(
                    "key {n} ({id:?}): a secret is at least {} bytes",
                    Self::MIN_SECRET_BYTES
                ));
            }
            keys.push((id.to_owned(), SecretString::from(secret.to_owned())));
        }
        Ok(Self(keys))
    }

    /// The ids, signing one first: what may be logged.
    pub fn ids(&self) -> Vec<&str> {
        self.0.iter().map(|(id, _)| id.as_str()).collect()
    }
}

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SigningKeys").field(&self.ids()).finish()
    }
}

pub struct Tokens {
    header: Header,
    encoding: EncodingKey,
    /// Each key's id and its decoding key, the signing one first.
    decoding: Vec<(String, DecodingKey)>,
    validation: Validation,
    ttl: Duration,
}

impl Tokens {
    pub fn new(keys: &SigningKeys, ttl: Duration) -> Self {
        let (signing_id, signing_secret) = &keys.0[0];
        // Pinned: a token signed with any other algorithm, or with "none", is refused.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(signing_id.clone());
        Self {
            header,
            encoding: EncodingKey::from_secret(signing_secret.expose_secret().as_bytes()),
            decoding: keys
                .0
                .iter()
                .map(|(id, secret)| {
                    (
                        id.clone(),
                        DecodingKey::from_secret(secret.expose_secret().as_bytes()),
                    )
                })
                .collect(),
            validation,
            ttl,
        }
    }

    /// A new token for the user, signed with the first key under its id, and its claims.
    pub fn issue(&self, uid: UserId, username: &str) -> anyhow::Result<(String, Claims)> {
        let now = Utc::now().timestamp();
        let claims = Claims {
            sub: username.to_owned(),
            uid,
            iat: now,
            exp: now + self.ttl.as_secs() as i64,
            jti: uuid::Uuid::new_v4().simple().to_string(),
        };
        let token = encode(&self.header, &claims, &self.encoding)?;
        Ok((token, claims))
    }

    /// The claims of a well-signed, unexpired token; revocation is checked
    /// elsewhere. A `kid` picks its key, and one not listed is refused; a
    /// token without one (signed before keys had ids) may match any key.
    pub fn verify(&self, token: &str) -> Option<Claims> {
        let kid = decode_header(token).ok()?.kid;
        let mut keys = self
            .decoding
            .iter()
            .filter(|(id, _)| kid.as_ref().is_none_or(|kid| kid == id));
        keys.find_map(|(_, key)| decode::<Claims>(token, key, &self.validation).ok())
            .map(|data| data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(raw: &str) -> SigningKeys {
        SigningKeys::parse(raw).unwrap()
    }

    fn tokens(raw: &str) -> Tokens {
        Tokens::new(&keys(raw), Duration::from_secs(60))
    }

    const A: &str = "a:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "b:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn round_trip_under_the_first_keys_id() {
        let t = tokens(&format!("{A},{B}"));
        let token = t.issue(7, "alice").unwrap().0;
        assert_eq!(decode_header(&token).unwrap().kid.as_deref(), Some("a"));
        let claims = t.verify(&token).unwrap();
        assert_eq!((claims.uid, claims.sub.as_str()), (7, "alice"));
        assert_eq!(claims.jti.len(), 32);
    }

    #[test]
    fn every_listed_key_verifies_and_a_dropped_one_does_not() {
        let (old, rolled, new) = (tokens(A), tokens(&format!("{B},{A}")), tokens(B));
        let by_old = old.issue(1, "a").unwrap().0;
        let by_rolled = rolled.issue(1, "a").unwrap().0;
        assert!(rolled.verify(&by_old).is_some());
        assert!(new.verify(&by_rolled).is_some());
        assert!(old.verify(&by_rolled).is_none(), "b is not listed there");
        assert!(new.verify(&by_old).is_none(), "a was dropped");
    }

    #[test]
    fn a_kid_picks_its_key_and_an_unknown_kid_is_refused() {
        let secret = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        // The right secret under another id: refused, not tried against each key.
        let renamed = tokens(&format!("z:{secret}")).issue(1, "a").unwrap().0;
        assert!(tokens(&format!("{A},{B}")).verify(&renamed).is_none());
        // Without a kid (a token of a release before ids), any listed key may match.
        let claims = Claims {
            sub: "a".into(),
            uid: 1,
            iat: 0,
            exp: Utc::now().timestamp() + 60,
            jti: "j".into(),
        };
        let bare = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap();
        assert!(tokens(&format!("{B},{A}")).verify(&bare).is_some());
        assert!(tokens(B).verify(&bare).is_none());
        assert!(tokens(A).verify("not.a.token").is_none());
    }

    #[test]
    fn key_lists_are_checked_and_errors_never_quote_a_secret() {
        let secret = "s".repeat(32);
        for (raw, why) in [
            ("", "not id:secret"),
            ("nocolon", "not id:secret"),
            (&format!(":{secret}") as &str, "an id is"),
            (&format!("a b:{secret}"), "an id is"),
            (&format!("{}:{secret}", "i".repeat(65)), "an id is"),
            (&format!("a:{secret},a:{secret}"), "listed twice"),
            ("a:short-secret-that-is-not-32", "at least 32 bytes"),
        ] {
            let err = SigningKeys::parse(raw).unwrap_err();
            assert!(err.contains(why), "{raw:?}: {err}");
            assert!(
                !err.contains("sss") && !err.contains("short-secret"),
                "{err}"
            );
        }
        let parsed = keys(&format!(" new:{secret} , old.2024_1-x:{secret}"));
        assert_eq!(parsed.ids(), ["new", "old.2024_1-x"]);
        assert!(!format!("{parsed:?}").contains("sss"));
    }
}
