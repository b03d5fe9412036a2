//! Why a flow did not go through, in terms an edge can render.

use crate::{
    auth::password::HashError, bus::BusError, domain::Invalid, presence::PresenceError,
    ratelimit::LimiterError, refresh::RefreshError, revocation::RevocationError, store::StoreError,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller is not who it claims to be.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// What the caller named does not exist, or may not be seen by it.
    #[error("{0}")]
    NotFound(&'static str),
    /// The request contradicts what is stored (a taken name, an existing contact).
    #[error("{0}")]
    Refused(&'static str),
    /// The caller holds, or asked for, as much as a limit allows; it may try
    /// again after the time given.
    #[error("{0}")]
    Limited(&'static str, std::time::Duration),
    /// Where the request would put something is full (a recipient's mailbox).
    #[error("{0}")]
    Full(&'static str),
    /// The server is too busy for this now; the client may retry shortly.
    #[error("{0}")]
    Busy(&'static str),
    /// Fields that break the rules, all of them at once.
    #[error("invalid input")]
    Invalid(Vec<Invalid>),
    /// A backend is unreachable: the client may retry.
    #[error("a backend is unavailable")]
    Unavailable(#[source] anyhow::Error),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl Error {
    pub const BAD_CREDENTIALS: Self = Self::Unauthenticated("Incorrect username or password");
    pub const BAD_TOKEN: Self = Self::Unauthenticated("Could not validate credentials");
    pub const BAD_REFRESH_TOKEN: Self =
        Self::Unauthenticated("Session expired or revoked: please log in again");
    pub const MAILBOX_FULL: Self = Self::Full("Recipient's mailbox is full");
}

impl From<Invalid> for Error {
    fn from(invalid: Invalid) -> Self {
        Self::Invalid(vec![invalid])
    }
}

impl From<HashError> for Error {
    fn from(err: HashError) -> Self {
        match err {
            HashError::Busy => Self::Busy("Server busy; try again in a moment"),
            HashError::Failed(e) => Self::Internal(e),
        }
    }
}

impl From<StoreError> for Error {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(e) => Self::Unavailable(e),
            StoreError::NoSuchUser => Self::NotFound("User not found"),
            other => Self::Internal(other.into()),
        }
    }
}

impl From<PresenceError> for Error {
    fn from(err: PresenceError) -> Self {
        Self::Unavailable(err.into())
    }
}

impl From<BusError> for Error {
    fn from(err: BusError) -> Self {
        Self::Unavailable(err.into())
    }
}

impl From<LimiterError> for Error {
    fn from(err: LimiterError) -> Self {
        Self::Unavailable(err.into())
    }
}

impl From<RevocationError> for Error {
    fn from(err: RevocationError) -> Self {
        Self::Unavailable(err.into())
    }
}

impl From<RefreshError> for Error {
    fn from(err: RefreshError) -> Self {
        Self::Unavailable(err.into())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
