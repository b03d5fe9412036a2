//! Accounts: registration, logging in and out, who a token names, "seen now",
//! the caller's profile, user search, and the account controls (password,
//! logging out everywhere, the public key, deletion).

use std::sync::Arc;

use chrono::Utc;

use super::{
    authn::{AuthUser, Authenticator},
    budget::spend,
    error::{Error, Result},
    names::NameCache,
    sessions::Grant,
    visible::PresenceView,
};
use crate::{
    auth::password::PasswordHasher,
    bus::{Audience, Bus, Event, Sessions},
    config::Settings,
    domain::{
        Email, Endpoint, Password, Port, PublicKey, ServerFrame, UserId, Username, client_key,
    },
    metrics,
    presence::Presence,
    ratelimit::Limit,
    ratelimit::Limiter,
    refresh::RefreshTokens,
    revocation::Revocations,
    store::Store,
    store::{NewUser, StoreError, User},
};

/// The lock-out key of every name that cannot be registered: such an account
/// cannot exist, so sharing one run of failures among them hides nothing.
const UNREGISTRABLE: &str = "\u{0}";

/// A login attempt, as the edge read it.
pub struct Login {
    pub username: String,
    pub password: Password,
    /// The P2P port the client declared; without one, its connection's port.
    pub port: Option<Port>,
}

/// The accounts flow.
pub struct Accounts {
    /// Users, their credentials and keys.
    pub(super) store: Arc<dyn Store>,
    /// Tokens revoked by logouts, password changes and deletions.
    pub(super) revocations: Arc<dyn Revocations>,
    /// Each login's refresh tokens.
    pub(super) refresh_tokens: Arc<dyn RefreshTokens>,
    /// Where a user is seen (login, heartbeat), and signing off.
    pub(super) presence: Arc<dyn Presence>,
    /// Closing a user's WebSockets, and key-change notices, on every replica.
    pub(super) bus: Arc<dyn Bus>,
    /// Login, registration, search, heartbeat, key-change and TURN budgets,
    /// and login lock-outs.
    pub(super) limiter: Arc<dyn Limiter>,
    pub(super) passwords: PasswordHasher,
    pub(super) authn: Arc<Authenticator>,
    /// Usernames resolved to ids without a store round trip.
    pub(super) names: Arc<NameCache>,
    pub(super) view: PresenceView,
    pub(super) settings: Arc<Settings>,
}

