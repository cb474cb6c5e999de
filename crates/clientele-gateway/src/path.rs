//! The first phase of every request: refuse heads the gateway should not forward, and reduce
//! the path to the one normalised form that routing, limits, templates, spec matching and
//! forwarding all see.
//!
//! Without one normal form, `//search`, `/./search` and `/%73earch` are different strings to a
//! route limit on `/search` but the same resource to the upstream, so each spelling walks past
//! the limit; and `/pub/../../secret` escapes a `strip_prefix` API's base path upstream.

use std::borrow::Cow;

use http::{Method, StatusCode, Version, header};

/// Why a request was refused before anything else looked at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub status: StatusCode,
    pub slug: &'static str,
    pub title: &'static str,
    pub detail: String,
}

fn bad(slug: &'static str, title: &'static str, detail: impl Into<String>) -> Refused {
    Refused {
        status: StatusCode::BAD_REQUEST,
        slug,
        title,
        detail: detail.into(),
    }
}

/// A path after [`normalise`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalised<'a> {
    pub path: Cow<'a, str>,
    /// When the path had `..` segments: the path before they were resolved (decoded, duplicate
    /// slashes and `.` removed), so the caller can tell which API prefix the client addressed
    /// and refuse a path that climbed out of it.
    pub before_dot_dot: Option<String>,
}

/// What is wrong with a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Not origin-form (`*`, or not starting with `/`).
    NotAbsolute,
    /// `%2F`: an encoded slash means one thing to the gateway and another to many upstreams.
    EncodedSlash,
    /// `%00`.
    EncodedNul,
    /// `%` not followed by two hex digits.
    BadPercent,
    /// `..` above `/`.
    AboveRoot,
}

impl PathError {
    pub fn detail(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "the request target must be a path starting with '/'",
            PathError::EncodedSlash => {
                "the path contains an encoded slash (%2F); send '/' itself, or encode the value so it holds no slash"
            }
            PathError::EncodedNul => "the path contains an encoded NUL byte (%00)",
            PathError::BadPercent => {
                "the path has a '%' not followed by two hexadecimal digits; encode '%' itself as %25"
            }
            PathError::AboveRoot => "the path's '..' segments climb above '/'",
        }
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes percent-encoded unreserved characters (RFC 3986 §6.2.2.2) and upper-cases the hex
/// of the encodings that stay; refuses an encoded slash or NUL and broken encodings.
fn decode_unreserved(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            // Bytes other than '%' are copied whole characters at a time, so UTF-8 survives.
            let next = raw[i..].find('%').map_or(raw.len(), |n| i + n);
            out.push_str(&raw[i..next]);
            i = next;
            continue;
        }
        let (Some(h), Some(l)) = (
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(PathError::BadPercent);
        };
        let v = h * 16 + l;
        match v {
            b'/' => return Err(PathError::EncodedSlash),
            0 => return Err(PathError::EncodedNul),
            v if unreserved(v) => out.push(char::from(v)),
            v => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.push('%');
                out.push(char::from(HEX[usize::from(v >> 4)]));
                out.push(char::from(HEX[usize::from(v & 15)]));
            }
        }
        i += 3;
    }
    Ok(out)
}

/// The normal form of a request path: unreserved characters decoded, duplicate slashes merged,
/// and `.`/`..` segments removed (RFC 3986 §5.2.4). The common, already-normal path is returned
/// borrowed, without allocating.
pub fn normalise(raw: &str) -> Result<Normalised<'_>, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if !raw.contains('%') && !raw.contains("//") && !raw.contains("/.") {
        return Ok(Normalised {
            path: Cow::Borrowed(raw),
            before_dot_dot: None,
        });
    }
    let decoded = decode_unreserved(raw)?;
    let raw_segments: Vec<&str> = decoded[1..].split('/').collect();
    // A path ending in '/', '/.' or '/..' names a directory: it keeps its trailing slash.
    let trailing = matches!(raw_segments.last(), Some(&("" | "." | "..")));
    let mut out: Vec<&str> = Vec::with_capacity(raw_segments.len());
    let mut lexical: Vec<&str> = Vec::new();
    let mut dot_dot = false;
    for seg in raw_segments {
        match seg {
            "" | "." => {}
            ".." => {
                dot_dot = true;
                lexical.push(seg);
                if out.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            seg => {
                lexical.push(seg);
                out.push(seg);
            }
        }
    }
    let join = |segs: &[&str]| {
        let mut p = String::with_capacity(decoded.len());
        for s in segs {
            p.push('/');
            p.push_str(s);
        }
        if p.is_empty() || trailing {
            p.push('/');
        }
        p
    };
    Ok(Normalised {
        path: Cow::Owned(join(&out)),
        before_dot_dot: dot_dot.then(|| join(&lexical)),
    })
}

