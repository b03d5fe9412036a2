//! Behaviour every revocation backend must show.

use chrono::{Duration, Utc};

use super::Revocations;

pub async fn revoked_until_expiry(r: &dyn Revocations) {
    let later = Utc::now() + Duration::minutes(5);
    assert!(!r.is_revoked("a").await.unwrap());
    r.revoke("a", later).await.unwrap();
    assert!(r.is_revoked("a").await.unwrap());
    assert!(!r.is_revoked("b").await.unwrap(), "only that token");
    r.revoke("a", later).await.unwrap();
    assert!(
        r.is_revoked("a").await.unwrap(),
        "revoking twice is harmless"
    );
}
