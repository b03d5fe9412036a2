//! Behaviour every refresh-token backend must show, each on a fresh store
//! (whose users the sessions belong to).

use chrono::{Duration, Utc};

use super::{RefreshRecord, RefreshTokens, Spend};
use crate::store::{Store, contract::user};

fn record(name: &str, lapses_in: Duration) -> RefreshRecord {
    let now = Utc::now();
    RefreshRecord {
        hash: format!("hash-{name}"),
        access_jti: format!("jti-{name}"),
        access_expires_at: now + Duration::minutes(30),
        lapses_at: now + lapses_in,
    }
}

pub async fn tokens_rotate_once_and_reuse_ends_the_session<S: Store + RefreshTokens>(r: &S) {
    let user = user(r, "alice").await.id;
    let month = Duration::days(30);
    r.open(user, "s1", &record("a", month)).await.unwrap();
    let fresh = r.spend("hash-a", Utc::now()).await.unwrap();
    assert_eq!(
        fresh,
        Spend::Fresh {
            user,
            session: "s1".into()
        }
    );
    assert!(r.rotate("s1", &record("b", month)).await.unwrap());
    assert_eq!(
        r.spend("hash-nothing", Utc::now()).await.unwrap(),
        Spend::Unknown
    );
    // "a" again: a reuse. The session ends, "b" with it, and both access
    // tokens still valid are named for revocation.
    let Spend::Reused {
        user: who,
        mut live,
    } = r.spend("hash-a", Utc::now()).await.unwrap()
    else {
        panic!("a spent token presented again is a reuse");
    };
    live.sort();
    assert_eq!(who, user);
    let jtis: Vec<&str> = live.iter().map(|(j, _)| j.as_str()).collect();
    assert_eq!(jtis, ["jti-a", "jti-b"]);
    assert_eq!(r.spend("hash-b", Utc::now()).await.unwrap(), Spend::Unknown);
    assert!(
        !r.rotate("s1", &record("c", month)).await.unwrap(),
        "an ended session takes no new token"
    );
}

pub async fn tokens_lapse_unused<S: Store + RefreshTokens>(r: &S) {
    let user = user(r, "alice").await.id;
    r.open(user, "s2", &record("short", Duration::seconds(60)))
        .await
        .unwrap();
    let later = Utc::now() + Duration::seconds(120);
    assert_eq!(r.spend("hash-short", later).await.unwrap(), Spend::Unknown);
    assert!(matches!(
        r.spend("hash-short", Utc::now()).await.unwrap(),
        Spend::Fresh { .. }
    ));
}

pub async fn sessions_end_by_access_token_or_all_at_once<S: Store + RefreshTokens>(r: &S) {
    let (user, other) = (user(r, "alice").await.id, user(r, "bob").await.id);
    let month = Duration::days(30);
    for (session, name, who) in [
        ("phone", "p", user),
        ("laptop", "l", user),
        ("tablet", "t", user),
        ("elsewhere", "e", other),
    ] {
        r.open(who, session, &record(name, month)).await.unwrap();
    }
    let live = r.end_session_of("jti-p").await.unwrap();
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0].0, "jti-p");
    assert_eq!(r.spend("hash-p", Utc::now()).await.unwrap(), Spend::Unknown);
    assert!(r.end_session_of("jti-none").await.unwrap().is_empty());

    r.end_sessions(user, Some("jti-l")).await.unwrap();
    assert_eq!(r.spend("hash-t", Utc::now()).await.unwrap(), Spend::Unknown);
    assert!(matches!(
        r.spend("hash-l", Utc::now()).await.unwrap(),
        Spend::Fresh { .. }
    ));
    assert!(
        matches!(
            r.spend("hash-e", Utc::now()).await.unwrap(),
            Spend::Fresh { .. }
        ),
        "another user's session"
    );
    r.end_sessions(user, None).await.unwrap();
    assert!(!r.rotate("laptop", &record("l2", month)).await.unwrap());
}

pub async fn sessions_go_with_their_account<S: Store + RefreshTokens>(r: &S) {
    let user = user(r, "alice").await.id;
    r.open(user, "s", &record("a", Duration::days(30)))
        .await
        .unwrap();
    r.delete_user(user, Utc::now()).await.unwrap();
    assert_eq!(r.spend("hash-a", Utc::now()).await.unwrap(), Spend::Unknown);
}
