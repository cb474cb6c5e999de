//! Several nodes on one PostgreSQL control plane (`[storage] backend = "postgres"`): the real
//! binary twice, a real PostgreSQL started by the test (Debian's binaries, a temporary folder, a
//! free port). Without the binaries the test says so and passes, except on CI.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clientele_store::postgres::testing::PgServer;
use http::Method;

use serde_json::json;

use crate::support::{
    ADMIN_TOKEN, Server, config_text, free_port, get_with_key, send, start_upstream,
};

/// A node with its own data dir and event log, its control plane in `url`.
async fn node(up: SocketAddr, url: &str) -> Server {
    Server::start_with(tempfile::tempdir().unwrap(), |gateway, admin| {
        config_text(gateway, admin, up, "").replace(
            "data_dir = \"data\"",
            &format!("data_dir = \"data\"\nbackend = \"postgres\"\npostgres_url = \"{url}\""),
        )
    })
    .await
}

/// Polls `server` with `key` until it answers `want`; returns how long that took.
async fn until_status(server: &Server, key: &str, want: u16, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let (status, _, _) = get_with_key(server, "/pets/1", key).await;
        if status == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "still {status} after {limit:?}, expected {want}; stderr:\n{}",
            server.stderr()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_made_on_one_node_works_on_the_other_within_a_second() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    pg.create_database("clientele");
    let url = pg.url("clientele");
    let up = start_upstream().await;
    let a = node(up.addr, &url).await;
    let b = node(up.addr, &url).await;

    let (key_id, key) = a.consumer_with_key("acme", Some("pro")).await;
    let created = until_status(&b, &key, 200, Duration::from_secs(1)).await;
    eprintln!("key made on node A authenticated on node B after {created:?}");
    // A few more, made on either node, each seen by the other within the second.
    let mut seen = vec![created];
    for i in 0..4 {
        let (made, other) = if i % 2 == 0 { (&b, &a) } else { (&a, &b) };
        let (_, k) = made.consumer_with_key(&format!("c{i}"), None).await;
        seen.push(until_status(other, &k, 200, Duration::from_secs(1)).await);
    }
    seen.sort();
    eprintln!(
        "key propagation across nodes, 5 keys: median {:?}, max {:?}",
        seen[2], seen[4]
    );
    // Node B sees the consumer too, and revokes the key for both.
    let (status, consumers) = b.admin(Method::GET, "/v1/consumers", None).await;
    assert_eq!(status, 200);
    assert_eq!(consumers["consumers"][0]["id"], "acme", "{consumers}");
    let (status, _) = b
        .admin(Method::DELETE, &format!("/v1/keys/{key_id}"), None)
        .await;
    assert_eq!(status, 200);
    let revoked = until_status(&a, &key, 401, Duration::from_secs(1)).await;
    eprintln!("key revoked on node B refused on node A after {revoked:?}");

    // At rest the key is an HMAC under the one secret every node shares, never the key.
    let stored = pg.psql("clientele", "SELECT hash FROM api_keys");
    assert_eq!(stored.lines().count(), 5, "{stored}");
    assert!(stored.lines().all(|h| h.len() == 64), "{stored}");
    assert!(!stored.contains(&key));
    let dump = pg.psql(
        "clientele",
        "SELECT string_agg(t::text, ' ') FROM api_keys t",
    );
    assert!(!dump.contains(&key), "the plaintext key is stored: {dump}");
    let migrations = pg.psql("clientele", "SELECT count(*) FROM schema_migrations");
    assert_eq!(
        migrations.trim(),
        clientele_store::postgres::MIGRATIONS.len().to_string(),
        "two nodes migrate once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_postgres_stops_start_up_with_a_clear_line() {
    let up = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let gateway: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = dir.path().join("clientele.toml");
    std::fs::write(
        &config,
        config_text(gateway, admin, up.addr, "").replace(
            "data_dir = \"data\"",
            &format!(
                "data_dir = \"data\"\nbackend = \"postgres\"\npostgres_url = \"postgres://clientele@127.0.0.1:{port}/clientele\""
            ),
        ),
    )
    .unwrap();
    let Err((_, stderr)) = Server::try_spawn(dir, &config, gateway, admin).await else {
        panic!("the server started without its PostgreSQL");
    };
    assert!(
        stderr.contains(&format!(
            "cannot reach PostgreSQL at 127.0.0.1:{port}/clientele"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_down_the_gateway_serves_and_admin_writes_answer_503() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    pg.create_database("clientele");
    let up = start_upstream().await;
    let a = node(up.addr, &pg.url("clientele")).await;
    let (_, key) = a.consumer_with_key("acme", Some("pro")).await;
    assert_eq!(get_with_key(&a, "/pets/1", &key).await.0, 200);

    pg.stop();
    // Several 500 ms polls fail meanwhile; the key index stays as it was.
    for _ in 0..6 {
        assert_eq!(get_with_key(&a, "/pets/1", &key).await.0, 200);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let write = || async {
        send(
            Method::POST,
            &format!("http://{}/v1/consumers", a.admin),
            &[
                ("authorization", &format!("Bearer {ADMIN_TOKEN}")),
                ("content-type", "application/json"),
            ],
            Some(json!({"id": "globex"}).to_string().into()),
        )
        .await
        .unwrap()
    };
    let (status, headers, body) = write().await;
    assert_eq!(status, 503);
    assert_eq!(headers["content-type"], "application/problem+json");
    let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("PostgreSQL at 127.0.0.1:{}/clientele", pg.port())),
        "{problem}"
    );
    assert!(!detail.contains("password"), "{problem}");
    // Statistics come from this node's rollups, not from the database.
    let (status, stats) = a.admin(Method::GET, "/v1/stats/consumers", None).await;
    assert_eq!(status, 200, "{stats}");

    // Back: the next write opens a new connection.
    pg.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, body) = write().await;
        if status == 201 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "writes did not resume: {status} {}",
            String::from_utf8_lossy(&body)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get_with_key(&a, "/pets/1", &key).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_while_postgres_is_down_serves_the_keys_it_knew() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    pg.create_database("clientele");
    let up = start_upstream().await;
    let mut a = node(up.addr, &pg.url("clientele")).await;
    let (_, key) = a.consumer_with_key("acme", Some("pro")).await;
    assert_eq!(get_with_key(&a, "/pets/1", &key).await.0, 200);
    // The node's copy follows the key reload (every 500 ms when the control version moved).
    let copy = a.dir.path().join("data").join("postgres-copy.json");
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = std::fs::read_to_string(&copy).unwrap_or_default();
        if text.contains("\"acme\"") {
            break text;
        }
        assert!(Instant::now() < deadline, "no copy at {}", copy.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!text.contains(&key), "the copy holds the plaintext key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&copy).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "the copy holds the key secret: owner only"
        );
    }

    // Stopped, then started again while the database is down.
    assert!(a.terminate().success());
    pg.stop();
    let dir = std::mem::replace(&mut a.dir, tempfile::tempdir().unwrap());
    let config = dir.path().join("clientele.toml");
    let b = Server::spawn(dir, &config, a.gateway, a.admin).await;
    let stderr = b.stderr();
    assert!(
        stderr.contains(
            "PostgreSQL is unreachable at start-up: serving the keys of this node's copy"
        ),
        "{stderr}"
    );
    assert_eq!(
        get_with_key(&b, "/pets/1", &key).await.0,
        200,
        "{}",
        b.stderr()
    );
    assert_eq!(
        get_with_key(&b, "/pets/1", "ck_not_a_key_0123456789abcdef")
            .await
            .0,
        401
    );
    let write = || async {
        send(
            Method::POST,
            &format!("http://{}/v1/consumers", b.admin),
            &[
                ("authorization", &format!("Bearer {ADMIN_TOKEN}")),
                ("content-type", "application/json"),
            ],
            Some(json!({"id": "globex"}).to_string().into()),
        )
        .await
        .unwrap()
    };
    let (status, headers, _) = write().await;
    assert_eq!(status, 503);
    assert_eq!(headers["content-type"], "application/problem+json");
    // Consumer reads answer the copy's consumers.
    let (status, consumers) = b.admin(Method::GET, "/v1/consumers", None).await;
    assert_eq!(status, 200);
    assert_eq!(consumers["consumers"][0]["id"], "acme", "{consumers}");

    // Back: the first call to reach it catches up, and a key made now works at once.
    pg.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, _, body) = write().await;
        if status == 201 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "writes did not resume: {status} {}\n{}",
            String::from_utf8_lossy(&body),
            b.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, later) = b.consumer_with_key("initech", None).await;
    assert_eq!(get_with_key(&b, "/pets/1", &later).await.0, 200);
    assert_eq!(get_with_key(&b, "/pets/1", &key).await.0, 200);
}

