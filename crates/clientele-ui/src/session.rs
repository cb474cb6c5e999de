//! Server-side sessions for the dashboard and the portal.
//!
//! A cookie carries only a random session id (256 bits of entropy); what it stands for stays
//! here, in memory. The dashboard and the portal keep separate tables under separate cookie
//! names, so an admin session id means nothing to the portal and the reverse. A portal session
//! remembers the consumer and the id of the key that signed in, never the key itself.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::HeaderMap;
use axum::http::header;
use clientele_core::keys::random_base62;

/// How long a session lasts after sign-in, whatever happens meanwhile.
pub const SESSION_TTL_MS: i64 = 12 * 3_600_000;
/// Base62 characters in a session id or CSRF token: 43 × log2(62) ≈ 256 bits.
const ID_LEN: usize = 43;
/// Sessions kept per table. Only a valid credential creates one, so this bounds memory against
/// a script that signs in in a loop; the oldest session is dropped first.
const MAX_SESSIONS: usize = 10_000;

pub const ADMIN_COOKIE: &str = "clientele_admin";
pub const PORTAL_COOKIE: &str = "clientele_portal";
/// The pre-session token of a sign-in form (double-submit: cookie and hidden field must match).
pub const ADMIN_LOGIN_COOKIE: &str = "clientele_admin_login";
pub const PORTAL_LOGIN_COOKIE: &str = "clientele_portal_login";

#[derive(Debug, Clone)]
pub struct Session {
    /// Sent in every form of the session's pages and checked on every POST.
    pub csrf: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    /// Portal sessions: the consumer and the key it signed in with. `None` for admin sessions.
    pub consumer: Option<String>,
    pub key_id: Option<String>,
}

/// One table of sessions (the dashboard's, or the portal's).
#[derive(Debug, Default)]
pub struct SessionTable {
    map: Mutex<HashMap<String, Session>>,
}

impl SessionTable {
    /// Starts a session and returns its id.
    pub fn create(
        &self,
        now_ms: i64,
        consumer: Option<String>,
        key_id: Option<String>,
    ) -> (String, Session) {
        let id = random_base62(ID_LEN);
        let session = Session {
            csrf: random_base62(ID_LEN),
            created_ms: now_ms,
            expires_ms: now_ms + SESSION_TTL_MS,
            consumer,
            key_id,
        };
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| s.expires_ms > now_ms);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.created_ms)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(id.clone(), session.clone());
        (id, session)
    }

    /// The live session with this id, if any; an expired one is removed.
    pub fn get(&self, id: &str, now_ms: i64) -> Option<Session> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(id) {
            Some(s) if s.expires_ms > now_ms => Some(s.clone()),
            Some(_) => {
                map.remove(id);
                None
            }
            None => None,
        }
    }

    pub fn remove(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The value of cookie `name` in the request, if sent.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// A `Set-Cookie` value. `max_age_s` of 0 deletes the cookie.
pub fn set_cookie(name: &str, value: &str, path: &str, max_age_s: i64, secure: bool) -> String {
    let mut c =
        format!("{name}={value}; Path={path}; Max-Age={max_age_s}; HttpOnly; SameSite=Strict");
    if secure {
        c.push_str("; Secure");
    }
    c
}

/// The token for a sign-in form: the one this browser already holds in `cookie_name` (so two
/// open sign-in tabs do not invalidate each other), else a fresh random one.
pub fn login_token(headers: &HeaderMap, cookie_name: &str) -> String {
    cookie(headers, cookie_name)
        .filter(|t| t.len() == ID_LEN && t.bytes().all(|b| b.is_ascii_alphanumeric()))
        .map_or_else(|| random_base62(ID_LEN), str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn sessions_expire_and_are_removed() {
        let t = SessionTable::default();
        let (id, s) = t.create(1_000, Some("acme".into()), Some("key_1".into()));
        assert_eq!(id.len(), ID_LEN);
        assert_ne!(s.csrf, id);
        assert_eq!(
            t.get(&id, 2_000).and_then(|s| s.consumer),
            Some("acme".into())
        );
        assert!(t.get(&id, 1_000 + SESSION_TTL_MS).is_none());
        assert!(t.is_empty(), "an expired session is dropped when seen");
        let (id2, _) = t.create(5_000, None, None);
        t.remove(&id2);
        assert!(t.get(&id2, 5_001).is_none());
        assert!(t.get("made-up", 5_001).is_none());
    }

    #[test]
    fn ids_are_unique_and_random() {
        let t = SessionTable::default();
        let ids: std::collections::HashSet<String> =
            (0..200).map(|_| t.create(0, None, None).0).collect();
        assert_eq!(ids.len(), 200);
    }

    #[test]
    fn a_sign_in_token_is_reused_only_when_well_formed() {
        let held = "A".repeat(ID_LEN);
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("{ADMIN_LOGIN_COOKIE}={held}")).unwrap(),
        );
        assert_eq!(login_token(&h, ADMIN_LOGIN_COOKIE), held);
        let fresh = login_token(&h, PORTAL_LOGIN_COOKIE);
        assert_eq!(fresh.len(), ID_LEN);
        assert_ne!(fresh, held);
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("clientele_admin_login=short"),
        );
        assert_ne!(login_token(&h, ADMIN_LOGIN_COOKIE), "short");
    }

    #[test]
    fn reads_cookies_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; clientele_admin=xyz"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie(&h, ADMIN_COOKIE), Some("xyz"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, PORTAL_COOKIE), None);
        assert_eq!(
            set_cookie(ADMIN_COOKIE, "v", "/", 60, true),
            "clientele_admin=v; Path=/; Max-Age=60; HttpOnly; SameSite=Strict; Secure"
        );
    }
}

