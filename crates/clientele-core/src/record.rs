//! The compact binary form of an [`Event`], and the checksummed frame it travels in.
//!
//! One encoding serves the event log on disk and the hand-off ring between the gateway and the
//! writer, so an event is encoded once per hop and read back bit-exact. A frame is
//! `[payload length: u32 LE][CRC-32 of the payload: u32 LE][payload]`; a reader that finds a
//! length out of bounds or a checksum that does not match stops there and says where, rather
//! than guess at what follows.
//!
//! Payload: a version byte, a bitmask of the optional fields present, then the fields in their
//! declared order: strings as a varint length and UTF-8 bytes, integers as varints (`ts_ms`
//! zig-zag), floats as 8 bytes LE, the outcome as one byte. The id, time, status and consumer
//! come first, so that an index or a filter reads them ([`decode_head`]) without allocating or
//! decoding the rest.

use crate::event::{Event, Outcome};

/// Bytes before a frame's payload: length and checksum.
pub const FRAME_HEADER: usize = 8;
/// Largest payload accepted when reading; an event is a few hundred bytes, so a larger length
/// means the bytes are not a frame.
pub const MAX_PAYLOAD: usize = 1 << 20;

const VERSION: u8 = 1;

/// Why bytes could not be read back as an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("truncated record")]
    Truncated,
    #[error("record length {0} is out of bounds")]
    BadLength(u32),
    #[error("checksum mismatch")]
    Checksum,
    #[error("unknown record version {0}")]
    Version(u8),
    #[error("malformed record: {0}")]
    Malformed(&'static str),
}

/// Outcomes by their one-byte code. Append only: the position is the stored code.
const OUTCOMES: [Outcome; 19] = [
    Outcome::Proxied,
    Outcome::MissingKey,
    Outcome::UnknownKey,
    Outcome::RevokedKey,
    Outcome::ExpiredKey,
    Outcome::NoRoute,
    Outcome::RateLimited,
    Outcome::QuotaExceeded,
    Outcome::LimiterUnavailable,
    Outcome::BodyTooLarge,
    Outcome::UpstreamUnreachable,
    Outcome::UpstreamTimeout,
    Outcome::UpstreamAborted,
    Outcome::ClientAborted,
    Outcome::Ingested,
    Outcome::BadRequest,
    Outcome::PolicyBlocked,
    Outcome::BudgetExceeded,
    Outcome::LoopRefused,
];

/// The stored code of `o`. An exhaustive match, so a new `Outcome` does not compile until it has
/// a code (a search of `OUTCOMES` with a fallback once stored new outcomes as `proxied`).
fn outcome_code(o: Outcome) -> u8 {
    match o {
        Outcome::Proxied => 0,
        Outcome::MissingKey => 1,
        Outcome::UnknownKey => 2,
        Outcome::RevokedKey => 3,
        Outcome::ExpiredKey => 4,
        Outcome::NoRoute => 5,
        Outcome::RateLimited => 6,
        Outcome::QuotaExceeded => 7,
        Outcome::LimiterUnavailable => 8,
        Outcome::BodyTooLarge => 9,
        Outcome::UpstreamUnreachable => 10,
        Outcome::UpstreamTimeout => 11,
        Outcome::UpstreamAborted => 12,
        Outcome::ClientAborted => 13,
        Outcome::Ingested => 14,
        Outcome::BadRequest => 15,
        Outcome::PolicyBlocked => 16,
        Outcome::BudgetExceeded => 17,
        Outcome::LoopRefused => 18,
    }
}

