//! Contracts end to end: the real Petstore spec (and variants) on the real binary.

use std::time::{Duration, Instant};

use http::Method;
use serde_json::Value;

use crate::support::*;

const PETSTORE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/specs/petstore.yaml"
);

/// Petstore with findPetsByTags deprecated (replaced by findPetsByStatus), no `default`
/// responses, and a `/status` operation documenting only 200.
fn variant() -> String {
    let original = std::fs::read_to_string(PETSTORE).unwrap();
    let v = original
        .replacen(
            "      operationId: findPetsByTags\n",
            "      operationId: findPetsByTags\n      deprecated: true\n      x-replaced-by: findPetsByStatus\n",
            1,
        )
        .replace("        default:\n          description: Unexpected error\n", "")
        .replacen(
            "paths:\n",
            "paths:\n  /status:\n    get:\n      responses:\n        '200':\n          description: ok\n",
            1,
        );
    assert_ne!(v, original);
    v
}

async fn start_with_spec(spec: &str) -> (Server, Upstream) {
    let upstream = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("petstore.yaml"), spec).unwrap();
    let gateway = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = format!(
        "[gateway]\nlisten = \"{gateway}\"\n[admin]\nlisten = \"{admin}\"\ntoken = \"{ADMIN_TOKEN}\"\n\
         [storage]\ndata_dir = \"data\"\n[[apis]]\nname = \"petstore\"\nupstream = \"http://{}\"\n\
         prefix = \"/\"\nopenapi = \"petstore.yaml\"\n[plans.pro]\nrate_per_second = 100\nburst = 200\n",
        upstream.addr
    );
    let config_path = dir.path().join("clientele.toml");
    std::fs::write(&config_path, config).unwrap();
    (
        Server::spawn(dir, &config_path, gateway, admin).await,
        upstream,
    )
}

#[tokio::test]
async fn routes_are_spec_templates_and_drift_is_found_per_consumer() {
    let (server, _up) = start_with_spec(&variant()).await;
    let (_, key) = server.consumer_with_key("acme", Some("pro")).await;
    for path in [
        "/pet/1",
        "/api/v3/pet/2",
        "/pet/findByTags?tags=a",
        "/pet/findByTags?tags=b",
        "/pet/findByStatus?status=sold",
        "/not/documented/7",
        "/status?code=503",
    ] {
        let (status, _, _) = get_with_key(&server, path, &key).await;
        assert!(status == 200 || status == 503, "{path}: {status}");
    }
    server.wait_events("acme", "", |e| e.len() >= 7).await;
    let events = server.wait_events("acme", "", |e| e.len() >= 7).await;
    let routes: Vec<&str> = events.iter().filter_map(|e| e["route"].as_str()).collect();
    assert!(routes.contains(&"/pet/{petId}"), "{routes:?}");
    assert!(!routes.iter().any(|r| r.contains("api/v3")), "{routes:?}");

    // Stats list the spec's templates.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = server.admin(Method::GET, "/v1/stats/routes", None).await;
        let routes: Vec<String> = body["routes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["route"].as_str().unwrap_or("").to_string())
            .collect();
        if routes.iter().any(|r| r == "/pet/{petId}") {
            break;
        }
        assert!(Instant::now() < deadline, "{routes:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let (status, _) = server
        .admin(Method::POST, "/v1/findings/evaluate", None)
        .await;
    assert_eq!(status, 200);
    let (_, body) = server
        .admin(Method::GET, "/v1/findings?consumer=acme", None)
        .await;
    let found: Vec<(String, String)> = body["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap().to_string(),
                f["route"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    for (kind, route) in [
        ("undocumented_endpoint", "GET /not/documented/{id}"),
        ("undocumented_status", "GET /status"),
        ("deprecated_usage", "GET /pet/findByTags"),
    ] {
        assert!(
            found.iter().any(|(k, r)| k == kind && r == route),
            "{kind} {route} not in {found:?}"
        );
    }

    let (status, body) = server.admin(Method::GET, "/v1/deprecations", None).await;
    assert_eq!(status, 200);
    let dep: &Value = &body["deprecations"][0];
    assert_eq!(dep["route"], "GET /pet/findByTags");
    assert_eq!(dep["replaced_by"], "GET /pet/findByStatus");
    assert_eq!(dep["consumers"][0]["consumer"], "acme");
    assert_eq!(dep["consumers"][0]["calls"], 2);
    let progress = dep["consumers"][0]["migration_progress"].as_f64().unwrap();
    assert!((progress - 1.0 / 3.0).abs() < 1e-9, "{progress}");

    // A bad new spec is refused with the file and place, and the last good one keeps serving.
    let spec_path = server.dir.path().join("petstore.yaml");
    std::fs::write(
        &spec_path,
        "openapi: 3.0.3\npaths:\n  /a: {$ref: '#/nowhere'}\n",
    )
    .unwrap();
    let (status, body) = server
        .admin(Method::POST, "/v1/apis/petstore/spec/reload", None)
        .await;
    assert_eq!(status, 422, "{body}");
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("petstore.yaml") && detail.contains("#/paths/~1a"),
        "{detail}"
    );
    std::fs::write(&spec_path, std::fs::read_to_string(PETSTORE).unwrap()).unwrap();
    let (status, body) = server
        .admin(Method::POST, "/v1/apis/petstore/spec/reload", None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["changed"], true);
    let (_, body) = server
        .admin(Method::GET, "/v1/apis/petstore/spec", None)
        .await;
    assert_eq!(body["history"].as_array().unwrap().len(), 2, "{body}");
}

#[tokio::test]
async fn an_invalid_spec_stops_start_up_naming_the_file_and_place() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "openapi: 3.0.3\npaths:\n  /a:\n    get:\n      responses: 7\n",
    )
    .unwrap();
    let config = "[[apis]]\nname = \"petstore\"\nupstream = \"http://127.0.0.1:9\"\nopenapi = \"bad.yaml\"\n[storage]\ndata_dir = \"data\"\n";
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
        stderr.contains("bad.yaml") && stderr.contains("#/paths/~1a/get/responses"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
