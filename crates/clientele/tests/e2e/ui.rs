//! The dashboard and the consumer portal over real HTTP: sign-in, cookies, CSRF, sign-out, and
//! portal isolation (a consumer's key or session never shows another consumer's data).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method};
use serde_json::{Value, json};

use crate::support::*;

/// A minimal browser: remembers cookies by name, sends them back, never follows redirects.
#[derive(Default, Clone)]
pub(crate) struct Browser {
    cookies: Vec<(String, String)>,
}

pub(crate) struct Answer {
    pub(crate) status: u16,
    headers: HeaderMap,
    pub(crate) body: String,
}

impl Answer {
    fn location(&self) -> &str {
        self.headers
            .get("location")
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }

    fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    fn set_cookie(&self, name: &str) -> Option<String> {
        self.set_cookies()
            .into_iter()
            .find(|c| c.starts_with(&format!("{name}=")))
    }

    /// The value of `<input name="csrf" value="...">` in the page.
    fn csrf(&self) -> String {
        let at = self
            .body
            .find(r#"name="csrf" value=""#)
            .expect("a csrf field")
            + 19;
        self.body[at..].split('"').next().unwrap().to_string()
    }
}

impl Browser {
    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn take_cookies(&mut self, a: &Answer) {
        for c in a.set_cookies() {
            let pair = c.split(';').next().unwrap();
            let (k, v) = pair.split_once('=').unwrap();
            self.cookies.retain(|(have, _)| have != k);
            if !v.is_empty() && !c.contains("Max-Age=0") {
                self.cookies.push((k.to_string(), v.to_string()));
            }
        }
    }

    fn cookie(&self, name: &str) -> Option<String> {
        self.cookies
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }

    async fn request(
        &mut self,
        server: &Server,
        method: Method,
        path: &str,
        form: Option<&str>,
        extra: &[(&str, &str)],
    ) -> Answer {
        let cookie = self.cookie_header();
        let host = server.admin.to_string();
        let mut headers: Vec<(&str, &str)> = vec![("host", host.as_str())];
        if !cookie.is_empty() {
            headers.push(("cookie", cookie.as_str()));
        }
        if form.is_some() {
            headers.push(("content-type", "application/x-www-form-urlencoded"));
        }
        headers.extend_from_slice(extra);
        let (status, headers, body) = send(
            method,
            &format!("http://{}{}", server.admin, path),
            &headers,
            form.map(|f| Bytes::from(f.to_string())),
        )
        .await
        .unwrap();
        let a = Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        };
        self.take_cookies(&a);
        a
    }

    pub(crate) async fn get(&mut self, server: &Server, path: &str) -> Answer {
        self.request(server, Method::GET, path, None, &[]).await
    }

