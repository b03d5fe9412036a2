//! Behaviour every client-id backend must show.

use std::time::Duration;

use super::ClientIds;

pub async fn a_client_id_names_one_message_per_sender(c: &dyn ClientIds) {
    assert_eq!(c.remember(1, "m-1", 10).await.unwrap(), None);
    assert_eq!(
        c.remember(1, "m-1", 11).await.unwrap(),
        Some(10),
        "a duplicate"
    );
    assert_eq!(
        c.remember(1, "m-1", 12).await.unwrap(),
        Some(10),
        "still the first"
    );
    assert_eq!(
        c.remember(2, "m-1", 13).await.unwrap(),
        None,
        "another sender's"
    );
    assert_eq!(c.remember(1, "m-2", 14).await.unwrap(), None);
    let odd = "ключ:{1}\u{0}*";
    assert_eq!(c.remember(1, odd, 15).await.unwrap(), None);
    assert_eq!(c.remember(1, odd, 16).await.unwrap(), Some(15));
}

pub async fn a_refused_message_is_forgotten(c: &dyn ClientIds) {
    assert_eq!(c.remember(1, "m", 20).await.unwrap(), None);
    c.forget(1, "m", 99).await.unwrap();
    assert_eq!(
        c.remember(1, "m", 21).await.unwrap(),
        Some(20),
        "not that id's"
    );
    c.forget(1, "m", 20).await.unwrap();
    assert_eq!(c.remember(1, "m", 22).await.unwrap(), None, "forgotten");
    c.forget(3, "never", 1).await.unwrap();
}

/// For a backend built with this window.
pub const WINDOW: Duration = Duration::from_secs(1);

pub async fn client_ids_are_forgotten_after_the_window(c: &dyn ClientIds) {
    assert_eq!(c.remember(5, "late", 30).await.unwrap(), None);
    let deadline = tokio::time::Instant::now() + WINDOW * 20;
    loop {
        tokio::time::sleep(WINDOW / 4).await;
        if c.remember(5, "late", 31).await.unwrap().is_none() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still remembered long after the window"
        );
    }
}
