//! Behaviour every store must show. Each backend's tests run every function
//! here on a fresh, empty database.

use chrono::{DateTime, Utc};

use super::*;
use crate::config::Visibility;

fn new_user(name: &str, email: &str) -> NewUser {
    NewUser {
        username: name.into(),
        username_key: name.to_lowercase(),
        username_skeleton: format!("skeleton-of-{}", name.to_lowercase()),
        username_shape: format!("shape-of-{name}"),
        email: email.into(),
        email_key: email.to_lowercase(),
        password_hash: format!("hash-of-{name}"),
        public_key: format!("key-of-{name}"),
    }
}

pub async fn user(s: &dyn Store, name: &str) -> User {
    s.create_user(new_user(name, &format!("{name}@example.com")))
        .await
        .unwrap()
}

fn names(users: &[User]) -> Vec<&str> {
    users.iter().map(|u| u.username.as_str()).collect()
}

fn others(contacts: &[Contact]) -> Vec<(&str, ContactStatus)> {
    contacts
        .iter()
        .map(|c| (c.other.username.as_str(), c.status))
        .collect()
}

/// An instant to the microsecond, which every database keeps.
fn t(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(1_750_000_000_000_000 + secs * 1_000_000 + 123_456).unwrap()
}

pub async fn users_are_unique_regardless_of_case(s: &dyn Store) {
    s.ping().await.unwrap();
    let alice = user(s, "Alice").await;
    assert_eq!(
        (alice.username.as_str(), alice.public_key.as_str()),
        ("Alice", "key-of-Alice")
    );
    assert_eq!(alice.last_seen, None);
    let taken_name = s.create_user(new_user("ALICE", "other@example.com")).await;
    assert!(matches!(taken_name, Err(StoreError::Duplicate)));
    let taken_email = s.create_user(new_user("bob", "ALICE@example.com")).await;
    assert!(matches!(taken_email, Err(StoreError::Duplicate)));

    let credentials = s.credentials("alice").await.unwrap().unwrap();
    assert_eq!(
        (credentials.id, credentials.username.as_str()),
        (alice.id, "Alice")
    );
    assert_eq!(credentials.password_hash, "hash-of-Alice");
    assert!(s.credentials("nobody").await.unwrap().is_none());
    let by_name = s.user_by_username("alice").await.unwrap().unwrap();
    assert_eq!(
        (by_name.id, by_name.email.as_str()),
        (alice.id, "Alice@example.com")
    );
    assert!(s.user_by_id(alice.id + 1000).await.unwrap().is_none());

    s.touch_last_seen(alice.id, t(5)).await.unwrap();
    let seen = s.user_by_id(alice.id).await.unwrap().unwrap().last_seen;
    assert_eq!(seen, Some(t(5)));
}

pub async fn search_matches_literally_by_name(s: &dyn Store) {
    for name in ["ann", "Anna", "b_n", "bxn", "zed"] {
        user(s, name).await;
    }
    let ann = s.user_by_username("ann").await.unwrap().unwrap();
    let found = s.search_users("an", ann.id, 10).await.unwrap();
    assert_eq!(names(&found), ["Anna"], "the caller is left out");
    let found = s.search_users("_", 0, 10).await.unwrap();
    assert_eq!(names(&found), ["b_n"], "'_' is no wildcard");
    let found = s.search_users("n", 0, 2).await.unwrap();
    assert_eq!(names(&found), ["ann", "Anna"], "by name, at most the limit");
    assert!(s.search_users("%", 0, 10).await.unwrap().is_empty());
}

