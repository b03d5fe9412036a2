//! The client's address, as the server may believe it.

use std::net::{IpAddr, SocketAddr};

use axum::{
    extract::{ConnectInfo, FromRequestParts},
    http::{HeaderMap, request::Parts},
};
use ipnet::IpNet;

use crate::{domain::Endpoint, error::ApiError, state::AppState};

/// The client's IP and the source port of its connection. Behind a trusted
/// proxy both come from `X-Forwarded-For`: the right-most hop that is not
/// itself a trusted proxy, so a client cannot forge it by sending the header
/// itself. A hop may carry the client's source port (`203.0.113.9:5123`,
/// `[2001:db8::1]:5123`), as the shipped nginx configuration writes it;
/// without one the port is unknown (0), never the proxy's own.
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
            &state.settings.listen.trusted_proxies,
        )))
    }
}

pub fn client_endpoint(direct: SocketAddr, headers: &HeaderMap, trusted: &[IpNet]) -> Endpoint {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(&canonical(*ip)));
    let ip = canonical(direct.ip());
    if !is_trusted(&ip) {
        return Endpoint {
            ip,
            port: direct.port(),
        };
    }
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(hop)
        .collect::<Vec<_>>();
    // Walking from the right, each trusted hop vouches for the one before it;
    // the first that is not trusted is the client. When every hop is trusted,
    // only the right-most was written by our direct peer: the ones before it
    // may be the client's own words. An unreadable hop ends the walk.
    let endpoint = |(ip, port): (IpAddr, Option<u16>)| Endpoint {
        ip,
        port: port.unwrap_or(0),
    };
    for hop in hops.iter().rev() {
        match *hop {
            Some(found) if !is_trusted(&found.0) => return endpoint(found),
            Some(_) => continue,
            None => break,
        }
    }
    match hops.last() {
        Some(Some(rightmost)) => endpoint(*rightmost),
        _ => Endpoint {
            ip,
            port: direct.port(),
        },
    }
}

/// One `X-Forwarded-For` hop: an address, with or without a port.
fn hop(raw: &str) -> Option<(IpAddr, Option<u16>)> {
    let raw = raw.trim();
    if let Ok(ip) = raw.parse::<IpAddr>() {
        return Some((canonical(ip), None));
    }
    let with_port = raw.parse::<SocketAddr>().ok()?;
    Some((canonical(with_port.ip()), Some(with_port.port())))
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
        let at = |direct, xff, trusted: &[IpNet]| {
            let e = client_endpoint(direct, &headers(xff), trusted);
            SocketAddr::new(e.ip, e.port).to_string()
        };
        assert_eq!(at(proxy, "203.0.113.9", &trusted), "203.0.113.9:0");
        // A client-supplied hop in front is ignored: the proxy appended the real one.
        assert_eq!(at(proxy, "1.2.3.4, 203.0.113.9", &trusted), "203.0.113.9:0");
        assert_eq!(
            at(proxy, "203.0.113.9, 10.0.0.7", &trusted),
            "203.0.113.9:0"
        );
        assert_eq!(at(proxy, "203.0.113.9", &[]), "10.0.0.5:4000");
        assert_eq!(at(proxy, "garbage", &trusted), "10.0.0.5:4000");
        // The client's source port, when the proxy passes it on.
        assert_eq!(
            at(proxy, "1.2.3.4:9, 203.0.113.9:5123", &trusted),
            "203.0.113.9:5123"
        );
        assert_eq!(
            at(proxy, "[2001:db8::1]:5123", &trusted),
            "[2001:db8::1]:5123"
        );
    }

    #[test]
    fn when_every_hop_is_trusted_the_client_supplied_ones_are_not_believed() {
        let proxy: SocketAddr = "10.0.0.5:4000".parse().unwrap();
        let trusted: Vec<IpNet> = vec!["10.0.0.0/24".parse().unwrap()];
        let at = |xff| {
            let e = client_endpoint(proxy, &headers(xff), &trusted);
            SocketAddr::new(e.ip, e.port).to_string()
        };
        // 10.0.0.66 is what the client wrote; 10.0.0.7 is what the proxy saw.
        assert_eq!(at("10.0.0.66, 10.0.0.7:5123"), "10.0.0.7:5123");
        assert_eq!(at("10.0.0.66, garbage, 10.0.0.7"), "10.0.0.7:0");
    }
}
