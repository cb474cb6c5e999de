//! HTTPS upstreams through the gateway: a test CA made with openssl, a valid certificate, one
//! for another name, an expired one, and one the system's roots do not know.

use std::sync::atomic::Ordering;

use clientele_http::testing::{TestCa, TlsServer};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstreams_are_pooled_recorded_and_bad_certificates_are_named() {
    let certs = tempfile::tempdir().unwrap();
    let ca = TestCa::new(certs.path());
    let (cert, key) = ca.issue("localhost", "DNS:localhost", None, false);
    let (old_cert, old_key) = ca.issue(
        "old",
        "DNS:localhost",
        Some(("20200101000000Z", "20200201000000Z")),
        false,
    );
    let good = TlsServer::start(&cert, &key, None, 200).await;
    let expired = TlsServer::start(&old_cert, &old_key, None, 200).await;
    let (p1, p2) = (good.addr.port(), expired.addr.port());
    let ca_file = ca.ca_cert.display().to_string();
    let server = Server::start_with(tempfile::tempdir().unwrap(), |gateway, admin| {
        format!(
            "[gateway]\nlisten = \"{gateway}\"\n[admin]\nlisten = \"{admin}\"\ntoken = \"{ADMIN_TOKEN}\"\n\
             [storage]\ndata_dir = \"data\"\n\
             [[apis]]\nname = \"good\"\nupstream = \"https://localhost:{p1}/base\"\nprefix = \"/good\"\nstrip_prefix = true\nca_file = \"{ca_file}\"\n\
             [[apis]]\nname = \"wrongname\"\nupstream = \"https://127.0.0.1:{p1}\"\nprefix = \"/wrong\"\nca_file = \"{ca_file}\"\n\
             [[apis]]\nname = \"expired\"\nupstream = \"https://localhost:{p2}\"\nprefix = \"/old\"\nca_file = \"{ca_file}\"\n\
             [[apis]]\nname = \"untrusted\"\nupstream = \"https://localhost:{p1}\"\nprefix = \"/untrusted\"\n"
        )
    })
    .await;
    let (_, key) = server.consumer_with_key("acme", None).await;

    // Three requests over one pooled TLS connection, HTTP/2 by ALPN, the consumer attached.
    for i in 0..3 {
        let (status, _, body) = get_with_key(&server, &format!("/good/pets/{i}"), &key).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["path"], format!("/base/pets/{i}"));
    }
    let seen = good.requests();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|s| s.version == http::Version::HTTP_2));
    assert!(seen.iter().all(|s| s.headers["x-consumer-id"] == "acme"));
    assert_eq!(good.connections.load(Ordering::SeqCst), 1, "pooled");

    // Certificate failures: 502 problem+json naming the API, the upstream and rustls' reason.
    for (path, api, authority, reason) in [
        (
            "/wrong/x",
            "wrongname",
            format!("127.0.0.1:{p1}"),
            "not valid for name",
        ),
        ("/old/x", "expired", format!("localhost:{p2}"), "expired"),
        (
            "/untrusted/x",
            "untrusted",
            format!("localhost:{p1}"),
            "UnknownIssuer",
        ),
    ] {
        let (status, headers, body) = get_with_key(&server, path, &key).await;
        assert_eq!(status, 502, "{path}: {body}");
        assert_eq!(headers["content-type"], "application/problem+json");
        assert!(
            body["type"].as_str().unwrap().ends_with("upstream-tls"),
            "{body}"
        );
        let detail = body["detail"].as_str().unwrap();
        assert!(
            detail.contains(api) && detail.contains(&authority) && detail.contains(reason),
            "{path}: {detail}"
        );
    }
    assert!(expired.requests().is_empty());

    // One event each, with the same fields as plain HTTP: latencies, status, outcome.
    let events = server.wait_events("acme", "", |e| e.len() >= 6).await;
    let proxied: Vec<_> = events.iter().filter(|e| e["api"] == "good").collect();
    assert_eq!(proxied.len(), 3);
    for e in &proxied {
        assert_eq!(e["status"], 200);
        assert_eq!(e["outcome"], "proxied");
        assert!(e["upstream_latency_ms"].as_f64().unwrap() > 0.0, "{e}");
        assert!(e["latency_ms"].as_f64().unwrap() > 0.0, "{e}");
    }
    let refused: Vec<_> = events.iter().filter(|e| e["status"] == 502).collect();
    assert_eq!(refused.len(), 3, "{events:?}");
    assert!(
        refused
            .iter()
            .all(|e| e["outcome"] == "upstream_unreachable")
    );

    // The operator's log line names the API, the upstream and the reason.
    let stderr = server.stderr();
    let line = stderr
        .lines()
        .find(|l| l.contains("upstream TLS handshake failed") && l.contains("expired"))
        .unwrap_or_else(|| panic!("no TLS log line in:\n{stderr}"));
    assert!(line.contains(&format!("localhost:{p2}")), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_ca_file_stops_start_up_naming_the_api_and_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), "not a certificate").unwrap();
    let config = "[[apis]]\nname = \"secure\"\nupstream = \"https://localhost:1\"\nca_file = \"ca.pem\"\n[storage]\ndata_dir = \"data\"\n";
    let config_path = dir.path().join("clientele.toml");
    std::fs::write(&config_path, config).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_clientele"))
        .args(["serve", "--config"])
        .arg(&config_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("api secure")
            && stderr.contains("ca.pem")
            && stderr.contains("no PEM certificate"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
