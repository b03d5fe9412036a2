//! The vocabulary every layer speaks: ids, validated values checked once at the
//! edge (so the rest of the crate can trust them), where a client is, a message
//! in flight, and why a connection ends. No framework types.
//!
//! Limits (documented in README.md):
//! - username: 1–32 characters, letters, digits, `_`, `-`, `.`; unique regardless of case;
//! - email: a valid address, at most 254 bytes; unique regardless of case;
//! - password: 8–128 characters, not among the most common ones (see `password`);
//! - public key: 1–16384 bytes of text;
//! - message content: 1 byte up to the `MAX_MESSAGE_BYTES` setting, opaque.

mod disconnect;
mod endpoint;
mod frame;
mod message;
mod password;
mod rate;
mod server_frame;
pub mod time;
mod user;
mod whole;

pub use disconnect::Disconnect;
pub use endpoint::{Endpoint, client_group, client_key};
pub use frame::{ClientFrame, is_broadcastable};
pub use message::{AckMode, DirectMessage};
pub use password::{Password, PasswordPolicy};
pub use rate::Rate;
pub use server_frame::{Arrival, ContactCard, ServerFrame};
pub use user::{Email, Port, PublicKey, USERNAME_MAX_CHARS, Username};
pub use whole::{Whole, whole_number};

/// A user's id, as the store assigns it.
pub type UserId = i64;

/// What is wrong with one input field, rendered as a FastAPI validation item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: &'static str,
    pub message: String,
}

impl Invalid {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// Opaque message content bounded by the configured size limit.
#[derive(Debug, Clone)]
pub struct MessageContent(String);

impl MessageContent {
    pub fn parse(raw: String, max_bytes: usize, field: &'static str) -> Result<Self, Invalid> {
        if raw.is_empty() {
            return Err(Invalid::new(field, "must not be empty"));
        }
        // Postgres text cannot hold NUL; refusing it everywhere keeps backends alike.
        if raw.contains('\0') {
            return Err(Invalid::new(field, "must not contain NUL characters"));
        }
        if raw.len() > max_bytes {
            return Err(Invalid::new(
                field,
                format!("must be at most {max_bytes} bytes"),
            ));
        }
        Ok(Self(raw))
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}
