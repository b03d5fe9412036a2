//! secchat: the relay and directory server of an end-to-end encrypted messenger.
//!
//! The server stores accounts, contacts and opaque offline messages, tracks who is
//! online at which address so that clients can connect peer to peer, and relays
//! messages over WebSockets when a direct connection fails.

/// Password hashing, JWTs, and the authenticated-user extractor.
pub mod auth;
/// Turns settings into concrete storage, presence and fan-out backends.
pub mod backends;
/// Combining concurrent requests into one round trip.
pub mod batch;
/// Fan-out of WebSocket events to every replica that holds the addressees.
pub mod bus;
/// Typed settings, read from the environment and command-line flags.
pub mod config;
/// Validated domain types: usernames, emails, keys, passwords, messages.
pub mod domain;
/// The one error type of the HTTP edge, rendered as FastAPI-style bodies.
pub mod error;
/// HTTP routes, one file per resource.
pub mod http;
/// Names of Redis keys and channels, under one prefix.
pub mod keyspace;
/// Prometheus metrics: the recorder and the names of what is measured.
pub mod metrics;
/// The online-contacts panel, answered from a per-viewer cache and presence.
pub mod online;
/// Who is online, at which address, under a renewable lease.
pub mod presence;
/// Building the application, binding its port, and running it to shutdown.
pub mod startup;
/// The shared state every handler receives.
pub mod state;
/// Durable storage of users, contacts, messages and revoked tokens.
pub mod store;
/// Logging setup.
pub mod telemetry;
/// The WebSocket relay: upgrade, per-connection session, and the local hub.
pub mod ws;
