//! WebSocket through the gateway: PyPI's `websockets` as both the echo upstream and the client.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::support::*;

/// The echo upstream, stopped when dropped (its stdin closes, and it is killed to be sure).
struct Echo {
    child: std::process::Child,
    port: u16,
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn script() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/ws_echo.py")
}

fn start_echo() -> Echo {
    let python = crate::exports::python();
    let mut child = Command::new(&python)
        .args([script(), "serve"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}; run scripts/test.sh"));
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().parse().unwrap_or_else(|_| {
        panic!("the echo server did not start (needs PyPI websockets; scripts/test.sh installs it): {line:?}")
    });
    Echo { child, port }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_gateway_is_one_event_with_bytes_both_ways() {
    let echo = start_echo();
    let up = format!("127.0.0.1:{}", echo.port).parse().unwrap();
    let server = Server::start(up, "").await;
    let (_, key) = server.consumer_with_key("acme", None).await;

    let url = format!("ws://{}/chat", server.gateway);
    let python = crate::exports::python();
    let key_for_client = key.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .args([script(), "client", &url, &key_for_client, "5"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "client failed: {}\ngateway stderr:\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.stderr()
    );
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    let echoed: Vec<&str> = result["echoed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        echoed,
        vec![
            "hello 0",
            "hello 1",
            "hello 2",
            "hello 3",
            "hello 4",
            "00010262696e617279"
        ]
    );
    assert_eq!(result["close_code"], 4001);

    // One event for the whole connection, once it closed: 101, its duration, bytes each way.
    let events = server.wait_events("acme", "", |e| !e.is_empty()).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let events = server
        .wait_events("acme", "", |e| e.len() >= events.len())
        .await;
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e["status"], 101, "{e}");
    assert_eq!(e["outcome"], "proxied", "{e}");
    assert_eq!(e["path"], "/chat");
    // Client frames are masked (4 bytes more each); six data frames and a close each way.
    let up_bytes = e["request_bytes"].as_u64().unwrap();
    let down_bytes = e["response_bytes"].as_u64().unwrap();
    assert!(up_bytes >= 6 * 7 + 5 * 7, "{e}");
    assert!(down_bytes >= 5 * 9 + 11, "{e}");
    assert!(
        up_bytes > down_bytes,
        "masked client frames are longer: {e}"
    );
    assert!(e["latency_ms"].as_f64().unwrap() >= e["upstream_latency_ms"].as_f64().unwrap());
    // The client's Close frame (masked, code 4001) is the connection's close code.
    assert_eq!(e["close_code"], 4001, "{e}");

    // Without a key the handshake is refused like any request.
    let (status, _, _) = send(
        http::Method::GET,
        &server.gw("/chat"),
        &[
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 401);
}
