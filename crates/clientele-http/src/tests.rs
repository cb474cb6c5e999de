use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::testing::{TestCa, TlsServer};
use crate::*;

fn options(tls: TlsSettings) -> ClientOptions {
    ClientOptions::new(Timeouts {
        connect: Duration::from_secs(5),
        request: Duration::from_secs(10),
    })
    .with_tls(tls)
}

fn trusting(ca: &TestCa) -> TlsSettings {
    TlsSettings {
        ca_file: Some(ca.ca_cert.clone()),
        ..TlsSettings::default()
    }
}

async fn get(client: &Outbound<Full<Bytes>>, url: &str) -> Result<Posted, Failure> {
    let req = Request::get(url).body(Full::new(Bytes::new())).unwrap();
    client.send_and_drain(req).await
}

#[tokio::test]
async fn https_with_a_configured_ca_speaks_http2_and_certificate_errors_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let (cert, key) = ca.issue("localhost", "DNS:localhost", None, false);
    let (old_cert, old_key) = ca.issue(
        "old",
        "DNS:localhost",
        Some(("20200101000000Z", "20200201000000Z")),
        false,
    );
    let good = TlsServer::start(&cert, &key, None, 200).await;
    let expired = TlsServer::start(&old_cert, &old_key, None, 200).await;
    let client: Outbound<Full<Bytes>> = Outbound::new(&options(trusting(&ca))).unwrap();

    let ok = get(
        &client,
        &format!("https://localhost:{}/x", good.addr.port()),
    )
    .await;
    assert_eq!(ok.unwrap().status, 200);
    let seen = good.requests();
    assert_eq!(seen[0].version, http::Version::HTTP_2, "ALPN offers h2");
    assert!(!seen[0].client_cert);

    // The certificate is for localhost, not for the address.
    let err = get(
        &client,
        &format!("https://127.0.0.1:{}/x", good.addr.port()),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind, FailureKind::Tls, "{err}");
    assert!(err.reason.contains("not valid for name"), "{err}");

    let err = get(
        &client,
        &format!("https://localhost:{}/x", expired.addr.port()),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind, FailureKind::Tls, "{err}");
    assert!(err.reason.contains("expired"), "{err}");

    // The system's roots do not know the test CA.
    let system: Outbound<Full<Bytes>> = Outbound::new(&options(TlsSettings::default())).unwrap();
    let err = get(
        &system,
        &format!("https://localhost:{}/x", good.addr.port()),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind, FailureKind::Tls, "{err}");
    assert!(err.reason.contains("UnknownIssuer"), "{err}");
    // And a certificate error is not retried: it will not fix itself.
    assert_eq!(
        RetryPolicy::new(5, Duration::ZERO, Duration::ZERO).next_delay(1, &Err(err)),
        None
    );
}

#[tokio::test]
async fn a_client_certificate_is_presented_to_an_upstream_that_requires_one() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let (cert, key) = ca.issue("localhost", "DNS:localhost", None, false);
    let (client_cert, client_key) = ca.issue("gateway", "DNS:gateway", None, true);
    let server = TlsServer::start(&cert, &key, Some(&ca.ca_cert), 204).await;
    let url = format!("https://localhost:{}/m", server.addr.port());

    let anonymous: Outbound<Full<Bytes>> = Outbound::new(&options(trusting(&ca))).unwrap();
    assert!(get(&anonymous, &url).await.is_err());

    let mtls = TlsSettings {
        client_cert: Some(client_cert.clone()),
        client_key: Some(client_key),
        ..trusting(&ca)
    };
    let client: Outbound<Full<Bytes>> = Outbound::new(&options(mtls)).unwrap();
    assert_eq!(get(&client, &url).await.unwrap().status, 204);
    assert!(server.requests().iter().all(|s| s.client_cert));

    // Half a pair, or a file that is not PEM, is refused when the client is built.
    let half = TlsSettings {
        client_cert: Some(client_cert),
        ..trusting(&ca)
    };
    let err = Outbound::<Full<Bytes>>::new(&options(half)).err().unwrap();
    assert!(err.contains("set both"), "{err}");
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let err = Outbound::<Full<Bytes>>::new(&options(TlsSettings {
        ca_file: Some(not_pem),
        ..TlsSettings::default()
    }))
    .err()
    .unwrap();
    assert!(
        err.contains("not.pem") && err.contains("no PEM certificate"),
        "{err}"
    );
}

