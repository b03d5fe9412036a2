//! The client's address, as the server may believe it.

use std::net::{IpAddr, SocketAddr};

use axum::{
    extract::{ConnectInfo, FromRequestParts},
    http::{HeaderMap, request::Parts},
};
use ipnet::IpNet;

use crate::{domain::Endpoint, error::ApiError, state::AppState};

/// The client's IP and the source port of its connection. Behind a trusted proxy
/// the IP comes from `X-Forwarded-For`: the right-most address not itself a
/// trusted proxy, so a client cannot forge it by sending the header itself.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub Endpoint);

impl FromRequestParts<AppState> for Peer {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let ConnectInfo(direct) = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .copied()
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("no connection info")))?;
        Ok(Peer(client_endpoint(
            direct,
            &parts.headers,
            &state.settings.trusted_proxies,
        )))
    }
}

pub fn client_endpoint(direct: SocketAddr, headers: &HeaderMap, trusted: &[IpNet]) -> Endpoint {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(&canonical(*ip)));
    let mut ip = canonical(direct.ip());
    if is_trusted(&ip) {
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|hop| hop.trim().parse::<IpAddr>().ok())
            .map(canonical)
            .collect::<Vec<_>>();
        if let Some(client) = hops
            .iter()
            .rev()
            .find(|hop| !is_trusted(hop))
            .or(hops.first())
        {
            ip = *client;
        }
    }
    Endpoint {
        ip,
        port: direct.port(),
    }
}

/// IPv4 clients of a dual-stack socket appear as `::ffff:a.b.c.d`; show them as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", xff.parse().unwrap());
        h
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let proxy: SocketAddr = "10.0.0.5:4000".parse().unwrap();
        let trusted: Vec<IpNet> = vec!["10.0.0.0/24".parse().unwrap()];
        let ip = |direct, xff, trusted: &[IpNet]| {
            client_endpoint(direct, &headers(xff), trusted)
                .ip
                .to_string()
        };
        assert_eq!(ip(proxy, "203.0.113.9", &trusted), "203.0.113.9");
        // A client-supplied hop in front is ignored: the proxy appended the real one.
        assert_eq!(ip(proxy, "1.2.3.4, 203.0.113.9", &trusted), "203.0.113.9");
        assert_eq!(ip(proxy, "203.0.113.9, 10.0.0.7", &trusted), "203.0.113.9");
        assert_eq!(ip(proxy, "203.0.113.9", &[]), "10.0.0.5");
        assert_eq!(ip(proxy, "garbage", &trusted), "10.0.0.5");
        assert_eq!(
            client_endpoint(proxy, &headers("203.0.113.9"), &trusted).port,
            4000
        );
    }
}