/// Phase 0 of the lifecycle: the checks on the request head that come before identifying the
/// caller. Returns the normalised path.
pub fn check_request(parts: &http::request::Parts) -> Result<Normalised<'_>, Refused> {
    if parts.method == Method::CONNECT {
        return Err(Refused {
            status: StatusCode::NOT_IMPLEMENTED,
            slug: "method-not-supported",
            title: "Method not supported",
            detail: "the gateway does not open CONNECT tunnels; send requests to API paths".into(),
        });
    }
    let hosts = parts.headers.get_all(header::HOST).iter().count();
    if hosts > 1 {
        return Err(bad(
            "bad-host",
            "Invalid Host header",
            format!("the request has {hosts} Host headers; send exactly one"),
        ));
    }
    // HTTP/1.1 requires Host (RFC 9112 §3.2); HTTP/2 carries :authority instead.
    if hosts == 0 && parts.version == Version::HTTP_11 {
        return Err(bad(
            "bad-host",
            "Missing Host header",
            "an HTTP/1.1 request must have a Host header",
        ));
    }
    normalise(parts.uri.path()).map_err(|e| bad("bad-path", "Invalid request path", e.detail()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn norm(raw: &str) -> Result<String, PathError> {
        normalise(raw).map(|n| n.path.into_owned())
    }

    #[test]
    fn every_spelling_of_a_path_becomes_one() {
        for raw in [
            "/search",
            "//search",
            "/./search",
            "/x/../search",
            "/%73earch",
            "/a/%2e%2e/search",
            "/a/%2E%2E/search",
            "///a/b/../../search",
        ] {
            assert_eq!(norm(raw).unwrap(), "/search", "{raw}");
        }
        assert_eq!(norm("/").unwrap(), "/");
        assert_eq!(norm("//").unwrap(), "/");
        assert_eq!(norm("/a/").unwrap(), "/a/");
        assert_eq!(norm("/a/b/..").unwrap(), "/a/");
        assert_eq!(norm("/a/.").unwrap(), "/a/");
        assert_eq!(norm("/a/%7euser").unwrap(), "/a/~user");
        assert_eq!(
            norm("/a%20b%3f").unwrap(),
            "/a%20b%3F",
            "reserved stays encoded"
        );
        assert_eq!(norm("/caf%C3%A9").unwrap(), "/caf%C3%A9");
        assert_eq!(norm("/.well-known/x").unwrap(), "/.well-known/x");
        assert_eq!(norm("/..a/b.").unwrap(), "/..a/b.");
    }

    #[test]
    fn dangerous_paths_are_refused() {
        assert_eq!(norm("/a%2Fb"), Err(PathError::EncodedSlash));
        assert_eq!(norm("/a%2fb"), Err(PathError::EncodedSlash));
        assert_eq!(norm("/a%00"), Err(PathError::EncodedNul));
        assert_eq!(norm("/a%zz"), Err(PathError::BadPercent));
        assert_eq!(norm("/a%4"), Err(PathError::BadPercent));
        assert_eq!(norm("/.."), Err(PathError::AboveRoot));
        assert_eq!(norm("/pub/../../secret"), Err(PathError::AboveRoot));
        assert_eq!(norm("*"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn the_path_before_dot_dot_names_the_addressed_prefix() {
        let n = normalise("/pub//../secret").unwrap();
        assert_eq!(n.path, "/secret");
        assert_eq!(n.before_dot_dot.as_deref(), Some("/pub/../secret"));
        assert_eq!(normalise("/a/./b").unwrap().before_dot_dot, None);
    }

    #[test]
    fn normal_paths_are_borrowed() {
        assert!(matches!(
            normalise("/v1/users/42").unwrap().path,
            Cow::Borrowed(_)
        ));
    }

    proptest::proptest! {
        /// Normalising is idempotent, never yields dot segments or empty segments, and never
        /// panics, whatever the input.
        #[test]
        fn normal_form_is_a_fixed_point(raw in "/[a-z./%2eEfF0-9~]{0,40}") {
            if let Ok(n) = normalise(&raw) {
                let once = n.path.into_owned();
                proptest::prop_assert_eq!(norm(&once).unwrap(), once.clone());
                proptest::prop_assert!(!once.contains("//"));
                proptest::prop_assert!(!once.split('/').any(|s| s == "." || s == ".."));
            }
        }
    }
}