/// Appends one frame holding `event` to `out`.
pub fn encode_frame(event: &Event, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER]);
    encode(event, out);
    let payload = &out[start + FRAME_HEADER..];
    let len = payload.len() as u32;
    let crc = crc32fast::hash(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Reads the frame at the start of `bytes`: its payload and the frame's whole length.
/// `Truncated` when `bytes` ends inside the frame.
pub fn read_frame(bytes: &[u8]) -> Result<(&[u8], usize), RecordError> {
    let header = bytes.get(..FRAME_HEADER).ok_or(RecordError::Truncated)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len == 0 || len as usize > MAX_PAYLOAD {
        return Err(RecordError::BadLength(len));
    }
    let end = FRAME_HEADER + len as usize;
    let payload = bytes.get(FRAME_HEADER..end).ok_or(RecordError::Truncated)?;
    if crc32fast::hash(payload) != crc {
        return Err(RecordError::Checksum);
    }
    Ok((payload, end))
}

// Bits of the optional fields, in declaration order.
const CONSUMER: u32 = 1;
const KEY_ID: u32 = 1 << 1;
const API: u32 = 1 << 2;
const UPSTREAM_LATENCY: u32 = 1 << 3;
const CLIENT_IP: u32 = 1 << 4;
const USER_AGENT: u32 = 1 << 5;
const SESSION_ID: u32 = 1 << 6;
const TRACE_ID: u32 = 1 << 7;
const PLAN: u32 = 1 << 8;
const TEAM: u32 = 1 << 9;
const USE_CASE: u32 = 1 << 10;
const MODEL: u32 = 1 << 11;
const TOKENS_IN: u32 = 1 << 12;
const TOKENS_OUT: u32 = 1 << 13;
const COST: u32 = 1 << 14;
/// Added after the first records were written: it goes last, so older payloads (without the
/// bit) read as they always did.
const END_USER: u32 = 1 << 15;
/// Added after END_USER, the same way.
const CLOSE_CODE: u32 = 1 << 16;
/// Added after CLOSE_CODE, the same way (8 bytes, little-endian).
const CALL_HASH: u32 = 1 << 17;
/// Added after CALL_HASH, the same way: the usage parts priced apart (varints) and the TLS
/// fingerprint.
const TOKENS_CACHED: u32 = 1 << 18;
const TOKENS_CACHE_WRITE: u32 = 1 << 19;
const TOKENS_REASONING: u32 = 1 << 20;
const TLS_FP: u32 = 1 << 21;

fn present(e: &Event) -> u32 {
    let flags = [
        (e.consumer.is_some(), CONSUMER),
        (e.key_id.is_some(), KEY_ID),
        (e.api.is_some(), API),
        (e.upstream_latency_ms.is_some(), UPSTREAM_LATENCY),
        (e.client_ip.is_some(), CLIENT_IP),
        (e.user_agent.is_some(), USER_AGENT),
        (e.session_id.is_some(), SESSION_ID),
        (e.trace_id.is_some(), TRACE_ID),
        (e.plan.is_some(), PLAN),
        (e.team.is_some(), TEAM),
        (e.use_case.is_some(), USE_CASE),
        (e.model.is_some(), MODEL),
        (e.tokens_in.is_some(), TOKENS_IN),
        (e.tokens_out.is_some(), TOKENS_OUT),
        (e.cost_usd.is_some(), COST),
        (e.end_user.is_some(), END_USER),
        (e.close_code.is_some(), CLOSE_CODE),
        (e.call_hash.is_some(), CALL_HASH),
        (e.tokens_cached.is_some(), TOKENS_CACHED),
        (e.tokens_cache_write.is_some(), TOKENS_CACHE_WRITE),
        (e.tokens_reasoning.is_some(), TOKENS_REASONING),
        (e.tls_fp.is_some(), TLS_FP),
    ];
    flags.iter().filter(|(on, _)| *on).map(|(_, bit)| bit).sum()
}

/// Appends the payload encoding of `e` (no frame) to `out`.
pub fn encode(e: &Event, out: &mut Vec<u8>) {
    out.push(VERSION);
    put_varint(out, u64::from(present(e)));
    put_str(out, &e.id);
    put_varint(out, zigzag(e.ts_ms));
    put_varint(out, u64::from(e.status));
    let opt = |out: &mut Vec<u8>, s: &Option<String>| {
        if let Some(s) = s {
            put_str(out, s);
        }
    };
    opt(out, &e.consumer);
    opt(out, &e.key_id);
    opt(out, &e.api);
    put_str(out, &e.method);
    put_str(out, &e.path);
    put_str(out, &e.route);
    out.extend_from_slice(&e.latency_ms.to_le_bytes());
    if let Some(v) = e.upstream_latency_ms {
        out.extend_from_slice(&v.to_le_bytes());
    }
    put_varint(out, e.request_bytes);
    put_varint(out, e.response_bytes);
    opt(out, &e.client_ip);
    opt(out, &e.user_agent);
    opt(out, &e.session_id);
    opt(out, &e.trace_id);
    out.push(outcome_code(e.outcome));
    opt(out, &e.plan);
    opt(out, &e.team);
    opt(out, &e.use_case);
    opt(out, &e.model);
    for v in [e.tokens_in, e.tokens_out].into_iter().flatten() {
        put_varint(out, v);
    }
    if let Some(v) = e.cost_usd {
        out.extend_from_slice(&v.to_le_bytes());
    }
    opt(out, &e.end_user);
    if let Some(code) = e.close_code {
        put_varint(out, u64::from(code));
    }
    if let Some(h) = e.call_hash {
        out.extend_from_slice(&h.to_le_bytes());
    }
    for v in [e.tokens_cached, e.tokens_cache_write, e.tokens_reasoning]
        .into_iter()
        .flatten()
    {
        put_varint(out, v);
    }
    opt(out, &e.tls_fp);
}

/// Reads an event back from a payload written by [`encode`].
pub fn decode(payload: &[u8]) -> Result<Event, RecordError> {
    let mut r = Reader::new(payload)?;
    let head = r.head()?;
    let (id, ts_ms, status) = (head.id.to_string(), head.ts_ms, head.status);
    let consumer = head.consumer.map(str::to_string);
    let key_id = r.opt_string(KEY_ID)?;
    let api = r.opt_string(API)?;
    let method = r.string()?;
    let path = r.string()?;
    let route = r.string()?;
    let latency_ms = r.f64()?;
    let upstream_latency_ms = r.has(UPSTREAM_LATENCY).then(|| r.f64()).transpose()?;
    let request_bytes = r.varint()?;
    let response_bytes = r.varint()?;
    let client_ip = r.opt_string(CLIENT_IP)?;
    let user_agent = r.opt_string(USER_AGENT)?;
    let session_id = r.opt_string(SESSION_ID)?;
    let trace_id = r.opt_string(TRACE_ID)?;
    let outcome = *OUTCOMES
        .get(usize::from(r.byte()?))
        .ok_or(RecordError::Malformed("outcome"))?;
    let plan = r.opt_string(PLAN)?;
    let team = r.opt_string(TEAM)?;
    let use_case = r.opt_string(USE_CASE)?;
    let model = r.opt_string(MODEL)?;
    let tokens_in = r.has(TOKENS_IN).then(|| r.varint()).transpose()?;
    let tokens_out = r.has(TOKENS_OUT).then(|| r.varint()).transpose()?;
    let cost_usd = r.has(COST).then(|| r.f64()).transpose()?;
    let end_user = r.opt_string(END_USER)?;
    let close_code = r
        .has(CLOSE_CODE)
        .then(|| r.varint())
        .transpose()?
        .map(|c| u16::try_from(c).map_err(|_| RecordError::Malformed("close code")))
        .transpose()?;
    let call_hash = r.has(CALL_HASH).then(|| r.u64_le()).transpose()?;
    let tokens_cached = r.has(TOKENS_CACHED).then(|| r.varint()).transpose()?;
    let tokens_cache_write = r.has(TOKENS_CACHE_WRITE).then(|| r.varint()).transpose()?;
    let tokens_reasoning = r.has(TOKENS_REASONING).then(|| r.varint()).transpose()?;
    let tls_fp = r.opt_string(TLS_FP)?;
    if !r.rest.is_empty() {
        return Err(RecordError::Malformed("trailing bytes"));
    }
    Ok(Event {
        id,
        ts_ms,
        consumer,
        key_id,
        api,
        method,
        path,
        route,
        status,
        latency_ms,
        upstream_latency_ms,
        request_bytes,
        response_bytes,
        client_ip,
        user_agent,
        session_id,
        end_user,
        trace_id,
        outcome,
        plan,
        team,
        use_case,
        model,
        tokens_in,
        tokens_out,
        cost_usd,
        close_code,
        call_hash,
        tokens_cached,
        tokens_cache_write,
        tokens_reasoning,
        tls_fp,
    })
}

/// The fields an index or a filter needs, borrowed from the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head<'a> {
    pub id: &'a str,
    pub ts_ms: i64,
    pub status: u16,
    pub consumer: Option<&'a str>,
}