    async fn post(&mut self, server: &Server, path: &str, form: &str) -> Answer {
        self.request(server, Method::POST, path, Some(form), &[])
            .await
    }
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Signs in to the dashboard as a browser would: fetch the form, post it with its token.
pub(crate) async fn admin_browser(server: &Server) -> Browser {
    let mut b = Browser::default();
    let form = b.get(server, "/login").await;
    let a = b
        .post(
            server,
            "/login",
            &format!("token={}&csrf={}&next=%2F", enc(ADMIN_TOKEN), form.csrf()),
        )
        .await;
    assert_eq!(a.status, 303, "{}", a.body);
    assert!(b.cookie("clientele_admin").is_some());
    b
}

async fn portal_browser(server: &Server, key: &str) -> (Browser, Answer) {
    let mut b = Browser::default();
    let form = b.get(server, "/portal/login").await;
    assert_eq!(form.status, 200);
    let a = b
        .post(
            server,
            "/portal/login",
            &format!("key={}&csrf={}", enc(key), form.csrf()),
        )
        .await;
    (b, a)
}

#[tokio::test]
async fn every_dashboard_page_needs_a_session() {
    let up = start_upstream().await;
    let server = Server::start(up.addr, "").await;
    for path in [
        "/",
        "/consumers",
        "/consumers/acme",
        "/routes",
        "/findings",
        "/?range=7d",
    ] {
        let mut anon = Browser::default();
        let a = anon.get(&server, path).await;
        assert_eq!(a.status, 303, "{path}");
        assert_eq!(a.location(), format!("/login?next={}", enc(path)), "{path}");
        // A made-up session id, or the admin token as a bearer header, opens nothing.
        let mut forged = Browser {
            cookies: vec![("clientele_admin".into(), "made-up-session-id".into())],
        };
        assert_eq!(forged.get(&server, path).await.status, 303, "{path}");
        let bearer = format!("Bearer {ADMIN_TOKEN}");
        let a = Browser::default()
            .request(
                &server,
                Method::GET,
                path,
                None,
                &[("authorization", &bearer)],
            )
            .await;
        assert_eq!(
            a.status, 303,
            "{path}: pages use the session, not the header"
        );
    }
    // The sign-in form itself, and the assets, are public.
    let mut anon = Browser::default();
    let a = anon.get(&server, "/login").await;
    assert_eq!(a.status, 200);
    assert!(a.body.contains(r#"<label for="token">Admin token</label>"#));
    let css = anon.get(&server, "/ui/style.css").await;
    assert_eq!(css.status, 200);
    assert!(
        css.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );
}

#[tokio::test]
async fn sign_in_checks_the_token_and_sets_a_strict_cookie() {
    let up = start_upstream().await;
    let server = Server::start(up.addr, "").await;
    let mut b = Browser::default();
    let form = b.get(&server, "/login").await;
    let csrf = form.csrf();
    let login_cookie = form.set_cookie("clientele_admin_login").unwrap();
    assert!(login_cookie.contains("HttpOnly") && login_cookie.contains("SameSite=Strict"));

    // Wrong token: refused, no session.
    let a = b
        .post(&server, "/login", &format!("token=wrong-token&csrf={csrf}"))
        .await;
    assert_eq!(a.status, 401);
    assert!(a.body.contains("That admin token is wrong."));
    assert!(a.set_cookie("clientele_admin").is_none());

    // The right token without the form's token (a forged cross-site sign-in): refused.
    let mut bare = Browser::default();
    let a = bare
        .post(&server, "/login", &format!("token={}", enc(ADMIN_TOKEN)))
        .await;
    assert_eq!(a.status, 403);
    assert!(a.set_cookie("clientele_admin").is_none());
    // With the token but posted from another site: refused.
    let form = b.get(&server, "/login").await;
    let a = b
        .request(
            &server,
            Method::POST,
            "/login",
            Some(&format!("token={}&csrf={}", enc(ADMIN_TOKEN), form.csrf())),
            &[("origin", "http://evil.example")],
        )
        .await;
    assert_eq!(a.status, 403);
    assert!(a.set_cookie("clientele_admin").is_none());

    // Right token: a session cookie that scripts cannot read and other sites cannot send, and
    // that holds a random id, not the token. `next` is followed only to local paths.
    let form = b.get(&server, "/login").await;
    let a = b
        .post(
            &server,
            "/login",
            &format!(
                "token={}&csrf={}&next=%2F%2Fevil.example%2F",
                enc(ADMIN_TOKEN),
                form.csrf()
            ),
        )
        .await;
    assert_eq!(a.status, 303);
    assert_eq!(a.location(), "/");
    let cookie = a.set_cookie("clientele_admin").unwrap();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(cookie.contains(attr), "{cookie} lacks {attr}");
    }
    assert!(
        !cookie.contains("Secure"),
        "plain HTTP: a Secure cookie would be dropped"
    );
    assert!(!cookie.contains(ADMIN_TOKEN));
    let id = b.cookie("clientele_admin").unwrap();
    assert!(id.len() >= 40, "a long random id: {id}");
    let page = b.get(&server, "/").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<h1>Overview</h1>"));
    assert_eq!(page.headers["cache-control"], "no-store");
    assert!(
        page.headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    assert!(
        !page.body.contains(ADMIN_TOKEN),
        "the token is never echoed"
    );

    // Behind a TLS-terminating proxy the cookie is Secure.
    let mut tls = Browser::default();
    let form = tls.get(&server, "/login").await;
    let a = tls
        .request(
            &server,
            Method::POST,
            "/login",
            Some(&format!("token={}&csrf={}", enc(ADMIN_TOKEN), form.csrf())),
            &[("x-forwarded-proto", "https")],
        )
        .await;
    assert!(
        a.set_cookie("clientele_admin")
            .unwrap()
            .contains("; Secure")
    );
    assert!(
        !server.stderr().contains(ADMIN_TOKEN),
        "the token is never logged"
    );

    // Guessing is slowed down: after ten failures in a minute, this address is refused for the
    // rest of the minute, the right token included. (One failure above counts too.)
    let mut guesser = Browser::default();
    let mut statuses = Vec::new();
    for i in 0..11 {
        let form = guesser.get(&server, "/login").await;
        let a = guesser
            .post(
                &server,
                "/login",
                &format!("token=guess-{i}&csrf={}", form.csrf()),
            )
            .await;
        statuses.push(a.status);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 401).count(),
        9,
        "{statuses:?}"
    );
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    let form = guesser.get(&server, "/login").await;
    let a = guesser
        .post(
            &server,
            "/login",
            &format!("token={}&csrf={}", enc(ADMIN_TOKEN), form.csrf()),
        )
        .await;
    assert_eq!(a.status, 429);
    assert_eq!(a.headers["retry-after"], "60");
    assert!(a.set_cookie("clientele_admin").is_none());
}

#[tokio::test]
async fn sign_out_needs_the_csrf_token_and_ends_the_session() {
    let up = start_upstream().await;
    let server = Server::start(up.addr, "").await;
    let mut b = admin_browser(&server).await;
    let page = b.get(&server, "/consumers").await;
    let csrf = page.csrf();
    let session = b.cookie("clientele_admin").unwrap();

    for form in ["", "csrf=", "csrf=not-the-token"] {
        let a = b.post(&server, "/logout", form).await;
        assert_eq!(a.status, 403, "{form:?}");
        assert!(
            a.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        assert_eq!(
            b.get(&server, "/").await.status,
            200,
            "the session survives"
        );
    }
    let a = b
        .request(
            &server,
            Method::POST,
            "/logout",
            Some(&format!("csrf={csrf}")),
            &[("sec-fetch-site", "cross-site")],
        )
        .await;
    assert_eq!(
        a.status, 403,
        "a cross-site post is refused even with the token"
    );

    let a = b.post(&server, "/logout", &format!("csrf={csrf}")).await;
    assert_eq!(a.status, 303);
    assert_eq!(a.location(), "/login?signed_out=1");
    assert!(
        a.set_cookie("clientele_admin")
            .unwrap()
            .contains("Max-Age=0")
    );
    // The old id is dead on the server, not only forgotten by the browser.
    let mut replay = Browser {
        cookies: vec![("clientele_admin".into(), session)],
    };
    assert_eq!(replay.get(&server, "/").await.status, 303);
}

#[tokio::test]
async fn dashboard_pages_answer_and_refuse_bad_parameters_with_html() {
    let up = start_upstream().await;
    let server = Server::start(up.addr, "").await;
    let (_, key) = server.consumer_with_key("acme", Some("pro")).await;
    for i in 0..5 {
        get_with_key(&server, &format!("/pets/{i}"), &key).await;
    }
    get_with_key(&server, "/status?code=503", &key).await;
    server.wait_events("acme", "", |e| e.len() == 6).await;
    let mut b = admin_browser(&server).await;
    let stats = loop {
        let (_, s) = server
            .admin(Method::GET, "/v1/stats/consumers/acme", None)
            .await;
        if s["requests"] == 6 {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let page = b.get(&server, "/consumers").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains(r#"<tr data-consumer="acme">"#));
    assert!(
        page.body.contains(r#"data-col="requests">6</td>"#),
        "{}",
        page.body
    );
    let page = b.get(&server, "/consumers/acme?range=1h").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains(r#"<dd data-metric="errors_5xx">1</dd>"#));
    assert!(
        page.body.contains("GET /status"),
        "the recent error is listed"
    );
    assert_eq!(stats["errors_5xx"], 1);
    assert!(!page.body.contains(&key), "keys are never shown");
    // Its six requests are one inferred session, whose class is the consumer's.
    let class = page
        .body
        .split(r#"<div data-testid="client-class"><dt>Client</dt><dd>"#)
        .nth(1)
        .and_then(|rest| rest.split("</dd>").next())
        .unwrap_or_default();
    assert!(
        ["agent", "service", "interactive"]
            .iter()
            .any(|c| class == format!("{c}, 1 of 1 sessions")),
        "{class:?}"
    );
    let page = b.get(&server, "/consumers/acme?errors=429").await;
    assert!(!page.body.contains(">503</span>"), "only 429s listed");
    assert!(page.body.contains("No error responses in this range."));
    let page = b.get(&server, "/consumers/acme?errors=5xx").await;
    assert!(
        page.body
            .contains(r#"<span class="status-badge s5">503</span>"#)
    );
    let page = b.get(&server, "/routes?sort=error_share&dir=asc").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains(r#"aria-sort="ascending""#));
    for (path, status) in [
        ("/consumers/nobody", 404),
        ("/?range=2y", 400),
        ("/consumers?sort=shoe_size", 400),
        ("/routes?dir=sideways", 400),
        (
            "/?range=custom&from=2026-02-01T00:00&to=2026-01-01T00:00",
            400,
        ),
        ("/?refresh=7", 400),
        ("/consumers/acme?errors=3xx", 400),
        ("/findings?severity=urgent", 400),
    ] {
        let a = b.get(&server, path).await;
        assert_eq!(a.status, status, "{path}");
        assert!(
            a.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html"),
            "{path}"
        );
        assert!(a.body.contains(r#"role="alert""#), "{path}");
    }
}

#[tokio::test]
async fn the_portal_shows_a_consumer_its_own_data_only() {
    let up = start_upstream().await;
    let server = Server::start(up.addr, "").await;
    let (a_key_id, a_key) = server.consumer_with_key("alpha", Some("pro")).await;
    let (_, b_key) = server.consumer_with_key("bravo", Some("free")).await;
    for i in 0..3 {
        get_with_key(&server, &format!("/pets/{i}"), &a_key).await;
    }
    get_with_key(&server, "/status?code=404", &b_key).await;
    get_with_key(&server, "/status?code=500", &b_key).await;
    get_with_key(&server, "/pets/9", &b_key).await;
    server.wait_events("alpha", "", |e| e.len() == 3).await;
    server.wait_events("bravo", "", |e| e.len() == 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The usage API equals the admin API's view of the same consumer, field for field.
    let to = clientele_now_plus(60_000);
    let window = format!("from={}&to={}", to - 3_600_000, to);
    for (id, key) in [("alpha", &a_key), ("bravo", &b_key)] {
        let (status, usage) =
            portal_api(&server, &format!("/portal/api/usage?{window}"), key).await;
        assert_eq!(status, 200, "{usage}");
        let (_, admin_view) = server
            .admin(
                Method::GET,
                &format!("/v1/stats/consumers/{id}?{window}"),
                None,
            )
            .await;
        let mut usage_only = usage.clone();
        let recent = usage_only
            .as_object_mut()
            .unwrap()
            .remove("recent_errors")
            .unwrap();
        assert_eq!(usage_only, admin_view, "{id}");
        assert_eq!(usage["consumer"], id);
        let recent = recent.as_array().unwrap();
        if id == "bravo" {
            let statuses: Vec<u64> = recent
                .iter()
                .map(|e| e["status"].as_u64().unwrap())
                .collect();
            assert_eq!(statuses.len(), 2, "{recent:?}");
            assert!(statuses.contains(&404) && statuses.contains(&500));
        } else {
            assert!(recent.is_empty());
        }
        assert!(recent.iter().all(|e| e["consumer"] == id));
    }

    // No parameter or path reaches another consumer; credentials other than a valid consumer
    // key are refused.
    for path in [
        "/portal/api/usage?consumer=bravo",
        "/portal/api/usage?id=bravo",
        "/portal/api/usage?consumers=bravo",
    ] {
        let (status, body) = portal_api(&server, path, &a_key).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(!body.to_string().contains("\"requests\""), "{path}");
    }
    let (status, _) = portal_api(&server, "/portal/api/usage/bravo", &a_key).await;
    assert_eq!(status, 404);
    let (status, body) = portal_api(&server, "/portal/api/usage", ADMIN_TOKEN).await;
    assert_eq!(status, 401, "the admin token is not a consumer key: {body}");
    let (status, headers, _) = send(
        Method::GET,
        &format!("http://{}/portal/api/usage", server.admin),
        &[],
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 401);
    assert_eq!(headers["content-type"], "application/problem+json");

    // The portal pages: sign-in with a key binds the session to its consumer.
    let (mut alpha, a) = portal_browser(&server, &a_key).await;
    assert_eq!(a.status, 303);
    assert_eq!(a.location(), "/portal");
    let cookie = a.set_cookie("clientele_portal").unwrap();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/portal"] {
        assert!(cookie.contains(attr), "{cookie} lacks {attr}");
    }
    for c in a.set_cookies() {
        assert!(!c.contains(&a_key), "the key is never put in a cookie");
    }
    let page = alpha.get(&server, "/portal").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Signed in as <strong>alpha</strong>"));
    assert!(page.body.contains(r#"<dd data-metric="requests">3</dd>"#));
    assert!(
        !page.body.contains("bravo"),
        "nothing about another consumer"
    );
    assert!(!page.body.contains(&a_key));
    for path in ["/portal?consumer=bravo", "/portal?id=bravo"] {
        let p = alpha.get(&server, path).await;
        assert_eq!(p.status, 400, "{path}");
        assert!(!p.body.contains("data-metric"), "{path}");
    }
    let p = alpha.get(&server, "/portal/consumers/bravo").await;
    assert_eq!(p.status, 404);
    // The portal session opens nothing on the dashboard, and the reverse.
    let p = alpha.get(&server, "/consumers/bravo").await;
    assert_eq!(p.status, 303);
    assert!(p.location().starts_with("/login"));
    let admin = admin_browser(&server).await;
    let mut swapped = Browser {
        cookies: vec![(
            "clientele_admin".into(),
            alpha.cookie("clientele_portal").unwrap(),
        )],
    };
    assert_eq!(swapped.get(&server, "/").await.status, 303);
    let mut swapped = Browser {
        cookies: vec![(
            "clientele_portal".into(),
            admin.cookie("clientele_admin").unwrap(),
        )],
    };
    let p = swapped.get(&server, "/portal").await;
    assert_eq!(p.status, 303);
    assert_eq!(p.location(), "/portal/login");

    // Two portal sessions sent together never mix: the page shows one consumer.
    let (bravo, _) = portal_browser(&server, &b_key).await;
    let mut both = Browser {
        cookies: vec![
            (
                "clientele_portal".into(),
                alpha.cookie("clientele_portal").unwrap(),
            ),
            (
                "clientele_portal".into(),
                bravo.cookie("clientele_portal").unwrap(),
            ),
        ],
    };
    let p = both.get(&server, "/portal").await;
    assert!(p.body.contains("Signed in as <strong>alpha</strong>"));
    assert!(!p.body.contains("bravo"));

    // Wrong keys cannot sign in.
    let (_, a) = portal_browser(&server, "ck_not-a-key-of-anyone-0000000").await;
    assert_eq!(a.status, 401);
    assert!(a.set_cookie("clientele_portal").is_none());
    let (_, a) = portal_browser(&server, ADMIN_TOKEN).await;
    assert_eq!(a.status, 401);

    // Revoking the key ends the session that it opened, and it can no longer sign in.
    let (status, _) = server
        .admin(Method::DELETE, &format!("/v1/keys/{a_key_id}"), None)
        .await;
    assert_eq!(status, 200);
    let p = alpha.get(&server, "/portal").await;
    assert_eq!(p.status, 303);
    assert_eq!(p.location(), "/portal/login");
    let (_, a) = portal_browser(&server, &a_key).await;
    assert_eq!(a.status, 401);
    assert!(a.body.contains("revoked"));
    let (status, _) = portal_api(&server, "/portal/api/usage", &a_key).await;
    assert_eq!(status, 401);
    assert!(!server.stderr().contains(&a_key), "keys are never logged");
    assert!(!server.stderr().contains(&b_key), "keys are never logged");
}

#[tokio::test]
async fn an_expired_keys_portal_session_ends() {
    let up = start_upstream().await;
    let server = Server::start(up.addr, "").await;
    let (status, _) = server
        .admin(Method::POST, "/v1/consumers", Some(json!({"id": "temp"})))
        .await;
    assert_eq!(status, 201);
    let (status, key) = server
        .admin(
            Method::POST,
            "/v1/consumers/temp/keys",
            Some(json!({"expires_at": clientele_now_plus(1_500)})),
        )
        .await;
    assert_eq!(status, 201, "{key}");
    let key = key["key"].as_str().unwrap().to_string();
    let (mut b, a) = portal_browser(&server, &key).await;
    assert_eq!(a.status, 303);
    assert_eq!(b.get(&server, "/portal").await.status, 200);
    tokio::time::sleep(Duration::from_millis(1_700)).await;
    let p = b.get(&server, "/portal").await;
    assert_eq!(p.status, 303);
    let (_, a) = portal_browser(&server, &key).await;
    assert_eq!(a.status, 401);
    assert!(a.body.contains("expired"));
}

async fn portal_api(server: &Server, path: &str, key: &str) -> (u16, Value) {
    let (status, _, body) = send(
        Method::GET,
        &format!("http://{}{}", server.admin, path),
        &[("authorization", &format!("Bearer {key}"))],
        None,
    )
    .await
    .unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn clientele_now_plus(ms: i64) -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        + ms
}
