//! Who the caller is: passwords, tokens, and the extractor handlers use.

pub mod extractor;
pub mod jwt;
pub mod password;
pub mod revocation;

pub use extractor::{AuthUser, authenticate};
