//! The black-box suite: every route of the contract, driven over real sockets.

mod account_security;
mod accounts;
mod bad_input;
mod cluster;
mod contacts;
mod delivery;
mod e2e_vectors;
mod ephemeral;
mod failover;
mod flows;
mod frames;
mod fuzz;
mod helpers;
mod limits;
mod load_balancer;
mod messages;
mod operations;
mod ops;
mod p2p;
mod postgres;
mod privacy;
mod ratelimits;
mod sessions;
mod web;
mod ws;
