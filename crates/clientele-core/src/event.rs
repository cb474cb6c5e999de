//! The per-request event: one for every request that reaches the gateway, allowed or refused,
//! and one for every event accepted by `POST /v1/events`.

use serde::{Deserialize, Serialize};

/// Why the gateway answered as it did, when it was not simply the upstream's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Forwarded and answered by the upstream.
    Proxied,
    /// No key, or a malformed one.
    MissingKey,
    /// A key that matches no consumer.
    UnknownKey,
    RevokedKey,
    ExpiredKey,
    /// No API is routed at the request's path.
    NoRoute,
    /// Refused by a rate limit (the consumer's or a route's).
    RateLimited,
    /// Refused because a daily or monthly quota is used up.
    QuotaExceeded,
    /// Refused because the shared limiter (Redis) could not be asked and the policy is
    /// fail-closed (503).
    LimiterUnavailable,
    /// The request body was larger than allowed.
    BodyTooLarge,
    /// The request itself was malformed (a bad path, a broken chunked body, a missing or
    /// repeated Host): the client's error, answered 400 or similar by the gateway.
    BadRequest,
    /// The upstream could not be reached (502).
    UpstreamUnreachable,
    /// The upstream did not answer in time (504).
    UpstreamTimeout,
    /// The upstream's body failed part-way.
    UpstreamAborted,
    /// The client went away before the response completed.
    ClientAborted,
    /// Sent through the ingest API rather than seen by the gateway.
    Ingested,
    /// Refused (403) because the consumer broke a rule of its plan's policy whose action is
    /// `block`.
    PolicyBlocked,
    /// Refused (429) because a budget of AI traffic (US dollars or tokens per day or month)
    /// is spent.
    BudgetExceeded,
    /// Refused (429) because the session already made the identical call
    /// `[agents] max_identical_calls` times.
    LoopRefused,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Proxied => "proxied",
            Outcome::MissingKey => "missing_key",
            Outcome::UnknownKey => "unknown_key",
            Outcome::RevokedKey => "revoked_key",
            Outcome::ExpiredKey => "expired_key",
            Outcome::NoRoute => "no_route",
            Outcome::RateLimited => "rate_limited",
            Outcome::QuotaExceeded => "quota_exceeded",
            Outcome::LimiterUnavailable => "limiter_unavailable",
            Outcome::BodyTooLarge => "body_too_large",
            Outcome::BadRequest => "bad_request",
            Outcome::UpstreamUnreachable => "upstream_unreachable",
            Outcome::UpstreamTimeout => "upstream_timeout",
            Outcome::UpstreamAborted => "upstream_aborted",
            Outcome::ClientAborted => "client_aborted",
            Outcome::Ingested => "ingested",
            Outcome::PolicyBlocked => "policy_blocked",
            Outcome::BudgetExceeded => "budget_exceeded",
            Outcome::LoopRefused => "loop_refused",
        }
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        Some(match s {
            "proxied" => Outcome::Proxied,
            "missing_key" => Outcome::MissingKey,
            "unknown_key" => Outcome::UnknownKey,
            "revoked_key" => Outcome::RevokedKey,
            "expired_key" => Outcome::ExpiredKey,
            "no_route" => Outcome::NoRoute,
            "rate_limited" => Outcome::RateLimited,
            "quota_exceeded" => Outcome::QuotaExceeded,
            "limiter_unavailable" => Outcome::LimiterUnavailable,
            "body_too_large" => Outcome::BodyTooLarge,
            "bad_request" => Outcome::BadRequest,
            "upstream_unreachable" => Outcome::UpstreamUnreachable,
            "upstream_timeout" => Outcome::UpstreamTimeout,
            "upstream_aborted" => Outcome::UpstreamAborted,
            "client_aborted" => Outcome::ClientAborted,
            "ingested" => Outcome::Ingested,
            "policy_blocked" => Outcome::PolicyBlocked,
            "budget_exceeded" => Outcome::BudgetExceeded,
            "loop_refused" => Outcome::LoopRefused,
            _ => return None,
        })
    }
}

