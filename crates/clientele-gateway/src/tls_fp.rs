//! The TLS client fingerprint of a connection (`Event::tls_fp`): a JA4-style summary of the
//! ClientHello, computed once per connection when the gateway terminates TLS, and carried to
//! every event of the connection.
//!
//! The shape is JA4's (`t13d15h2_8daaf6152771_b1ff8ab2d16f`) with what rustls 0.23 exposes of
//! the ClientHello (`rustls::server::ClientHello`, read through `LazyConfigAcceptor`):
//!
//! - part a: `t` (TCP), the TLS version, `d` when the client sent a server name (SNI) or `i`,
//!   the number of cipher suites (two digits, at most 99), and the first and last characters
//!   of the first ALPN value (`00` without ALPN). JA4's extension count is left out: rustls
//!   does not expose the list of extensions;
//! - part b: exactly JA4's: the first 12 hex digits of SHA-256 over the sorted cipher suites
//!   (4 hex digits each, comma-separated);
//! - part c: the first 12 hex digits of SHA-256 over the supported groups, then `_`, then the
//!   signature schemes, each in the client's order. JA4 hashes the sorted extension list and
//!   the signature schemes instead; the groups stand in for the extensions, which rustls keeps
//!   to itself.
//!
//! The version is the one negotiated, not the client's `supported_versions` list (also not
//! exposed): the gateway accepts TLS 1.2 and 1.3, so the negotiated version is the highest the
//! client offers up to 1.3, which is what JA4 reports for every current client.
//!
//! Not included, because rustls 0.23 does not expose them: the extension list and its order,
//! `supported_versions`, key shares, EC point formats, compression methods, the legacy
//! version, session tickets and PSK modes. So two clients that differ only there (for example
//! two builds of one TLS library with the same preferences) have one fingerprint here; this
//! fingerprint tells HTTP client stacks apart, not every build.
//!
//! GREASE values (RFC 8701), which browsers randomise per connection, are skipped, so one
//! client keeps one fingerprint. The work is bounded whatever the client sends: at most
//! [`MAX_ITEMS`] entries of each list are looked at, and the result is 34 ASCII characters.

use rustls::ProtocolVersion;
use rustls::server::ClientHello;
use sha2::{Digest, Sha256};

/// Entries of each ClientHello list looked at (GREASE included); real clients send fewer than
/// 50 cipher suites, groups or signature schemes.
pub const MAX_ITEMS: usize = 128;

/// What the fingerprint needs from a ClientHello, read before the handshake goes on (the
/// ClientHello borrows the acceptor, which the handshake consumes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloSummary {
    sni: bool,
    /// Cipher suites, GREASE left out, capped at 99.
    ciphers: u8,
    alpn: [u8; 2],
    /// JA4's part b, 12 hex digits.
    suites_hash: [u8; 12],
    /// Groups and signature schemes, 12 hex digits.
    prefs_hash: [u8; 12],
}

/// RFC 8701: `0x?a?a` with both bytes equal.
fn is_grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a && v >> 8 == v & 0xff
}

/// The non-GREASE values of a list, at most [`MAX_ITEMS`] of it looked at.
fn values(list: impl Iterator<Item = u16>) -> impl Iterator<Item = u16> {
    list.take(MAX_ITEMS).filter(|v| !is_grease(*v))
}

/// `0a0b,1301,...` into the hash.
fn hash_hex_list(h: &mut Sha256, list: impl Iterator<Item = u16>) {
    let mut first = true;
    for v in list {
        if !first {
            h.update(b",");
        }
        first = false;
        h.update(hex4(v));
    }
}

fn hex4(v: u16) -> [u8; 4] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n = |shift: u16| HEX[usize::from((v >> shift) & 0xf)];
    [n(12), n(8), n(4), n(0)]
}

/// The first 12 hex digits of a digest; all zeros for an empty input, as JA4 writes them.
fn head12(h: Sha256, empty: bool) -> [u8; 12] {
    if empty {
        return [b'0'; 12];
    }
    let digest = h.finalize();
    let mut out = [b'0'; 12];
    for (i, b) in digest.iter().take(6).enumerate() {
        let [hi, lo] = {
            let x = hex4(u16::from(*b));
            [x[2], x[3]]
        };
        out[2 * i] = hi;
        out[2 * i + 1] = lo;
    }
    out
}

