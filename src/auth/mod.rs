//! Credentials: password hashing and access tokens. Who a request's token
//! names is a flow (`service::accounts`), and the extractor that asks it is
//! at the edge (`extract::auth`).

pub mod jwt;
pub mod password;