#[tokio::test]
async fn plain_http_failures_are_classified() {
    // A port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let client: Outbound<Full<Bytes>> = Outbound::new(&options(TlsSettings::default())).unwrap();
    let err = get(&client, &format!("http://127.0.0.1:{port}/"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, FailureKind::Connect, "{err}");
    assert!(err.reason.contains("refused"), "{err}");
}

#[test]
fn backoff_doubles_with_jitter_and_honours_retry_after() {
    let policy = RetryPolicy::new(5, Duration::from_millis(100), Duration::from_secs(2));
    let fail = |status, retry_after| {
        Ok(Posted {
            status,
            retry_after,
        })
    };
    for _ in 0..50 {
        let d1 = policy.next_delay(1, &fail(503, None)).unwrap();
        assert!(
            d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100),
            "{d1:?}"
        );
        let d3 = policy.next_delay(3, &fail(503, None)).unwrap();
        assert!(
            d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400),
            "{d3:?}"
        );
    }
    // Capped at max_delay.
    let d = policy.next_delay(4, &fail(500, None)).unwrap();
    assert!(d <= Duration::from_secs(2));
    // Retry-After wins when longer; a pause beyond max_delay ends the retries.
    let asked = Some(Duration::from_secs(1));
    assert_eq!(
        policy.next_delay(1, &fail(429, asked)),
        Some(Duration::from_secs(1))
    );
    assert_eq!(
        policy.next_delay(1, &fail(429, Some(Duration::from_secs(60)))),
        None
    );
    // Not retried: success, 4xx, attempts used up.
    assert_eq!(policy.next_delay(1, &fail(200, None)), None);
    assert_eq!(policy.next_delay(1, &fail(400, None)), None);
    assert_eq!(policy.next_delay(5, &fail(503, None)), None);
    let timeout = Err(Failure::timeout(Duration::from_secs(1)));
    assert!(policy.next_delay(1, &timeout).is_some());
}

#[test]
fn retry_after_is_seconds_or_an_http_date() {
    let mut h = http::HeaderMap::new();
    assert_eq!(parse_retry_after(&h), None);
    h.insert(http::header::RETRY_AFTER, "7".parse().unwrap());
    assert_eq!(parse_retry_after(&h), Some(Duration::from_secs(7)));
    h.insert(
        http::header::RETRY_AFTER,
        "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
    );
    assert_eq!(
        parse_retry_after(&h),
        Some(Duration::ZERO),
        "a date in the past"
    );
    let later = chrono::Utc::now() + chrono::Duration::seconds(120);
    h.insert(
        http::header::RETRY_AFTER,
        later.to_rfc2822().parse().unwrap(),
    );
    let d = parse_retry_after(&h).unwrap();
    assert!(
        d > Duration::from_secs(100) && d <= Duration::from_secs(120),
        "{d:?}"
    );
    h.insert(http::header::RETRY_AFTER, "soon".parse().unwrap());
    assert_eq!(parse_retry_after(&h), None);
}

#[tokio::test]
async fn run_retries_until_an_answer_that_will_not_change() {
    let policy = RetryPolicy::new(4, Duration::from_millis(1), Duration::from_millis(5));
    let mut calls = 0;
    let result = policy
        .run(|n| {
            calls += 1;
            async move {
                Ok(Posted {
                    status: if n < 3 { 503 } else { 202 },
                    retry_after: None,
                })
            }
        })
        .await;
    assert_eq!(result.unwrap().status, 202);
    assert_eq!(calls, 3);
}
