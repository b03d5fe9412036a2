//! Accounts: registration, logging in and out, who a token names, "seen now",
//! the caller's profile and user search.

use chrono::{DateTime, Utc};

use super::{Error, Result, Services};
use crate::{
    bus::Event,
    domain::{Email, Endpoint, Password, Port, PublicKey, UserId, Username, client_key},
    metrics,
    ratelimit::Limit,
    store::{NewUser, StoreError, User},
};

/// The lock-out key of every name that cannot be registered: such an account
/// cannot exist, so sharing one run of failures among them hides nothing.
const UNREGISTRABLE: &str = "\u{0}";

/// The caller named by a valid, unrevoked token of an existing user.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub id: UserId,
    /// As registered.
    pub username: String,
    pub jti: String,
    pub expires_at: DateTime<Utc>,
}

/// A login attempt, as the edge read it.
pub struct Login {
    pub username: String,
    pub password: Password,
    /// The P2P port the client declared; without one, its connection's port.
    pub port: Option<Port>,
}

impl Services {
    /// Registers a user from `client`; every invalid field is reported at once.
    pub async fn register(
        &self,
        client: Endpoint,
        username: &str,
        email: &str,
        password: String,
        public_key: String,
    ) -> Result<User> {
        let checks = (
            Username::parse(username),
            Email::parse(email),
            Password::parse(password),
            PublicKey::parse(public_key),
        );
        self.spend(Limit::RegisterPerIp, &client_key(client.ip))
            .await?;
        let (username, email, password, public_key) = match checks {
            (Ok(u), Ok(e), Ok(p), Ok(k)) => (u, e, p, k),
            (u, e, p, k) => {
                let errors = [u.err(), e.err(), p.err(), k.err()].into_iter().flatten();
                return Err(Error::Invalid(errors.collect()));
            }
        };
        let password_hash = self.passwords.hash(password).await?;
        self.store
            .create_user(NewUser {
                username_key: username.key(),
                username: username.as_str().to_owned(),
                email_key: email.key(),
                email: email.as_str().to_owned(),
                password_hash,
                public_key: public_key.as_str().to_owned(),
            })
            .await
            .map_err(|e| match e {
                // One answer for both, to say no more than the contract requires.
                StoreError::Duplicate => Error::Refused("Username or email already registered"),
                other => other.into(),
            })
    }

    /// Checks the password (at the same cost whether or not the user exists),
    /// issues a token, and marks the user online at `peer` (with the declared
    /// port, if any). Attempts are limited per client address, and failures
    /// in a row lock the account out for longer and longer: the same for a
    /// name nobody holds, so that the limiter tells nothing either.
    pub async fn login(&self, login: Login, peer: Endpoint) -> Result<String> {
        self.spend(Limit::LoginPerIp, &client_key(peer.ip)).await?;
        let key = Username::lookup_key(&login.username);
        let account = key.as_deref().unwrap_or(UNREGISTRABLE);
        if let Some(wait) = self.limiter.locked_for(account).await? {
            metrics::rate_limited(metrics::LOGIN_LOCKOUT, 1);
            return Err(Error::Limited(
                "Too many failed logins; try again later",
                wait,
            ));
        }
        let credentials = match &key {
            Some(key) => self.store.credentials(key).await?,
            None => None, // verified against the dummy hash below all the same
        };
        let (stored_hash, user) = match credentials {
            Some(c) => (Some(c.password_hash), Some((c.id, c.username))),
            None => (None, None),
        };
        let matches = self.passwords.verify(login.password, stored_hash).await?;
        let Some((id, username)) = user.filter(|_| matches) else {
            metrics::login(false);
            self.limiter.login_failed(account).await?;
            return Err(Error::BAD_CREDENTIALS);
        };
        self.limiter.login_succeeded(account).await?;
        let token = self.tokens.issue(id, &username).map_err(Error::Internal)?;
        // Its first request then costs no store read to authenticate.
        self.names.remember(id, &username);
        let at = Endpoint {
            port: login.port.map_or(peer.port, |p| p.0),
            ..peer
        };
        self.seen_at(id, at).await?;
        metrics::login(true);
        tracing::info!(user_id = id, "login");
        Ok(token)
    }