/// The id, time, status and consumer of a payload, without decoding (or allocating) the rest.
pub fn decode_head(payload: &[u8]) -> Result<Head<'_>, RecordError> {
    Reader::new(payload)?.head()
}

struct Reader<'a> {
    rest: &'a [u8],
    present: u32,
}

impl<'a> Reader<'a> {
    fn new(payload: &'a [u8]) -> Result<Self, RecordError> {
        let (&version, rest) = payload.split_first().ok_or(RecordError::Truncated)?;
        if version != VERSION {
            return Err(RecordError::Version(version));
        }
        let mut r = Reader { rest, present: 0 };
        r.present = u32::try_from(r.varint()?).map_err(|_| RecordError::Malformed("flags"))?;
        Ok(r)
    }

    fn head(&mut self) -> Result<Head<'a>, RecordError> {
        let id = self.str()?;
        let ts_ms = unzigzag(self.varint()?);
        let status = u16::try_from(self.varint()?).map_err(|_| RecordError::Malformed("status"))?;
        let consumer = self.has(CONSUMER).then(|| self.str()).transpose()?;
        Ok(Head {
            id,
            ts_ms,
            status,
            consumer,
        })
    }

    fn has(&self, bit: u32) -> bool {
        self.present & bit != 0
    }

    fn byte(&mut self) -> Result<u8, RecordError> {
        let (&b, rest) = self.rest.split_first().ok_or(RecordError::Truncated)?;
        self.rest = rest;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, RecordError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(RecordError::Malformed("varint"))
    }

    fn u64_le(&mut self) -> Result<u64, RecordError> {
        let (bytes, rest) = self
            .rest
            .split_at_checked(8)
            .ok_or(RecordError::Truncated)?;
        self.rest = rest;
        let mut b = [0u8; 8];
        b.copy_from_slice(bytes);
        Ok(u64::from_le_bytes(b))
    }

    fn f64(&mut self) -> Result<f64, RecordError> {
        // The same eight little-endian bytes, read as the float's bits.
        self.u64_le().map(f64::from_bits)
    }

    fn str(&mut self) -> Result<&'a str, RecordError> {
        let len = usize::try_from(self.varint()?).map_err(|_| RecordError::Truncated)?;
        let (bytes, rest) = self
            .rest
            .split_at_checked(len)
            .ok_or(RecordError::Truncated)?;
        self.rest = rest;
        std::str::from_utf8(bytes).map_err(|_| RecordError::Malformed("utf-8"))
    }

    fn string(&mut self) -> Result<String, RecordError> {
        self.str().map(str::to_string)
    }

    fn opt_string(&mut self, bit: u32) -> Result<Option<String>, RecordError> {
        self.has(bit).then(|| self.string()).transpose()
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_outcome_has_the_code_of_its_place() {
        for (i, o) in OUTCOMES.iter().enumerate() {
            assert_eq!(usize::from(outcome_code(*o)), i, "{o:?}");
        }
    }

    fn sample() -> Event {
        Event {
            id: "0193a1b2c3d4e5f60718293a4b5c6d7e".into(),
            ts_ms: -5,
            consumer: Some("acme".into()),
            key_id: None,
            api: Some("shop".into()),
            method: "GET".into(),
            path: "/pets/1".into(),
            route: "/pets/{id}".into(),
            status: 200,
            latency_ms: 12.5,
            upstream_latency_ms: Some(f64::MIN_POSITIVE),
            request_bytes: u64::MAX,
            response_bytes: 0,
            client_ip: None,
            user_agent: Some("ü".into()),
            session_id: None,
            end_user: Some("end user ✓".into()),
            trace_id: None,
            outcome: Outcome::Ingested,
            plan: None,
            team: None,
            use_case: None,
            model: Some("m".into()),
            tokens_in: Some(u64::MAX),
            tokens_out: None,
            cost_usd: Some(-0.0),
            close_code: Some(1001),
            call_hash: Some(u64::MAX - 7),
            tokens_cached: Some(0),
            tokens_cache_write: None,
            tokens_reasoning: Some(u64::MAX),
            tls_fp: Some("t13d1516h2_8daaf6152771_e5627efa2ab1".into()),
        }
    }

    #[test]
    fn a_record_written_before_the_usage_parts_reads_as_it_did() {
        // A payload from before TOKENS_CACHED..TLS_FP existed is the same bytes as one of an
        // event without them: the new fields come last and only behind their bits.
        let mut e = sample();
        (e.tokens_cached, e.tokens_reasoning, e.tls_fp) = (None, None, None);
        let mut p = Vec::new();
        encode(&e, &mut p);
        assert_eq!(decode(&p).unwrap(), e);
        assert_eq!(present(&e) >> 18, 0);
    }

    #[test]
    fn an_event_reads_back_bit_exact() {
        let e = sample();
        let mut buf = Vec::new();
        encode_frame(&e, &mut buf);
        let (payload, len) = read_frame(&buf).unwrap();
        assert_eq!(len, buf.len());
        let back = decode(payload).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.cost_usd.unwrap().to_bits(), (-0.0f64).to_bits());
        let head = decode_head(payload).unwrap();
        assert_eq!((head.id, head.ts_ms, head.status), (e.id.as_str(), -5, 200));
        assert_eq!(head.consumer, Some("acme"));
        for o in OUTCOMES {
            let mut e = sample();
            e.outcome = o;
            let mut p = Vec::new();
            encode(&e, &mut p);
            assert_eq!(decode(&p).unwrap().outcome, o);
        }
    }

    #[test]
    fn a_damaged_frame_is_refused_never_misread() {
        let mut buf = Vec::new();
        encode_frame(&sample(), &mut buf);
        for i in FRAME_HEADER..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x10;
            assert_eq!(read_frame(&bad), Err(RecordError::Checksum), "byte {i}");
        }
        assert_eq!(
            read_frame(&buf[..buf.len() - 1]),
            Err(RecordError::Truncated)
        );
        assert_eq!(read_frame(&[0; 8]), Err(RecordError::BadLength(0)));
        // Payloads cut anywhere are refused, not read as another event.
        let mut p = Vec::new();
        encode(&sample(), &mut p);
        for cut in 0..p.len() {
            assert!(decode(&p[..cut]).is_err(), "cut at {cut}");
        }
    }
}