impl Accounts {
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
            Password::parse(password, self.settings.password_policy()),
            PublicKey::parse(public_key),
        );
        // Invalid fields say nothing about other users: they are answered
        // without spending the address's registrations.
        let (username, email, password, public_key) = match checks {
            (Ok(u), Ok(e), Ok(p), Ok(k)) => (u, e, p, k),
            (u, e, p, k) => {
                let errors = [u.err(), e.err(), p.err(), k.err()].into_iter().flatten();
                return Err(Error::Invalid(errors.collect()));
            }
        };
        spend(
            self.limiter.as_ref(),
            Limit::RegisterPerIp,
            &client_key(client.ip),
        )
        .await?;
        let password_hash = self.passwords.hash(password).await?;
        self.store
            .create_user(NewUser {
                username_key: username.key(),
                username_skeleton: username.skeleton(),
                username_shape: username.shape(),
                username: username.as_str().to_owned(),
                email_key: email.key(),
                email: email.as_str().to_owned(),
                password_hash,
                public_key: public_key.as_str().to_owned(),
            })
            .await
            .map_err(|e| match e {
                // One answer for a name, a lookalike of one, a retired one and
                // an email, to say no more than the contract requires.
                StoreError::Duplicate => Error::Refused("Username or email already registered"),
                other => other.into(),
            })
    }

    /// Gives users registered before names had skeletons their look-up key
    /// and skeleton (computing them takes Unicode tables SQL does not have).
    /// Two earlier users whose names turn out to look alike keep what they
    /// had, and the first keeps every new lookalike out.
    pub async fn key_earlier_usernames(&self) -> Result<()> {
        let mut after = 0;
        loop {
            let batch = self.store.unkeyed_users(after, 500).await?;
            let Some(&(last, _)) = batch.last() else {
                return Ok(());
            };
            after = last;
            for (id, name) in batch {
                let name = Username::registered(&name);
                let (key, skeleton, shape) = (name.key(), name.skeleton(), name.shape());
                if !self
                    .store
                    .set_username_keys(id, &key, &skeleton, &shape)
                    .await?
                {
                    tracing::warn!(
                        user_id = id,
                        "an earlier user's name looks like another's; it keeps its old key"
                    );
                }
            }
        }
    }

    /// Checks the password (at the same cost whether or not the user exists),
    /// issues a token, and marks the user online at `peer` (with the declared
    /// port, if any). Attempts are limited per client address, and failures
    /// in a row lock the account out for longer and longer: the same for a
    /// name nobody holds, so that the limiter tells nothing either.
    pub async fn login(&self, login: Login, peer: Endpoint) -> Result<Grant> {
        spend(
            self.limiter.as_ref(),
            Limit::LoginPerIp,
            &client_key(peer.ip),
        )
        .await?;
        let attempt = Attempt::Login(peer.ip);
        let Some((id, username)) = self
            .check_password(&login.username, login.password, attempt)
            .await?
        else {
            metrics::login(false);
            return Err(Error::BAD_CREDENTIALS);
        };
        let access = self.authn.issue(id, &username).await?;
        let grant = self.open_session(id, access).await?;
        // Its first request then costs no store read to authenticate.
        self.names.remember(id, &username);
        let at = Endpoint {
            port: login.port.map_or(peer.port, |p| p.0),
            ..peer
        };
        self.seen_at(id, at).await?;
        metrics::login(true);
        tracing::info!(user_id = id, "login");
        Ok(grant)
    }

    /// The user `name` names if `password` is its password: checked at the
    /// same cost whether or not the user exists. Failures in a row lock the
    /// account out for longer and longer, for that one source of attempts
    /// (the client address of a login, the session of an account control),
    /// the same for a name nobody holds, so that the limiter tells nothing
    /// either; a locked-out source is refused without checking. Nobody's
    /// failures lock the owner out of its own address or session.
    async fn check_password(
        &self,
        name: &str,
        password: Password,
        attempt: Attempt<'_>,
    ) -> Result<Option<(UserId, String)>> {
        let key = Username::lookup_key(name);
        let account = attempt.lockout_key(key.as_deref().unwrap_or(UNREGISTRABLE));
        let account = account.as_str();
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
        let matches = self.passwords.verify(password, stored_hash).await?;
        let Some(user) = user.filter(|_| matches) else {
            self.limiter.login_failed(account).await?;
            return Ok(None);
        };
        self.limiter.login_succeeded(account).await?;
        Ok(Some(user))
    }

    /// The caller's password, confirmed before an account control.
    async fn confirm_password(&self, user: &AuthUser, password: String) -> Result<()> {
        let attempt = Attempt::Session(&user.jti);
        match self
            .check_password(&user.username, Password::to_verify(password), attempt)
            .await?
        {
            Some((id, _)) if id == user.id => Ok(()),
            _ => Err(Error::Unauthenticated("Incorrect password")),
        }
    }

    /// The heartbeat: the user is at `peer`'s IP and `port`, seen now.
    pub async fn heartbeat(&self, user: &AuthUser, peer: Endpoint, port: Port) -> Result<()> {
        spend(
            self.limiter.as_ref(),
            Limit::HeartbeatPerUser,
            &user.id.to_string(),
        )
        .await?;
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
        self.end_session(user).await?;
        self.close_sessions(user.id, Sessions::Of(user.jti.clone()))
            .await?;
        let now = Utc::now();
        self.presence
            .sign_off(user.id, Some(&user.jti), now)
            .await?;
        Ok(self.store.touch_last_seen(user.id, now).await?)
    }

    /// Logs out every token of the user, the caller's included: all stop
    /// working, every WebSocket of the user closes, and it is offline.
    pub async fn logout_everywhere(&self, user: &AuthUser) -> Result<()> {
        self.revocations.revoke_all(user.id, None).await?;
        self.refresh_tokens.end_sessions(user.id, None).await?;
        self.close_sessions(user.id, Sessions::AllBut(None)).await?;
        let now = Utc::now();
        self.presence.sign_off(user.id, None, now).await?;
        tracing::info!(user_id = user.id, "logged out everywhere");
        Ok(self.store.touch_last_seen(user.id, now).await?)
    }

    /// Changes the caller's password once the old one is confirmed: every
    /// other token of the user stops working and its WebSockets close, on
    /// every replica.
    pub async fn change_password(
        &self,
        user: &AuthUser,
        old_password: String,
        new_password: String,
    ) -> Result<()> {
        let new_password = Password::parse(new_password, self.settings.password_policy()).map_err(
            |mut invalid| {
                invalid.field = "new_password";
                Error::from(invalid)
            },
        )?;
        self.confirm_password(user, old_password).await?;
        let hash = self.passwords.hash(new_password).await?;
        self.store.set_password_hash(user.id, &hash).await?;
        let others = Sessions::AllBut(Some(user.jti.clone()));
        self.revocations
            .revoke_all(user.id, Some(&user.jti))
            .await?;
        self.refresh_tokens
            .end_sessions(user.id, Some(&user.jti))
            .await?;
        self.close_sessions(user.id, others).await?;
        tracing::info!(user_id = user.id, "password changed");
        Ok(())
    }

    /// Publishes a new public key for the caller once its password is
    /// confirmed, under the key-change budget. Users who have it as a contact
    /// and are connected receive a `key_changed` frame; the others see
    /// `key_changed_at` in their contact list.
    /// Returns the user, and whether it is online.
    pub async fn change_public_key(
        &self,
        user: &AuthUser,
        public_key: String,
        password: String,
    ) -> Result<(User, bool)> {
        let key = PublicKey::parse(public_key)?;
        spend(
            self.limiter.as_ref(),
            Limit::KeyChangePerUser,
            &user.id.to_string(),
        )
        .await?;
        self.confirm_password(user, password).await?;
        let changed = self
            .store
            .set_public_key(user.id, key.as_str(), Utc::now())
            .await?
            .ok_or(Error::BAD_TOKEN)?;
        let watchers = self.store.watchers(user.id).await?;
        // Their online panels show the key: read again, on every replica.
        self.presence.contacts_changed(&watchers).await?;
        let frame = ServerFrame::KeyChanged {
            username: &changed.username,
            public_key: &changed.public_key,
        }
        .to_text();
        if !watchers.is_empty()
            && let Err(err) = self
                .bus
                .publish(Event::Text {
                    text: frame,
                    audience: Audience::Users(watchers),
                })
                .await
        {
            // Stored already; contacts see the new key in their lists.
            tracing::warn!(error = %err, "key change notice failed");
        }
        tracing::info!(user_id = user.id, "public key changed");
        let online = self.presence.locate(&[user.id]).await?[0].is_some();
        Ok((changed, online))
    }

    /// Deletes the caller's account once its password is confirmed: its
    /// contacts, requests and stored messages go, every token stops working,
    /// every WebSocket closes, and its name stays unavailable for the
    /// configured time.
    pub async fn delete_account(&self, user: &AuthUser, password: String) -> Result<()> {
        self.confirm_password(user, password).await?;
        self.revocations.revoke_all(user.id, None).await?;
        let retired_until =
            crate::domain::time::after(Utc::now(), self.settings.deleted_name_retention());
        let Some(mut related) = self.store.delete_user(user.id, retired_until).await? else {
            return Err(Error::BAD_TOKEN);
        };
        self.names.forget(&user.username);
        self.close_sessions(user.id, Sessions::AllBut(None)).await?;
        self.presence.sign_off(user.id, None, Utc::now()).await?;
        related.push(user.id);
        self.presence.contacts_changed(&related).await?;
        tracing::info!(user_id = user.id, "account deleted");
        Ok(())
    }

    /// Closes some of the user's WebSockets, on every replica.
    async fn close_sessions(&self, user: UserId, sessions: Sessions) -> Result<()> {
        self.bus
            .publish(Event::CloseSessions { user, sessions })
            .await?;
        Ok(())
    }

    /// The caller a token names (see [`Authenticator::authenticate`]).
    pub async fn authenticate(&self, token: &str) -> Result<AuthUser> {
        self.authn.authenticate(token).await
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
        spend(
            self.limiter.as_ref(),
            Limit::SearchPerUser,
            &user.id.to_string(),
        )
        .await?;
        let Some(needle) = Username::lookup_key(query).filter(|_| limit > 0) else {
            return Ok(Vec::new()); // nothing can match
        };
        let users = self
            .store
            .search_users(&needle, user.id, i64::from(limit))
            .await?;
        let found = self.view.with_presence(user.id, users, |u| u).await?;
        Ok(found
            .into_iter()
            .map(|(u, seen)| (u, seen.online))
            .collect())
    }
}

/// Where a password check comes from, which its failures lock out.
#[derive(Clone, Copy)]
enum Attempt<'a> {
    /// A login from this client address (an IPv6 /64 counts as one).
    Login(std::net::IpAddr),
    /// An account control of the session holding this token id.
    Session(&'a str),
}

impl Attempt<'_> {
    /// The lock-out key of `account` (a look-up key) for attempts from here.
    fn lockout_key(self, account: &str) -> String {
        match self {
            Attempt::Login(ip) => format!("{account}@{}", client_key(ip)),
            Attempt::Session(jti) => format!("{account}#{jti}"),
        }
    }
}