/// Failed sign-ins allowed per client address per minute. Admin tokens may be short (they are
/// chosen by people), so guessing is slowed down; a legitimate user never gets near this.
pub const MAX_FAILURES_PER_MINUTE: u32 = 10;
const THROTTLE_WINDOW_MS: i64 = 60_000;
/// Addresses remembered at most; the map is cleared of stale windows before it grows past it.
const MAX_THROTTLED: usize = 10_000;

/// Counts failed sign-ins per client address in fixed one-minute windows.
#[derive(Debug, Default)]
pub struct Throttle {
    map: Mutex<HashMap<std::net::IpAddr, (i64, u32)>>,
}

impl Throttle {
    /// Whether `ip` may try to sign in now.
    pub fn allows(&self, ip: std::net::IpAddr, now_ms: i64) -> bool {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(&ip) {
            Some((start, n)) if now_ms - start < THROTTLE_WINDOW_MS => *n < MAX_FAILURES_PER_MINUTE,
            _ => true,
        }
    }

    pub fn failed(&self, ip: std::net::IpAddr, now_ms: i64) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_THROTTLED {
            map.retain(|_, (start, _)| now_ms - *start < THROTTLE_WINDOW_MS);
        }
        if map.len() >= MAX_THROTTLED && !map.contains_key(&ip) {
            // Still full of live windows: forget the oldest rather than grow.
            if let Some(oldest) = map.iter().min_by_key(|(_, (s, _))| *s).map(|(k, _)| *k) {
                map.remove(&oldest);
            }
        }
        let entry = map.entry(ip).or_insert((now_ms, 0));
        if now_ms - entry.0 >= THROTTLE_WINDOW_MS {
            *entry = (now_ms, 0);
        }
        entry.1 += 1;
    }
}

#[cfg(test)]
mod throttle_tests {
    use super::*;

    #[test]
    fn failures_are_limited_per_address_and_minute() {
        let t = Throttle::default();
        let a: std::net::IpAddr = [127, 0, 0, 1].into();
        let b: std::net::IpAddr = [127, 0, 0, 2].into();
        for i in 0..MAX_FAILURES_PER_MINUTE {
            assert!(t.allows(a, 1_000), "attempt {i}");
            t.failed(a, 1_000);
        }
        assert!(!t.allows(a, 30_000));
        assert!(t.allows(b, 30_000), "other addresses are unaffected");
        assert!(t.allows(a, 61_000), "a new minute, new attempts");
    }
}

/// The body of a sign-out form: its CSRF token.
#[derive(Debug, serde::Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

/// Where one area's sessions live and how its cookie is named, so the dashboard and the
/// portal sign out through one code path.
pub struct SessionArea<'a> {
    pub table: &'a SessionTable,
    pub cookie: &'static str,
    pub cookie_path: &'static str,
    pub login: &'static str,
}

/// Ends the session named by the area's cookie: only with the session's CSRF token and from
/// the same site. Without a live session there is nothing to end: back to sign-in.
pub fn sign_out(
    area: SessionArea<'_>,
    headers: &HeaderMap,
    form: &CsrfForm,
) -> Result<axum::response::Response, crate::UiError> {
    let live = cookie(headers, area.cookie).and_then(|id| {
        area.table
            .get(id, clientele_core::time::now_ms())
            .map(|s| (id, s))
    });
    let Some((id, s)) = live else {
        return Ok(crate::redirect(area.login, &[]));
    };
    if !crate::same_origin(headers) || !clientele_core::keys::secret_eq(&form.csrf, &s.csrf) {
        return Err(crate::UiError::forbidden(
            "this form is missing its security token or came from another site; reload the page and try again",
        ));
    }
    area.table.remove(id);
    Ok(crate::redirect(
        &format!("{}?signed_out=1", area.login),
        &[set_cookie(
            area.cookie,
            "",
            area.cookie_path,
            0,
            crate::is_https(headers),
        )],
    ))
}