/// `clientele migrate --config FILE` with only `[storage]` set.
fn migrate(dir: &std::path::Path, url: &str) -> std::process::Output {
    let config = dir.join("migrate.toml");
    std::fs::write(
        &config,
        format!("[storage]\nbackend = \"postgres\"\npostgres_url = \"{url}\"\n"),
    )
    .unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_clientele"))
        .args(["migrate", "--config"])
        .arg(&config)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_brings_the_schema_up_to_date_once() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    pg.create_database("clientele");
    let dir = tempfile::tempdir().unwrap();
    let latest = clientele_store::postgres::MIGRATIONS.last().unwrap().0;
    for _ in 0..2 {
        let out = migrate(dir.path(), &pg.url("clientele"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(&format!(
                "PostgreSQL at 127.0.0.1:{}/clientele: schema at version {latest}",
                pg.port()
            )),
            "{stdout}"
        );
    }
    let applied = pg.psql(
        "clientele",
        "SELECT string_agg(version::text, ',' ORDER BY version) FROM schema_migrations",
    );
    let want: Vec<String> = clientele_store::postgres::MIGRATIONS
        .iter()
        .map(|m| m.0.to_string())
        .collect();
    assert_eq!(applied.trim(), want.join(","));

    pg.stop();
    let out = migrate(dir.path(), &pg.url("clientele"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("cannot reach PostgreSQL") && !stderr.contains("panicked"),
        "{stderr}"
    );
}