/// JA4's ALPN characters: the first and last of the first value when both are alphanumeric,
/// else the first and last hex digits of the value; `00` without one.
fn alpn_chars(first: Option<&[u8]>) -> [u8; 2] {
    let Some(v) = first.filter(|v| !v.is_empty()) else {
        return *b"00";
    };
    let (a, z) = (v[0], v[v.len() - 1]);
    if a.is_ascii_alphanumeric() && z.is_ascii_alphanumeric() {
        [a, z]
    } else {
        let ha = hex4(u16::from(a));
        let hz = hex4(u16::from(z));
        [ha[2], hz[3]]
    }
}

impl HelloSummary {
    /// Reads what the fingerprint needs. Bounded: a few hundred values hashed at most.
    pub fn read(hello: &ClientHello<'_>) -> HelloSummary {
        let suites = || values(hello.cipher_suites().iter().map(|s| u16::from(*s)));
        let count = suites().count();
        let mut sorted: Vec<u16> = suites().collect();
        sorted.sort_unstable();
        let mut h = Sha256::new();
        hash_hex_list(&mut h, sorted.iter().copied());
        let suites_hash = head12(h, sorted.is_empty());

        let groups = hello.named_groups().unwrap_or_default();
        let sigs = hello.signature_schemes();
        let mut h = Sha256::new();
        hash_hex_list(&mut h, values(groups.iter().map(|g| u16::from(*g))));
        h.update(b"_");
        hash_hex_list(&mut h, values(sigs.iter().map(|s| u16::from(*s))));
        let prefs_hash = head12(h, groups.is_empty() && sigs.is_empty());

        let first_alpn = hello.alpn().and_then(|mut protocols| protocols.next());
        HelloSummary {
            sni: hello.server_name().is_some(),
            ciphers: u8::try_from(count.min(99)).unwrap_or(99),
            alpn: alpn_chars(first_alpn),
            suites_hash,
            prefs_hash,
        }
    }

    /// The fingerprint, with the version the handshake negotiated.
    pub fn fingerprint(&self, version: Option<ProtocolVersion>) -> String {
        let version = match version {
            Some(ProtocolVersion::TLSv1_3) => "13",
            Some(ProtocolVersion::TLSv1_2) => "12",
            Some(ProtocolVersion::TLSv1_1) => "11",
            Some(ProtocolVersion::TLSv1_0) => "10",
            _ => "00",
        };
        let mut out = String::with_capacity(34);
        out.push('t');
        out.push_str(version);
        out.push(if self.sni { 'd' } else { 'i' });
        out.push(char::from(b'0' + self.ciphers / 10));
        out.push(char::from(b'0' + self.ciphers % 10));
        out.extend(self.alpn.iter().map(|&b| char::from(b)));
        out.push('_');
        out.extend(self.suites_hash.iter().map(|&b| char::from(b)));
        out.push('_');
        out.extend(self.prefs_hash.iter().map(|&b| char::from(b)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grease_is_recognised() {
        for v in [0x0a0a, 0x1a1a, 0x2a2a, 0xfafa] {
            assert!(is_grease(v), "{v:04x}");
        }
        for v in [0x1301, 0x0a1a, 0x001d, 0xc02b] {
            assert!(!is_grease(v), "{v:04x}");
        }
    }

    #[test]
    fn parts_follow_ja4() {
        // JA4's own example list: sorted, comma-separated, 4 hex digits each.
        let mut h = Sha256::new();
        hash_hex_list(&mut h, [0x002f, 0x0035, 0x009c].into_iter());
        let direct = Sha256::digest(b"002f,0035,009c");
        assert_eq!(
            std::str::from_utf8(&head12(h, false)).unwrap(),
            &hex::encode(direct)[..12]
        );
        assert_eq!(&head12(Sha256::new(), true), b"000000000000");
        assert_eq!(alpn_chars(Some(b"h2")), *b"h2");
        assert_eq!(alpn_chars(Some(b"http/1.1")), *b"h1");
        assert_eq!(alpn_chars(None), *b"00");
        assert_eq!(alpn_chars(Some(&[0xab, 0xcd])), *b"ad");
    }
}
