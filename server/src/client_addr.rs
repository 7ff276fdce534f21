//! The address a request comes from, as the rate limits and the access log see it.
//!
//! Behind a reverse proxy every device shares the proxy's address (and so one connection bucket).
//! With `--trusted-proxies`, a request whose TCP peer is one of them is attributed to the address
//! the proxies forwarded in the one header they set (`--forwarded-header`: `X-Forwarded-For` by
//! default, or RFC 7239's `Forwarded: for=…`), read from the right, skipping addresses that are
//! themselves trusted proxies (a chain of them), stopping at the first that is not. The other
//! header is never read: a proxy passes on what the device sent in it, so a device could name any
//! address there (escaping its own cap, or filling another device's). A peer that is not a trusted
//! proxy is taken as it is: its headers change nothing, so a device cannot pick its own bucket by
//! forging them.

use crate::AppState;
use crate::error::ApiError;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use wardline_protocol::ErrorCode;

/// A network: an address and how many of its leading bits are fixed (`10.0.0.0/8`, `::1/128`; a
/// bare address is the network of that address alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    address: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in this network (an IPv4 address also as `::ffff:a.b.c.d`).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.address, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Cidr, String> {
        let (address, prefix) = match text.trim().split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text.trim(), None),
        };
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("{text:?} is not an address or network (10.0.0.0/8, ::1)"))?;
        let address = canonical(address);
        let bits = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {bits}"))?,
            None => bits,
        };
        Ok(Cidr { address, prefix })
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The header trusted proxies name the client in (`--forwarded-header`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, …` (nginx's `$proxy_add_x_forwarded_for`, HAProxy's
    /// `option forwardfor`, most load balancers).
    #[default]
    XForwardedFor,
    /// RFC 7239's `Forwarded: for=client, for=proxy1, …`.
    Forwarded,
}

/// The client's address: the TCP peer, or what trusted proxies forwarded for it in `header`.
pub fn client_ip(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &[Cidr],
    header: ForwardedHeader,
) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let forwarded = forwarded_for(headers, header);
    // Right to left: the nearest hop first. The first address that is not a trusted proxy is
    // the client; if every one is, the farthest is.
    let mut client = peer;
    for ip in forwarded.into_iter().rev() {
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    client
}

/// The addresses forwarded in `header`, nearest last (every line of it, in order). An entry that
/// is not an address (`unknown`, an obfuscated name) ends the list there: nothing to its left can
/// be attributed.
fn forwarded_for(headers: &HeaderMap, header: ForwardedHeader) -> Vec<IpAddr> {
    let name = match header {
        ForwardedHeader::XForwardedFor => "x-forwarded-for",
        ForwardedHeader::Forwarded => "forwarded",
    };
    let elements = headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().ok())
        // A line that is not text cannot be read: nothing before it is believed.
        .flat_map(|v| match v {
            Some(v) => v.split(',').map(|e| Some(e.trim())).collect::<Vec<_>>(),
            None => vec![None],
        });
    let entries: Vec<Option<IpAddr>> = match header {
        ForwardedHeader::XForwardedFor => elements.map(|e| e.and_then(parse_node)).collect(),
        ForwardedHeader::Forwarded => elements
            .map(|element| {
                element?
                    .split(';')
                    .filter_map(|pair| pair.trim().split_once('='))
                    .find(|(key, _)| key.trim().eq_ignore_ascii_case("for"))
                    .and_then(|(_, value)| parse_node(value))
            })
            .collect(),
    };
    let usable = entries
        .iter()
        .rposition(Option::is_none)
        .map_or(0, |i| i + 1);
    entries[usable..].iter().flatten().copied().collect()
}

/// `192.0.2.1`, `192.0.2.1:4711`, `"[2001:db8::1]:4711"`, `[2001:db8::1]`, `2001:db8::1`.
fn parse_node(value: &str) -> Option<IpAddr> {
    let value = value.trim().trim_matches('"');
    if let Ok(ip) = value.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(socket) = value.parse::<SocketAddr>() {
        return Some(socket.ip());
    }
    value
        .strip_prefix('[')
        .and_then(|rest| rest.split_once(']'))
        .and_then(|(ip, _)| ip.parse().ok())
}

/// Extracts the client's address ([`client_ip`] under the relay's `--trusted-proxies` and
/// `--forwarded-header`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let ConnectInfo(peer) = ConnectInfo::<SocketAddr>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::new(ErrorCode::Internal, format!("no peer address: {e}")))?;
        Ok(ClientAddr(client_ip(
            peer.ip(),
            &parts.headers,
            &state.config.trusted_proxies,
            state.config.forwarded_header,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const XFF: ForwardedHeader = ForwardedHeader::XForwardedFor;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn networks_parse_and_contain() {
        let net: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains(ip("10.1.200.3")) && !net.contains(ip("10.2.0.1")));
        assert!(net.contains(ip("::ffff:10.1.0.9")), "v4-mapped");
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:1::5")) && !v6.contains(ip("2001:db9::1")));
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("8.8.8.8")));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("proxy.local".parse::<Cidr>().is_err());
    }

    #[test]
    fn only_trusted_peers_are_looked_through() {
        let trusted = nets(&["10.0.0.0/8"]);
        let forged = headers(&[("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(
            client_ip(ip("198.51.100.4"), &forged, &trusted, XFF),
            ip("198.51.100.4"),
            "an untrusted peer's header changes nothing"
        );
        assert_eq!(
            client_ip(ip("10.0.0.2"), &forged, &trusted, XFF),
            ip("203.0.113.9")
        );
        assert_eq!(client_ip(ip("10.0.0.2"), &forged, &[], XFF), ip("10.0.0.2"));
    }

    #[test]
    fn the_nearest_untrusted_hop_is_the_client() {
        let trusted = nets(&["10.0.0.0/8"]);
        // The device put a forged address first; the hospital's two proxies appended theirs.
        let chain = headers(&[("x-forwarded-for", "1.2.3.4, 198.51.100.20, 10.0.0.7")]);
        assert_eq!(
            client_ip(ip("10.0.0.2"), &chain, &trusted, XFF),
            ip("198.51.100.20")
        );
        let split = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "198.51.100.20"),
        ]);
        assert_eq!(
            client_ip(ip("10.0.0.2"), &split, &trusted, XFF),
            ip("198.51.100.20")
        );
        let unknown = headers(&[("x-forwarded-for", "198.51.100.20, unknown")]);
        assert_eq!(
            client_ip(ip("10.0.0.2"), &unknown, &trusted, XFF),
            ip("10.0.0.2"),
            "nothing left of an unusable hop is believed"
        );
        assert_eq!(
            client_ip(ip("10.0.0.2"), &HeaderMap::new(), &trusted, XFF),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn only_the_header_the_proxy_sets_is_read() {
        let trusted = nets(&["10.0.0.0/8"]);
        // The device sent a `Forwarded` of its own; the proxy set X-Forwarded-For.
        let forged_forwarded = headers(&[
            ("forwarded", "for=203.0.113.66"),
            ("x-forwarded-for", "198.51.100.20"),
        ]);
        assert_eq!(
            client_ip(ip("10.0.0.2"), &forged_forwarded, &trusted, XFF),
            ip("198.51.100.20")
        );
        // The proxy sets `Forwarded` (appending its element); the device forged X-Forwarded-For.
        let both = headers(&[
            (
                "forwarded",
                "for=203.0.113.66, for=192.0.2.60;proto=https, for=\"[2001:db8::17]:4711\";by=10.0.0.2",
            ),
            ("x-forwarded-for", "203.0.113.1"),
        ]);
        let forwarded = ForwardedHeader::Forwarded;
        assert_eq!(
            client_ip(ip("10.0.0.2"), &both, &trusted, forwarded),
            ip("2001:db8::17")
        );
        let port = headers(&[("forwarded", "for=192.0.2.60:8080")]);
        assert_eq!(
            client_ip(ip("10.0.0.2"), &port, &trusted, forwarded),
            ip("192.0.2.60")
        );
        let only_xff = headers(&[("x-forwarded-for", "203.0.113.1")]);
        assert_eq!(
            client_ip(ip("10.0.0.2"), &only_xff, &trusted, forwarded),
            ip("10.0.0.2"),
            "the header the proxy does not set is never read"
        );
        // A chain of proxies in `Forwarded`, read from the right.
        let chain = headers(&[
            ("forwarded", "for=1.2.3.4"),
            ("forwarded", "for=198.51.100.20, for=10.0.0.7"),
        ]);
        assert_eq!(
            client_ip(ip("10.0.0.2"), &chain, &trusted, forwarded),
            ip("198.51.100.20")
        );
        let obfuscated = headers(&[("forwarded", "for=198.51.100.20, for=_hidden")]);
        assert_eq!(
            client_ip(ip("10.0.0.2"), &obfuscated, &trusted, forwarded),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn the_setting_reads_as_written() {
        use clap::ValueEnum;
        assert_eq!(
            ForwardedHeader::from_str("x-forwarded-for", false),
            Ok(ForwardedHeader::XForwardedFor)
        );
        assert_eq!(
            ForwardedHeader::from_str("forwarded", false),
            Ok(ForwardedHeader::Forwarded)
        );
        #[derive(Deserialize)]
        struct File {
            forwarded_header: ForwardedHeader,
        }
        let file: File = toml::from_str("forwarded_header = \"x-forwarded-for\"").unwrap();
        assert_eq!(file.forwarded_header, ForwardedHeader::XForwardedFor);
        assert_eq!(ForwardedHeader::default(), ForwardedHeader::XForwardedFor);
    }
}
