//! secchat: the relay and directory server of an end-to-end encrypted messenger.
//!
//! The server stores accounts, contacts and opaque offline messages, tracks who is
//! online at which address so that clients can connect peer to peer, and relays
//! messages over WebSockets when a direct connection fails.
//!
//! The modules form layers that only point down (README: Architecture):
//! `startup` → the edges (`http`, `ws`, with `extract` and `error`) → `state` →
//! `service` (one struct per flow) → `connection` (a WebSocket's outbox and
//! receipts, shared with the WebSocket edge) → the backend traits (`store`,
//! `presence`, `bus`, `revocation`, `ratelimit`, `client_ids`, listed once in
//! `capabilities`), implemented in `backends` → `auth`, `domain`, `config`,
//! `metrics`, `batch`.

/// Password hashing and access tokens.
pub mod auth;
/// The backends (in process, Redis, SQLite, Postgres) and the one place that picks them.
pub mod backends;
/// Combining concurrent requests into one round trip.
pub mod batch;
/// Fan-out of WebSocket events to every replica that holds the addressees: the trait.
pub mod bus;
/// The list of backends, one per capability, as traits.
pub mod capabilities;
/// The message ids senders' client ids name, for de-duplication: the trait.
pub mod client_ids;
/// Typed settings, read from the environment and command-line flags.
pub mod config;
/// A WebSocket connection's outbox, receipts and closing, shared by the hub and the session.
pub mod connection;
/// The vocabulary: ids, validated values, endpoints, messages, disconnect reasons.
pub mod domain;
/// The one error type of the edges, rendered as FastAPI-style bodies.
pub mod error;
/// Extractors the HTTP routes and the WebSocket upgrade share.
pub mod extract;
/// HTTP routes, one file per resource.
pub mod http;
/// Prometheus metrics: the recorder and the names of what is measured.
pub mod metrics;
/// Who is online, at which address, under a renewable lease: the trait.
pub mod presence;
/// Rate limits and login lock-outs: the trait.
pub mod ratelimit;
/// Refresh tokens, rotated, with reuse detection: the trait.
pub mod refresh;
/// Tokens refused after logout: the trait.
pub mod revocation;
/// Accepting connections: header deadline, connection cap.
pub mod serve;
/// Every flow that touches more than one backend.
pub mod service;
/// Building the application, binding its port, and running it to shutdown.
pub mod startup;
/// The shared state every handler receives.
pub mod state;
/// Durable storage of users, contacts and messages: the trait.
pub mod store;
/// Logging setup.
pub mod telemetry;
/// The WebSocket relay: upgrade and per-connection session.
pub mod ws;