pub async fn requests_become_contacts_on_both_sides(s: &dyn Store) {
    let (a, b, c) = (user(s, "a").await, user(s, "b").await, user(s, "c").await);
    let added = s.add_contact(a.id, b.id).await.unwrap();
    assert_eq!(
        (added.other.id, added.status),
        (b.id, ContactStatus::Accepted)
    );
    assert!(matches!(
        s.add_contact(a.id, b.id).await,
        Err(StoreError::AlreadyContact)
    ));
    let pending = s.pending_requests(b.id).await.unwrap();
    assert_eq!(others(&pending), [("a", ContactStatus::Pending)]);
    assert_eq!(
        others(&s.contacts(a.id, 0, 10).await.unwrap()),
        [("b", ContactStatus::Accepted)]
    );
    assert!(s.contacts(b.id, 0, 10).await.unwrap().is_empty());
    // One-sided: b's address is not a's to see until b accepts.
    assert!(
        s.visible_contacts(a.id, Visibility::Contacts)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        names(&s.visible_contacts(a.id, Visibility::Open).await.unwrap()),
        ["b"]
    );
    assert_eq!(s.watchers(b.id).await.unwrap(), [a.id]);

    assert!(s.accept_request(b.id, c.id).await.unwrap().is_none());
    let accepted = s.accept_request(b.id, a.id).await.unwrap().unwrap();
    assert_eq!(
        (accepted.other.id, accepted.status),
        (a.id, ContactStatus::Accepted)
    );
    assert!(s.pending_requests(b.id).await.unwrap().is_empty());
    assert_eq!(
        others(&s.contacts(b.id, 0, 10).await.unwrap()),
        [("a", ContactStatus::Accepted)]
    );
    assert_eq!(
        names(
            &s.visible_contacts(a.id, Visibility::Contacts)
                .await
                .unwrap()
        ),
        ["b"]
    );
    let who_sees_whom = [
        (a.id, "b", Visibility::Contacts, true),
        (c.id, "b", Visibility::Contacts, false),
        (c.id, "b", Visibility::Open, true),
        (c.id, "c", Visibility::Contacts, true), // oneself
    ];
    for (viewer, name, visibility, sees) in who_sees_whom {
        let found = s.visible_user(viewer, name, visibility).await.unwrap();
        assert_eq!(
            found.is_some(),
            sees,
            "{viewer} sees {name} ({visibility:?})"
        );
    }
    assert!(matches!(
        s.add_contact(b.id, a.id).await,
        Err(StoreError::AlreadyContact)
    ));

    // A request answered by adding back is accepted on both sides.
    s.add_contact(c.id, a.id).await.unwrap();
    s.add_contact(a.id, c.id).await.unwrap();
    assert_eq!(
        names(
            &s.visible_contacts(a.id, Visibility::Contacts)
                .await
                .unwrap()
        ),
        ["b", "c"]
    );
    assert_eq!(
        s.contacts(a.id, 1, 10).await.unwrap()[0].other.id,
        c.id,
        "skip"
    );

    assert!(s.remove_contact(b.id, a.id).await.unwrap());
    assert!(
        !s.remove_contact(a.id, b.id).await.unwrap(),
        "both sides went"
    );
    assert!(s.watchers(b.id).await.unwrap().is_empty());
    assert_eq!(
        others(&s.contacts(a.id, 0, 10).await.unwrap()),
        [("c", ContactStatus::Accepted)]
    );
}

/// The contents of `user`'s unread messages, taken.
async fn taken_contents(s: &dyn Store, user: i64) -> Vec<String> {
    let taken = s.take_unread(user, Page::WHOLE).await.unwrap();
    taken.into_iter().map(|m| m.content).collect()
}

/// `(recipient, id)` for each id.
fn reads(recipient: i64, ids: &[i64]) -> Vec<(i64, i64)> {
    ids.iter().map(|id| (recipient, *id)).collect()
}

/// Ids for the messages these tests write out, far above what a store's
/// own counter gives in a test (`next_message_id` is tested on its own).
static NEXT_ID: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(1 << 40);

fn message(from: &User, to: &User, content: &str) -> NewMessage {
    NewMessage {
        id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        sender_id: from.id,
        recipient_id: to.id,
        content: content.into(),
        sent_at: t(1),
        receipt: false,
        claimed_until: None,
    }
}

/// Stores messages that must all fit.
async fn store_all(s: &dyn Store, messages: &[NewMessage]) -> Vec<Message> {
    s.store_messages(messages, MailboxQuota::NONE)
        .await
        .unwrap()
        .into_iter()
        .map(|a| match a {
            Admission::Stored(m) => m,
            refused => panic!("refused without a quota: {refused:?}"),
        })
        .collect()
}

