//! `clientele import-consumers`: a Kong declarative config and a CSV become consumers whose
//! existing keys work at the gateway, attributed to them, with Kong's limits enforced.

use http::Method;
use serde_json::Value;

use crate::support::*;

fn import(server: &Server, file: &std::path::Path, extra: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_clientele"))
        .arg("import-consumers")
        .arg(file)
        .args(extra)
        .env("CLIENTELE_ADMIN_URL", format!("http://{}", server.admin))
        .env("CLIENTELE_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kong_consumers_and_keys_keep_working_through_the_gateway() {
    let up = start_upstream().await;
    // acme's Kong limits are a plan in the config; globex's are not (it gets them as its own).
    let server = Server::start(
        up.addr,
        "\n[plans.kong-5rps-b5-q10000d]\nrate_per_second = 5\nburst = 5\nquota_per_day = 10000\n",
    )
    .await;
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kong.yaml");
    let dir = tempfile::tempdir().unwrap();
    let plans = dir.path().join("plans.toml");
    let (code, out) = tokio::task::block_in_place(|| {
        import(&server, &fixture, &["--plans-out", plans.to_str().unwrap()])
    });
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("3 created") && out.contains("3 imported"),
        "{out}"
    );
    assert!(
        !out.contains("acme-live-4f1c9a7e2b6d8031"),
        "keys are never printed: {out}"
    );
    let toml = std::fs::read_to_string(&plans).unwrap();
    assert!(
        toml.contains("[plans.kong-2rps-b120]") && toml.contains("rate_per_second = 2"),
        "{toml}"
    );

    let (_, acme) = server.admin(Method::GET, "/v1/consumers/acme", None).await;
    assert_eq!(acme["plan"], "kong-5rps-b5-q10000d", "{acme}");
    assert_eq!(acme["metadata"]["kong_custom_id"], "acme-corp", "{acme}");
    let (_, globex) = server
        .admin(Method::GET, "/v1/consumers/globex", None)
        .await;
    assert_eq!(globex["limits"]["rate_per_second"], 2.0, "{globex}");
    assert_eq!(globex["limits"]["burst"], 120, "{globex}");

    // Both of acme's Kong keys (nested and top-level credential) work and are attributed to it.
    for key in ["acme-live-4f1c9a7e2b6d8031", "acme-backup-0a1b2c3d4e5f6789"] {
        assert_eq!(get_with_key(&server, "/pets/1", key).await.0, 200);
    }
    assert_eq!(
        get_with_key(&server, "/pets/2", "globex-prod-91ab3c5d7e0f2468")
            .await
            .0,
        200
    );
    // As Kong clients send it (key-auth's default `apikey` header).
    let (status, _, _) = send(
        Method::GET,
        &server.gw("/pets/4"),
        &[("apikey", "acme-live-4f1c9a7e2b6d8031")],
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    server.wait_events("acme", "", |e| e.len() == 3).await;
    let g = server.wait_events("globex", "", |e| e.len() == 1).await;
    assert_eq!(g[0]["path"], "/pets/2");
    // The store holds hashes: a wrong key is still refused.
    assert_eq!(
        get_with_key(&server, "/pets/1", "acme-live-4f1c9a7e2b6d8032")
            .await
            .0,
        401
    );
    // acme's Kong limit (5 a second, burst 5) holds.
    let mut limited = 0;
    for _ in 0..10 {
        if get_with_key(&server, "/pets/1", "acme-live-4f1c9a7e2b6d8031")
            .await
            .0
            == 429
        {
            limited += 1;
        }
    }
    assert!(limited >= 3, "{limited} of 10 were limited");

    // Re-running imports nothing twice.
    let (code, out) = tokio::task::block_in_place(|| import(&server, &fixture, &["--json"]));
    assert_eq!(code, Some(0), "{out}");
    let report: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(
        (report["existed"].as_u64(), report["keys_existed"].as_u64()),
        (Some(3), Some(3)),
        "{report}"
    );

    // CSV: a consumer with a plan and two keys.
    let csv = dir.path().join("consumers.csv");
    std::fs::write(
        &csv,
        "id,name,plan,team,key\ninitech,\"Initech, LLC\",pro,billing,initech-key-000000000001;initech-key-000000000002\n",
    )
    .unwrap();
    let (code, out) = tokio::task::block_in_place(|| import(&server, &csv, &[]));
    assert_eq!(code, Some(0), "{out}");
    let (_, initech) = server
        .admin(Method::GET, "/v1/consumers/initech", None)
        .await;
    assert_eq!(
        (initech["plan"].as_str(), initech["name"].as_str()),
        (Some("pro"), Some("Initech, LLC"))
    );
    assert_eq!(
        get_with_key(&server, "/pets/3", "initech-key-000000000002")
            .await
            .0,
        200
    );
    server.wait_events("initech", "", |e| e.len() == 1).await;
}