    /// The heartbeat: the user is at `peer`'s IP and `port`, seen now.
    pub async fn heartbeat(&self, user: &AuthUser, peer: Endpoint, port: Port) -> Result<()> {
        self.seen_at(
            user.id,
            Endpoint {
                port: port.0,
                ..peer
            },
        )
        .await
    }

    /// The user is at `at`, seen now: the same instant in presence and in the
    /// store, so the online panel's `last_seen` equals the contact list's.
    async fn seen_at(&self, user: UserId, at: Endpoint) -> Result<()> {
        let now = Utc::now();
        self.presence.announce(user, at, now).await?;
        Ok(self.store.touch_last_seen(user, now).await?)
    }

    /// Logs out one token: it stops working everywhere, its WebSockets close on
    /// every replica, and the user goes offline unless another token of its
    /// still holds a connection.
    pub async fn logout(&self, user: &AuthUser) -> Result<()> {
        self.revocations.revoke(&user.jti, user.expires_at).await?;
        self.bus
            .publish(Event::CloseSessions {
                user: user.id,
                jti: user.jti.clone(),
            })
            .await?;
        let now = Utc::now();
        self.presence.sign_off(user.id, &user.jti, now).await?;
        Ok(self.store.touch_last_seen(user.id, now).await?)
    }

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

    /// The caller's own user, and whether it is online.
    pub async fn me(&self, user: &AuthUser) -> Result<(User, bool)> {
        let me = [user.id];
        let (found, online) =
            tokio::join!(self.store.user_by_id(user.id), self.presence.locate(&me));
        let found = found?.ok_or(Error::BAD_TOKEN)?;
        Ok((found, online?[0].is_some()))
    }

    /// Users whose name contains `query` (any case), the caller left out, each
    /// with whether it is online.
    pub async fn search(
        &self,
        user: &AuthUser,
        query: &str,
        limit: u32,
    ) -> Result<Vec<(User, bool)>> {
        self.spend(Limit::SearchPerUser, &user.id.to_string())
            .await?;
        let Some(needle) = Username::search_needle(query).filter(|_| limit > 0) else {
            return Ok(Vec::new()); // nothing can match
        };
        let users = self
            .store
            .search_users(&needle, user.id, i64::from(limit))
            .await?;
        self.with_presence(users, |u| u.id).await
    }

    /// Spends one event of `key`'s budget under `limit`, or refuses with the
    /// time until the budget allows one. Without its counters (Redis away), a
    /// limit on messages lets them through (they are still bounded by the
    /// connection's own frame budget and the mailbox quota, and an offline
    /// message is what keeps a message when fan-out is down); the others
    /// refuse with 503.
    pub(super) async fn spend(&self, limit: Limit, key: &str) -> Result<()> {
        let grant = match self.limiter.take(limit, key, 1).await {
            Ok(grant) => grant,
            Err(err) if limit.fails_open() => {
                tracing::warn!(error = %err, limit = limit.name(), "rate limiter unavailable");
                return Ok(());
            }
            Err(err) => return Err(err.into()),
        };
        if grant.granted == 1 {
            return Ok(());
        }
        metrics::rate_limited(limit.name(), 1);
        Err(Error::Limited(refusal(limit), grant.retry_after))
    }

    /// Pairs each item with whether the user it names is online: one presence
    /// round trip for all of them.
    pub(super) async fn with_presence<T>(
        &self,
        items: Vec<T>,
        user_of: impl Fn(&T) -> UserId,
    ) -> Result<Vec<(T, bool)>> {
        let ids: Vec<UserId> = items.iter().map(&user_of).collect();
        let online = self.presence.locate(&ids).await?;
        Ok(items
            .into_iter()
            .zip(online)
            .map(|(item, at)| (item, at.is_some()))
            .collect())
    }
}

/// What a client over `limit` is told.
fn refusal(limit: Limit) -> &'static str {
    match limit {
        Limit::LoginPerIp => "Too many login attempts; try again later",
        Limit::RegisterPerIp => "Too many registrations; try again later",
        Limit::SearchPerUser => "Too many searches; try again later",
        Limit::OfflinePerSender => "Too many offline messages; try again later",
        Limit::FramesPerUser => "Too many messages; slow down",
    }
}