pub async fn messages_are_read_once_in_order(s: &dyn Store) {
    let (a, b) = (user(s, "a").await, user(s, "b").await);
    assert!(store_all(s, &[]).await.is_empty());
    let stored = store_all(
        s,
        &[
            message(&a, &b, "one"),
            message(&a, &b, "two"),
            message(&b, &a, "three"),
        ],
    )
    .await;
    let contents: Vec<_> = stored.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(contents, ["one", "two", "three"]);
    assert!(stored.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!((stored[0].recipient_id, stored[0].sent_at), (b.id, t(1)));

    let unread = s.peek_unread(b.id, Page::WHOLE).await.unwrap();
    let peeked: Vec<_> = unread
        .iter()
        .map(|m| (m.sender_id, m.content.as_str()))
        .collect();
    assert_eq!(peeked, [(a.id, "one"), (a.id, "two")]);
    s.delete_read(&reads(a.id, &[stored[0].id])).await.unwrap();
    assert_eq!(
        s.peek_unread(b.id, Page::WHOLE).await.unwrap().len(),
        2,
        "only the recipient marks"
    );
    s.delete_read(&reads(b.id, &[stored[0].id])).await.unwrap();
    s.delete_read(&reads(b.id, &[])).await.unwrap();
    assert_eq!(
        s.take_unread(b.id, Page::WHOLE).await.unwrap(),
        [stored[1].clone()]
    );
    assert!(s.take_unread(b.id, Page::WHOLE).await.unwrap().is_empty());
    assert_eq!(
        s.take_unread(a.id, Page::WHOLE).await.unwrap(),
        [stored[2].clone()]
    );
}

pub async fn concurrent_takes_never_share_a_message(s: &dyn Store) {
    let (a, b) = (user(s, "a").await, user(s, "b").await);
    let batch: Vec<_> = (0..60).map(|i| message(&a, &b, &format!("m{i}"))).collect();
    store_all(s, &batch).await;
    let (x, y) = tokio::join!(
        s.take_unread(b.id, Page::WHOLE),
        s.take_unread(b.id, Page::WHOLE)
    );
    let mut ids: Vec<i64> = x
        .unwrap()
        .into_iter()
        .chain(y.unwrap())
        .map(|m| m.id)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 60, "every message exactly once");
}

pub async fn old_messages_expire(s: &dyn Store) {
    let (a, b) = (user(s, "a").await, user(s, "b").await);
    let at = |secs, content: &str| NewMessage {
        sent_at: t(secs),
        ..message(&a, &b, content)
    };
    store_all(s, &[at(1, "old"), at(2, "older than 50"), at(100, "new")]).await;
    assert_eq!(
        s.expire_messages(t(50), 1).await.unwrap(),
        1,
        "at most the limit"
    );
    assert_eq!(s.expire_messages(t(50), 10).await.unwrap(), 1);
    assert_eq!(s.expire_messages(t(50), 10).await.unwrap(), 0);
    let left: Vec<_> = s.take_unread(b.id, Page::WHOLE).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].content, "new");
}

