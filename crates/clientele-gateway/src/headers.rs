//! Header handling at the edge: where the key comes from, which headers never cross a proxy,
//! who the client really is, and W3C trace context.

use std::net::IpAddr;

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};
use ipnet::IpNet;

pub static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
/// Kong key-auth's default key name: read too, so clients migrated from Kong keep sending
/// their keys as they did.
pub static APIKEY: HeaderName = HeaderName::from_static("apikey");
pub static X_CONSUMER_ID: HeaderName = HeaderName::from_static("x-consumer-id");
pub static X_CONSUMER_PLAN: HeaderName = HeaderName::from_static("x-consumer-plan");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
pub static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
pub static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
pub static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// Where the presented key was found, so the proxy can remove exactly that credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    XApiKey,
    /// Kong's `apikey` header.
    ApiKey,
    Bearer,
}

/// What the client presented as a key.
#[derive(Debug, PartialEq, Eq)]
pub enum PresentedKey<'a> {
    Missing,
    /// Present but not a possible key (non-ASCII, spaces, too long).
    Malformed(KeySource),
    Key(&'a str, KeySource),
}

/// `X-API-Key` wins, then Kong's `apikey`; otherwise `Authorization: Bearer`. An `Authorization` of another scheme is
/// left alone: it may be meant for the upstream.
pub fn presented_key(headers: &HeaderMap) -> PresentedKey<'_> {
    if let Some(v) = headers.get(&X_API_KEY) {
        return match v.to_str() {
            Ok(s) if clientele_core::keys::key_syntax_ok(s.trim()) => {
                PresentedKey::Key(s.trim(), KeySource::XApiKey)
            }
            _ => PresentedKey::Malformed(KeySource::XApiKey),
        };
    }
    if let Some(v) = headers.get(&APIKEY) {
        return match v.to_str() {
            Ok(s) if clientele_core::keys::key_syntax_ok(s.trim()) => {
                PresentedKey::Key(s.trim(), KeySource::ApiKey)
            }
            _ => PresentedKey::Malformed(KeySource::ApiKey),
        };
    }
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let Ok(s) = v.to_str() else {
            return PresentedKey::Missing;
        };
        let mut parts = s.splitn(2, ' ');
        let scheme = parts.next().unwrap_or_default();
        if scheme.eq_ignore_ascii_case("bearer") {
            let token = parts.next().unwrap_or_default().trim();
            return if clientele_core::keys::key_syntax_ok(token) {
                PresentedKey::Key(token, KeySource::Bearer)
            } else {
                PresentedKey::Malformed(KeySource::Bearer)
            };
        }
    }
    PresentedKey::Missing
}

/// Removes the hop-by-hop headers (RFC 9110 §7.6.1), including any the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// The client's address: the peer, unless the peer is a trusted proxy, in which case the
/// right-most `X-Forwarded-For` entry that is not itself a trusted proxy.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if trusted.is_empty() || !is_trusted(&peer) {
        return peer;
    }
    let mut hops: Vec<IpAddr> = Vec::new();
    for value in headers.get_all(&X_FORWARDED_FOR) {
        let Ok(s) = value.to_str() else {
            return peer;
        };
        for part in s.split(',') {
            match part.trim().parse::<IpAddr>() {
                Ok(ip) => hops.push(ip),
                // A malformed chain cannot be trusted at all.
                Err(_) => return peer,
            }
        }
    }
    hops.into_iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .unwrap_or(peer)
}

/// A parsed `traceparent` (W3C Trace Context, version 00).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: String,
    pub flags: String,
}

/// Parses `traceparent`; `None` for anything invalid, in which case a new trace starts.
pub fn parse_traceparent(headers: &HeaderMap) -> Option<TraceContext> {
    let v = headers.get(&TRACEPARENT)?.to_str().ok()?;
    let mut parts = v.trim().split('-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let parent_id = parts.next()?;
    let flags = parts.next()?;
    let lower_hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !lower_hex(version, 2)
        || version == "ff"
        || !lower_hex(trace_id, 32)
        || !lower_hex(parent_id, 16)
        || !lower_hex(flags, 2)
    {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    if trace_id.bytes().all(|b| b == b'0') || parent_id.bytes().all(|b| b == b'0') {
        return None;
    }
    Some(TraceContext {
        trace_id: trace_id.to_string(),
        flags: flags.to_string(),
    })
}

/// The `traceparent` to send upstream: same trace, the gateway's own span as parent.
/// `span_id` is [`clientele_core::event::span_id_of`] the request's event id, so the span that
/// exporters emit for the event is the parent the upstream sees.
pub fn child_traceparent(ctx: &TraceContext, span_id: &str) -> Option<HeaderValue> {
    let value = format!("00-{}-{}-{}", ctx.trace_id, span_id, ctx.flags);
    HeaderValue::from_str(&value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn key_sources() {
        assert_eq!(presented_key(&headers(&[])), PresentedKey::Missing);
        assert_eq!(
            presented_key(&headers(&[("authorization", "Bearer ck_abc")])),
            PresentedKey::Key("ck_abc", KeySource::Bearer)
        );
        assert_eq!(
            presented_key(&headers(&[
                ("x-api-key", "ck_x"),
                ("authorization", "Bearer ck_y")
            ])),
            PresentedKey::Key("ck_x", KeySource::XApiKey)
        );
        assert_eq!(
            presented_key(&headers(&[
                ("apikey", "kong_key"),
                ("authorization", "Bearer upstream-token")
            ])),
            PresentedKey::Key("kong_key", KeySource::ApiKey)
        );
        assert_eq!(
            presented_key(&headers(&[("authorization", "Basic dXNlcg==")])),
            PresentedKey::Missing
        );
        assert_eq!(
            presented_key(&headers(&[("authorization", "Bearer a b")])),
            PresentedKey::Malformed(KeySource::Bearer)
        );
    }

    #[test]
    fn client_ip_trusts_only_configured_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let h = headers(&[("x-forwarded-for", "203.0.113.9, 10.0.0.2")]);
        assert_eq!(
            client_ip("10.0.0.1".parse().unwrap(), &h, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // An untrusted peer cannot choose its address.
        assert_eq!(
            client_ip("198.51.100.1".parse().unwrap(), &h, &trusted),
            "198.51.100.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip("10.0.0.1".parse().unwrap(), &h, &[]),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
        let bad = headers(&[("x-forwarded-for", "junk")]);
        assert_eq!(
            client_ip("10.0.0.1".parse().unwrap(), &bad, &trusted),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn traceparent_parsing() {
        let h = headers(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )]);
        let ctx = parse_traceparent(&h).unwrap();
        assert_eq!(ctx.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        let child = child_traceparent(&ctx, "1122334455667788").unwrap();
        let child = child.to_str().unwrap();
        assert_eq!(
            child,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-1122334455667788-01"
        );
        assert!(!child.contains("00f067aa0ba902b7"));
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-XYZ-1-01",
            "garbage",
        ] {
            assert_eq!(
                parse_traceparent(&headers(&[("traceparent", bad)])),
                None,
                "{bad}"
            );
        }
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = headers(&[
            ("connection", "close, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "5"),
            ("x-keep", "1"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }
}