/// One request, as seen at the gateway (or reported by a sidecar).
///
/// `latency_ms` is the whole exchange as the client saw it (to the last response byte);
/// `upstream_latency_ms` is the time to the upstream's response headers. Their difference is
/// the gateway's own overhead plus body transfer, which is what an operator needs to see
/// when asking "is it us or the backend?".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique id; duplicates of an id are ignored by the store.
    pub id: String,
    /// Request start, epoch milliseconds.
    pub ts_ms: i64,
    /// Consumer id; `None` when the request could not be attributed (no or unknown key).
    pub consumer: Option<String>,
    pub key_id: Option<String>,
    pub api: Option<String>,
    pub method: String,
    pub path: String,
    /// Route template, such as `/pets/{id}`.
    pub route: String,
    pub status: u16,
    pub latency_ms: f64,
    pub upstream_latency_ms: Option<f64>,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub session_id: Option<String>,
    /// The end user behind the call, as the client names it (the gateway's
    /// `end_user_header`, `X-End-User-Id` by default, or the ingest field `end_user`): what
    /// tells one application from a reseller serving many.
    #[serde(default)]
    pub end_user: Option<String>,
    /// W3C trace id (32 lowercase hex), propagated from `traceparent` or created.
    pub trace_id: Option<String>,
    pub outcome: Outcome,
    pub plan: Option<String>,
    pub team: Option<String>,
    pub use_case: Option<String>,
    pub model: Option<String>,
    pub tokens_in: Option<u64>,
    pub tokens_out: Option<u64>,
    pub cost_usd: Option<f64>,
    /// WebSocket connections: the close code of the first Close frame either side sent (1000
    /// normal, 1001 going away, ...); `None` when the connection ended without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close_code: Option<u16>,
    /// A fingerprint of the call made through the gateway: CRC-32 of the method, path and
    /// query in the high 32 bits, of the first 64 KiB of the request body in the low 32.
    /// Identical calls share it; what tells an agent's loop from a refining query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_hash: Option<u64>,
    /// For LLM traffic, the parts of the usage that are priced apart: input tokens read from
    /// the provider's prompt cache (a subset of `tokens_in`), input tokens written to it, and
    /// reasoning tokens (a subset of `tokens_out`). `None` when the provider did not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_cached: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_cache_write: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_reasoning: Option<u64>,
    /// A fingerprint of the client's TLS ClientHello, where the gateway terminated TLS: what
    /// tells one client program from another behind the same key, whatever its user agent says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_fp: Option<String>,
}

/// The call fingerprint of `Event::call_hash`: the CRC-32 of the call's method, path and
/// query (see [`head_print`]) above the CRC-32 of its body's first bytes.
pub fn call_hash(head: u32, body: u32) -> u64 {
    (u64::from(head) << 32) | u64::from(body)
}

/// The CRC-32 of a call's method, path and query: the high half of its fingerprint.
pub fn head_print(method: &str, path: &str, query: Option<&str>) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(method.as_bytes());
    h.update(b" ");
    h.update(path.as_bytes());
    if let Some(q) = query {
        h.update(b"?");
        h.update(q.as_bytes());
    }
    h.finalize()
}

/// A fresh random 128-bit id in lowercase hex, for events and trace ids.
///
/// Not for secrets: it comes from a per-thread generator seeded once from the OS, because a
/// system call per request for ids measurably slowed the gateway. Keys and tokens use
/// [`crate::keys::fill_random`].
pub fn random_id128() -> String {
    let a = fast_random_u64();
    let b = fast_random_u64();
    let mut buf = [0u8; 16];
    buf[..8].copy_from_slice(&a.to_le_bytes());
    buf[8..].copy_from_slice(&b.to_le_bytes());
    hex::encode(buf)
}

/// A new event id: 48 bits of milliseconds, then 80 random bits, in hex (UUIDv7's layout).
/// Ids that grow with time append at the end of the store's id index instead of landing on a
/// random page each: measured on the gateway benchmark, random ids made SQLite write about
/// one page per event.
pub fn event_id(ts_ms: i64) -> String {
    let ms = (ts_ms.max(0) as u64) & 0xFFFF_FFFF_FFFF;
    let r = fast_random_u64();
    let r2 = fast_random_u64() & 0xFFFF;
    format!("{ms:012x}{r:016x}{r2:04x}")
}

/// The gateway's span id for the request an event records: 16 lowercase hex digits.
///
/// It is derived from the event id rather than stored beside it, so the span exported over OTLP
/// and the parent span the gateway sent upstream in `traceparent` are the same span without a
/// field more in every event. Gateway event ids ([`event_id`]) carry 80 random bits after the
/// timestamp; their first 64 are used as they are. Other ids (ingested events) are hashed.
/// Never all zeros, which W3C Trace Context forbids.
pub fn span_id_of(event_id: &str) -> String {
    let b = event_id.as_bytes();
    let gateway_id = b.len() == 32
        && b.iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c));
    if gateway_id && event_id[12..28].bytes().any(|c| c != b'0') {
        return event_id[12..28].to_string();
    }
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(b);
    let mut span = [0u8; 8];
    span.copy_from_slice(&digest[..8]);
    if span == [0; 8] {
        span[7] = 1;
    }
    hex::encode(span)
}

/// wyrand, per thread, seeded from the OS on first use. Fast and well distributed; not
/// cryptographic.
pub fn fast_random_u64() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut seed = [0u8; 8];
            crate::keys::fill_random(&mut seed);
            u64::from_le_bytes(seed)
        });
    }
    STATE.with(|s| {
        let next = s.get().wrapping_add(0xa076_1d64_78bd_642f);
        s.set(next);
        let t = u128::from(next) * u128::from(next ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    })
}

/// A stable id derived from an event's content, for events sent without one: sending the same
/// event twice (a retried batch, a re-run import) stores it once.
pub fn content_id(content: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(content);
    format!("ev_{}", hex::encode(&digest[..16]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_ids_are_16_hex_nonzero_and_stable() {
        let id = event_id(1_700_000_000_000);
        let span = span_id_of(&id);
        assert_eq!(span, &id[12..28]);
        assert_eq!(span_id_of(&id), span);
        let other = span_id_of("ev_0123");
        assert_eq!(other.len(), 16);
        assert_ne!(other, "0000000000000000");
        assert_eq!(span_id_of("ev_0123"), other);
        assert_ne!(span_id_of("ev_0124"), other);
    }
}
