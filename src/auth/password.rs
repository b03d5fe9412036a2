//! argon2id password hashing, off the async runtime and bounded in concurrency.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Instant,
};

use anyhow::Context;
use argon2::{
    Algorithm, Argon2, Params, PasswordHash, PasswordHasher as _, PasswordVerifier, Version,
    password_hash::{SaltString, rand_core::OsRng},
};
use tokio::sync::Semaphore;

use crate::domain::Password;

/// OWASP's current argon2id recommendation: 19 MiB, two passes, one lane.
fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).expect("valid argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Why a password could not be hashed or verified.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// As many hashes are waiting as may: the caller should try again shortly.
    #[error("too many password hashes waiting")]
    Busy,
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

pub struct PasswordHasher {
    /// A burst of logins waits here instead of occupying every blocking thread.
    permits: Arc<Semaphore>,
    /// Hashes waiting for a permit, and how many may: beyond it a burst is
    /// refused at once rather than made to wait ever longer.
    waiting: AtomicUsize,
    max_waiting: usize,
    /// Verified against when the user does not exist, so that costs the same as a
    /// wrong password.
    dummy_hash: String,
}

impl PasswordHasher {
    /// Hashes `concurrency` passwords at once, with up to `max_waiting` more
    /// waiting their turn.
    pub fn new(concurrency: usize, max_waiting: usize) -> anyhow::Result<Self> {
        let salt = SaltString::generate(&mut OsRng);
        let dummy_hash = argon2()
            .hash_password(b"no such user", &salt)
            .map_err(|e| anyhow::anyhow!("hashing the dummy password: {e}"))?
            .to_string();
        Ok(Self {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            waiting: AtomicUsize::new(0),
            max_waiting,
            dummy_hash,
        })
    }

    pub async fn hash(&self, password: Password) -> Result<String, HashError> {
        self.run(move || {
            let salt = SaltString::generate(&mut OsRng);
            argon2()
                .hash_password(password.expose().as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| anyhow::anyhow!("hashing a password: {e}"))
        })
        .await
    }

    /// True when `password` matches `stored`; with no stored hash, does the same work
    /// and answers false.
    pub async fn verify(
        &self,
        password: Password,
        stored: Option<String>,
    ) -> Result<bool, HashError> {
        let (hash, exists) = match stored {
            Some(hash) => (hash, true),
            None => (self.dummy_hash.clone(), false),
        };
        self.run(move || {
            let parsed = PasswordHash::new(&hash)
                .map_err(|e| anyhow::anyhow!("stored hash unreadable: {e}"))?;
            let matches = argon2()
                .verify_password(password.expose().as_bytes(), &parsed)
                .is_ok();
            Ok(matches && exists)
        })
        .await
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> Result<T, HashError> {
        let _permit = match self.permits.try_acquire() {
            Ok(permit) => permit,
            Err(_) => {
                if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
                    self.waiting.fetch_sub(1, Ordering::AcqRel);
                    crate::metrics::password_hash_refused();
                    return Err(HashError::Busy);
                }
                let permit = self.permits.acquire().await;
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                permit.context("hasher closed")?
            }
        };
        let span = tracing::Span::current();
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(move || {
            lower_priority();
            span.in_scope(work)
        })
        .await
        .context("hashing task panicked")?;
        crate::metrics::password_hashed(started.elapsed());
        Ok(result?)
    }
}

/// Makes the calling (blocking-pool) thread yield the CPU to request handling:
/// a burst of logins then slows logins, not everything else. Blocking threads
/// here do nothing but hash, so the setting may stay with the thread.
fn lower_priority() {
    // SAFETY: setpriority on the calling thread (tid 0 = caller) with a constant.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_then_verify() {
        let hasher = PasswordHasher::new(2, 8).unwrap();
        let hash = hasher
            .hash(Password::to_verify("correct horse".into()))
            .await
            .unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        let ok = Password::to_verify("correct horse".into());
        let bad = Password::to_verify("wrong horse".into());
        assert!(hasher.verify(ok, Some(hash.clone())).await.unwrap());
        assert!(!hasher.verify(bad, Some(hash)).await.unwrap());
        let any = Password::to_verify("no such user".into());
        assert!(!hasher.verify(any, None).await.unwrap());
    }
}
