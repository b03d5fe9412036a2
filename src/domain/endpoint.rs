use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Where a client can be reached directly: its IP and P2P port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
}