pub async fn mailboxes_hold_what_their_quota_allows(s: &dyn Store) {
    let (a, b, friend) = (
        user(s, "a").await,
        user(s, "b").await,
        user(s, "friend").await,
    );
    // b has accepted friend (and friend b); a is a stranger to b.
    s.add_contact(friend.id, b.id).await.unwrap();
    s.accept_request(b.id, friend.id).await.unwrap().unwrap();
    let quota = MailboxQuota {
        messages: 4,
        bytes: 12,
        from_strangers: 2,
    };
    let stored = |admissions: Vec<Admission>| -> Vec<Option<String>> {
        admissions
            .into_iter()
            .map(|a| match a {
                Admission::Stored(m) => Some(m.content),
                Admission::MailboxFull => None,
                Admission::NoRecipient => panic!("the recipient exists"),
            })
            .collect()
    };
    let first = s
        .store_messages(
            &[
                message(&a, &b, "s1"),
                message(&a, &b, "s2"),
                message(&a, &b, "s3"), // a third from a stranger: refused
                message(&friend, &b, "f1"),
                message(&a, &friend, "other"),
            ],
            quota,
        )
        .await
        .unwrap();
    assert_eq!(
        stored(first),
        [
            Some("s1".into()),
            Some("s2".into()),
            None,
            Some("f1".into()),
            Some("other".into())
        ]
    );
    assert_eq!(
        s.mailbox_usage(b.id).await.unwrap(),
        MailboxUsage {
            messages: 3,
            bytes: 6,
            from_strangers: 2
        }
    );
    // Bytes: 6 held, 12 allowed; a 7-byte message does not fit, a 6-byte one does,
    // and then the count (4) is reached.
    let second = s
        .store_messages(
            &[
                message(&friend, &b, "sevenxx"),
                message(&friend, &b, "sixxxx"),
                message(&friend, &b, "x"),
            ],
            quota,
        )
        .await
        .unwrap();
    assert_eq!(stored(second), [None, Some("sixxxx".into()), None]);
    // Reading frees the mailbox, and the stranger budget with it.
    assert_eq!(s.take_unread(b.id, Page::WHOLE).await.unwrap().len(), 4);
    assert_eq!(
        s.mailbox_usage(b.id).await.unwrap(),
        MailboxUsage::default()
    );
    let third = s
        .store_messages(&[message(&a, &b, "s4"), message(&a, &b, "s5")], quota)
        .await
        .unwrap();
    assert_eq!(stored(third), [Some("s4".into()), Some("s5".into())]);
    // Deleting one read, and expiring the rest, free it too.
    let unread = s.peek_unread(b.id, Page::WHOLE).await.unwrap();
    s.delete_read(&reads(b.id, &[unread[0].id])).await.unwrap();
    assert_eq!(s.mailbox_usage(b.id).await.unwrap().from_strangers, 1);
    s.expire_messages(t(1000), 100).await.unwrap();
    assert_eq!(
        s.mailbox_usage(b.id).await.unwrap(),
        MailboxUsage::default()
    );
    assert_eq!(
        s.mailbox_usage(friend.id).await.unwrap(),
        MailboxUsage::default()
    );
}

pub async fn lookalike_names_are_duplicates(s: &dyn Store) {
    user(s, "alice").await;
    let mut lookalike = new_user("аlice", "other@example.com");
    lookalike.username_skeleton = "skeleton-of-alice".into();
    assert!(matches!(
        s.create_user(lookalike).await,
        Err(StoreError::Duplicate)
    ));
    // Alike as written is a duplicate too.
    let mut shaped = new_user("aIice", "third@example.com");
    shaped.username_shape = "shape-of-alice".into();
    assert!(matches!(
        s.create_user(shaped).await,
        Err(StoreError::Duplicate)
    ));
    // Users from before skeletons get theirs, unless another holds one.
    let (bob, carol) = (user(s, "bob").await, user(s, "carol").await);
    for (id, n) in [(bob.id, "b"), (carol.id, "c")] {
        let (key, skeleton, shape) = (format!("x{n}"), format!("y{n}"), format!("z{n}"));
        assert!(
            s.set_username_keys(id, &key, &skeleton, &shape)
                .await
                .unwrap()
        );
    }
    assert!(
        !s.set_username_keys(carol.id, "x2", "skeleton-of-alice", "z2")
            .await
            .unwrap()
    );
    assert!(
        !s.set_username_keys(carol.id, "x2", "y2", "shape-of-alice")
            .await
            .unwrap()
    );
    assert!(s.unkeyed_users(0, 10).await.unwrap().is_empty());
}

pub async fn presence_consent_is_one_sided(s: &dyn Store) {
    let (a, b, c) = (user(s, "a").await, user(s, "b").await, user(s, "c").await);
    // a added b (b only has a request); b and c are contacts both ways.
    s.add_contact(a.id, b.id).await.unwrap();
    s.add_contact(b.id, c.id).await.unwrap();
    s.accept_request(c.id, b.id).await.unwrap().unwrap();
    let sorted = |mut ids: Vec<UserId>| {
        ids.sort_unstable();
        ids
    };
    assert_eq!(s.consented(a.id).await.unwrap(), vec![b.id]);
    assert_eq!(s.consented(b.id).await.unwrap(), vec![c.id], "not a");
    assert_eq!(sorted(s.watchers(b.id).await.unwrap()), vec![a.id, c.id]);
    let everyone = [a.id, b.id, c.id];
    assert_eq!(
        s.consenting(a.id, &everyone).await.unwrap(),
        Vec::<UserId>::new()
    );
    assert_eq!(
        sorted(s.consenting(b.id, &everyone).await.unwrap()),
        vec![a.id, c.id]
    );
    assert_eq!(s.consenting(c.id, &everyone).await.unwrap(), vec![b.id]);
    assert_eq!(s.consenting(c.id, &[]).await.unwrap(), Vec::<UserId>::new());
}

