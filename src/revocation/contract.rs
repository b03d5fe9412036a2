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

pub async fn all_of_a_users_tokens_can_be_revoked(r: &dyn Revocations) {
    let later = Utc::now() + Duration::minutes(5);
    for (user, jti) in [(1, "phone"), (1, "laptop"), (1, "tablet"), (2, "other")] {
        r.issued(user, jti, later).await.unwrap();
    }
    r.revoke_all(1, Some("laptop")).await.unwrap();
    assert!(r.is_revoked("phone").await.unwrap());
    assert!(r.is_revoked("tablet").await.unwrap());
    assert!(!r.is_revoked("laptop").await.unwrap(), "the one kept");
    assert!(!r.is_revoked("other").await.unwrap(), "another user's");
    r.revoke_all(1, None).await.unwrap();
    assert!(r.is_revoked("laptop").await.unwrap());
    assert!(!r.is_revoked("other").await.unwrap());
    r.revoke_all(3, None).await.unwrap();
}