pub async fn accounts_change_and_go(s: &dyn Store) {
    let (a, b, c) = (user(s, "a").await, user(s, "b").await, user(s, "c").await);
    s.set_password_hash(a.id, "new-hash").await.unwrap();
    assert_eq!(
        s.credentials("a").await.unwrap().unwrap().password_hash,
        "new-hash"
    );
    let changed = s
        .set_public_key(a.id, "new-key", t(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (changed.public_key.as_str(), changed.key_changed_at),
        ("new-key", Some(t(5)))
    );
    assert_eq!(
        s.user_by_id(b.id).await.unwrap().unwrap().key_changed_at,
        None
    );
    s.add_contact(a.id, b.id).await.unwrap();
    s.accept_request(b.id, a.id).await.unwrap().unwrap();
    s.add_contact(c.id, a.id).await.unwrap();
    store_all(
        s,
        &[
            message(&a, &b, "from a"),
            message(&b, &a, "to a"),
            message(&c, &b, "from c"),
        ],
    )
    .await;
    let mut related = s
        .delete_user(a.id, Utc::now() + chrono::Duration::hours(1))
        .await
        .unwrap()
        .unwrap();
    related.sort_unstable();
    assert_eq!(related, vec![b.id, c.id]);
    assert!(s.user_by_id(a.id).await.unwrap().is_none());
    assert!(s.contacts(b.id, 0, 10).await.unwrap().is_empty());
    assert!(
        s.pending_requests(c.id).await.unwrap().is_empty()
            && s.contacts(c.id, 0, 10).await.unwrap().is_empty()
    );
    assert_eq!(
        taken_contents(s, b.id).await,
        ["from c"],
        "a's messages went with it"
    );
    assert_eq!(
        s.mailbox_usage(b.id).await.unwrap(),
        MailboxUsage::default()
    );
    assert!(s.delete_user(a.id, Utc::now()).await.unwrap().is_none());
    // What is sent to it now finds nobody; its name is kept from others.
    let sent = s
        .store_messages(
            &[message(&b, &a, "late"), message(&c, &b, "ok")],
            MailboxQuota::NONE,
        )
        .await
        .unwrap();
    assert!(
        matches!(sent[..], [Admission::NoRecipient, Admission::Stored(_)]),
        "{sent:?}"
    );
    assert!(matches!(
        s.add_contact(b.id, a.id).await,
        Err(StoreError::NoSuchUser)
    ));
    assert!(matches!(
        s.create_user(new_user("A", "fresh@example.com")).await,
        Err(StoreError::Duplicate)
    ));
    // Once the name's time is over, it may be registered again.
    s.delete_user(c.id, Utc::now() - chrono::Duration::seconds(1))
        .await
        .unwrap()
        .unwrap();
    s.create_user(new_user("c", "c2@example.com"))
        .await
        .unwrap();
}

pub async fn claimed_messages_reach_nobody_else(s: &dyn Store) {
    let (a, b) = (user(s, "a").await, user(s, "b").await);
    let stored = store_all(
        s,
        &[
            message(&a, &b, "one"),
            message(&a, &b, "two"),
            message(&a, &b, "three"),
        ],
    )
    .await;
    let ids: Vec<i64> = stored.iter().map(|m| m.id).collect();
    let claimed = s
        .claim_unread(b.id, std::time::Duration::from_secs(60), false, Page::WHOLE)
        .await
        .unwrap();
    let claimed_ids: Vec<i64> = claimed.iter().map(|m| m.message.id).collect();
    assert_eq!(claimed_ids, ids, "all of them, oldest first");
    assert_eq!(claimed[0].sender_username, "a");
    // Nobody else gets them while the claim holds.
    assert!(s.take_unread(b.id, Page::WHOLE).await.unwrap().is_empty());
    assert!(s.peek_unread(b.id, Page::WHOLE).await.unwrap().is_empty());
    assert!(
        s.claim_unread(b.id, std::time::Duration::from_secs(60), false, Page::WHOLE)
            .await
            .unwrap()
            .is_empty()
    );
    // Two were written (deleted); one goes back.
    assert_eq!(
        s.delete_read(&reads(b.id, &ids[..2])).await.unwrap().len(),
        2
    );
    assert!(
        s.delete_read(&reads(a.id, &ids[2..]))
            .await
            .unwrap()
            .is_empty(),
        "not a's"
    );
    s.release_claims(a.id, &ids[2..]).await.unwrap();
    assert!(
        s.take_unread(b.id, Page::WHOLE).await.unwrap().is_empty(),
        "only b releases b's"
    );
    s.release_claims(b.id, &ids[2..]).await.unwrap();
    let again = s
        .claim_unread(b.id, std::time::Duration::ZERO, false, Page::WHOLE)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    // A claim that ran out (its replica died) is no claim.
    assert_eq!(taken_contents(s, b.id).await, ["three"]);
    assert_eq!(
        s.mailbox_usage(b.id).await.unwrap(),
        MailboxUsage::default()
    );
    // Concurrent claims and takes never share a message.
    let many: Vec<NewMessage> = (0..200)
        .map(|i| message(&a, &b, &format!("m{i}")))
        .collect();
    store_all(s, &many).await;
    let lease = std::time::Duration::from_secs(60);
    let (x, y, z) = tokio::join!(
        s.claim_unread(b.id, lease, false, Page::WHOLE),
        s.take_unread(b.id, Page::WHOLE),
        s.claim_unread(b.id, lease, false, Page::WHOLE)
    );
    let mut seen: Vec<i64> = x.unwrap().iter().map(|m| m.message.id).collect();
    seen.extend(y.unwrap().iter().map(|m| m.id));
    seen.extend(z.unwrap().iter().map(|m| m.message.id));
    let count = seen.len();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!((seen.len(), count), (200, 200), "each message once");
}

pub async fn message_ids_follow_acceptance_and_store_once(s: &dyn Store) {
    let (a, b) = (user(s, "a").await, user(s, "b").await);
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(s.next_message_id().await.unwrap());
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let concurrent = futures_util::future::join_all((0..5000).map(|_| s.next_message_id())).await;
    let mut more: Vec<i64> = concurrent.into_iter().map(Result::unwrap).collect();
    more.sort_unstable();
    more.dedup();
    assert_eq!(more.len(), 5000, "no id given twice");
    assert!(more[0] > ids[9], "later than every earlier one");
    let later = s.next_message_id().await.unwrap();
    assert!(later > more[4999]);

    // A message keeps the id it was given; storing it again changes nothing.
    let m = NewMessage {
        id: later,
        receipt: true,
        ..message(&a, &b, "once")
    };
    let first = store_all(s, std::slice::from_ref(&m)).await;
    assert_eq!(first[0].id, later);
    let again = store_all(s, &[m.clone(), m.clone()]).await;
    assert_eq!(again, [first[0].clone(), first[0].clone()]);
    assert_eq!(s.mailbox_usage(b.id).await.unwrap().messages, 1);
    assert_eq!(s.peek_unread(b.id, Page::WHOLE).await.unwrap(), first);

    // Acknowledging answers who asked for a receipt.
    let plain = store_all(s, &[message(&a, &b, "plain")]).await;
    let acked = s
        .delete_read(&reads(b.id, &[later, plain[0].id, 12345]))
        .await
        .unwrap();
    let mut acked: Vec<(i64, i64, i64, bool)> = acked
        .iter()
        .map(|x| (x.id, x.recipient_id, x.sender_id, x.receipt))
        .collect();
    acked.sort_unstable();
    assert_eq!(
        acked,
        [(later, b.id, a.id, true), (plain[0].id, b.id, a.id, false)]
    );
    // Several recipients at once, each only its own.
    let to_a = store_all(s, &[message(&b, &a, "to a")]).await[0].id;
    let to_b = store_all(s, &[message(&a, &b, "to b")]).await[0].id;
    let both = s
        .delete_read(&[(a.id, to_a), (a.id, to_b), (b.id, to_b)])
        .await
        .unwrap();
    let mut both: Vec<(i64, i64)> = both.iter().map(|x| (x.recipient_id, x.id)).collect();
    both.sort_unstable();
    assert_eq!(both, [(a.id, to_a), (b.id, to_b)]);
    assert!(
        s.delete_read(&reads(b.id, &[later]))
            .await
            .unwrap()
            .is_empty(),
        "once"
    );
}

pub async fn held_messages_wait_for_their_connection(s: &dyn Store) {
    let (a, b) = (user(s, "a").await, user(s, "b").await);
    let lease = std::time::Duration::from_secs(60);
    let held = NewMessage {
        claimed_until: Some(Utc::now() + chrono::Duration::seconds(60)),
        ..message(&a, &b, "held")
    };
    let free = message(&a, &b, "free");
    store_all(s, &[held.clone(), free.clone()]).await;
    // Stored claimed: no fetch, take or plain claim gets it.
    assert_eq!(
        s.peek_unread(b.id, Page::WHOLE)
            .await
            .unwrap()
            .iter()
            .map(|m| m.id)
            .collect::<Vec<_>>(),
        [free.id]
    );
    let plain = s
        .claim_unread(b.id, lease, false, Page::WHOLE)
        .await
        .unwrap();
    assert_eq!(
        plain.iter().map(|m| m.message.id).collect::<Vec<_>>(),
        [free.id]
    );
    // A connection that acknowledges takes over every claim, in order.
    let taken_over = s
        .claim_unread(b.id, lease, true, Page::WHOLE)
        .await
        .unwrap();
    assert_eq!(
        taken_over.iter().map(|m| m.message.id).collect::<Vec<_>>(),
        [held.id, free.id]
    );
    // Renewing and releasing touch only the recipient's own.
    let past = Utc::now() - chrono::Duration::seconds(1);
    s.renew_claims(a.id, &[held.id], past).await.unwrap();
    assert!(
        s.take_unread(b.id, Page::WHOLE).await.unwrap().is_empty(),
        "not a's to renew"
    );
    s.renew_claims(b.id, &[held.id], past).await.unwrap();
    assert_eq!(
        taken_contents(s, b.id).await,
        ["held"],
        "renewed into the past: no claim"
    );
    s.release_claims(b.id, &[free.id]).await.unwrap();
    assert_eq!(s.take_unread(b.id, Page::WHOLE).await.unwrap().len(), 1);
}

/// Fetches hand out a page at a time: bounded by bytes (the message that
/// reaches the bound included, so at least one), and continued after the
/// last id given.
pub async fn unread_messages_come_a_page_at_a_time(s: &dyn Store) {
    let (a, b) = (user(s, "a").await, user(s, "b").await);
    let hundred = "x".repeat(100);
    let stored = store_all(
        s,
        &(0..5)
            .map(|_| message(&a, &b, &hundred))
            .collect::<Vec<_>>(),
    )
    .await;
    let ids = |page: &[Message]| page.iter().map(|m| m.id).collect::<Vec<_>>();
    let first = s.peek_unread(b.id, Page::first(250)).await.unwrap();
    assert_eq!(
        ids(&first),
        ids(&stored[..3]),
        "0, 100 and 200 bytes before"
    );
    assert!(Page::first(250).is_full(first.iter().map(|m| m.content.as_str())));
    let next = Page {
        after: first[2].id,
        max_bytes: 250,
    };
    let rest = s.peek_unread(b.id, next).await.unwrap();
    assert_eq!(ids(&rest), ids(&stored[3..]));
    assert!(!next.is_full(rest.iter().map(|m| m.content.as_str())));
    assert_eq!(
        ids(&s.peek_unread(b.id, Page::first(1)).await.unwrap()),
        ids(&stored[..1])
    );
    // Claims and takes page alike.
    let lease = std::time::Duration::from_secs(60);
    let claimed = s
        .claim_unread(b.id, lease, false, Page::first(150))
        .await
        .unwrap();
    let claimed_ids: Vec<i64> = claimed.iter().map(|m| m.message.id).collect();
    assert_eq!(claimed_ids, ids(&stored[..2]));
    let after = Page {
        after: stored[2].id,
        max_bytes: 1,
    };
    let claimed = s.claim_unread(b.id, lease, false, after).await.unwrap();
    assert_eq!(
        claimed.iter().map(|m| m.message.id).collect::<Vec<_>>(),
        ids(&stored[3..4])
    );
    let taken = s.take_unread(b.id, Page::first(150)).await.unwrap();
    assert_eq!(
        ids(&taken),
        [stored[2].id, stored[4].id],
        "claimed ones passed by"
    );
}
