use std::path::{Path, PathBuf};

use super::*;

/// The repository's own OpenAPI fixture (a pet shop written for these tests).
fn petstore() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kennel.yaml")
}

/// Every `default` response of the fixture (removed by the drift variants).
const DEFAULT_RESPONSE: &str =
    "        default:\n          $ref: '#/components/responses/Trouble'\n";

fn temp_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("clientele-contract-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn loads_the_fixture_and_matches_templates_base_path_and_method() {
    let spec = Spec::load(&petstore()).unwrap();
    assert!(spec.openapi_version.starts_with("3.0"));
    assert_eq!(spec.base_paths, vec!["/api/v1".to_string()]);
    assert_eq!(spec.operations.len(), 12);
    let t = |m: &str, p: &str| spec.match_request(m, p).template().map(str::to_string);
    assert_eq!(t("GET", "/pet/42").as_deref(), Some("/pet/{petId}"));
    assert_eq!(t("GET", "/api/v1/pet/42").as_deref(), Some("/pet/{petId}"));
    assert_eq!(
        t("GET", "/pet/findByStatus?status=sold").as_deref(),
        Some("/pet/findByStatus")
    );
    assert_eq!(
        t("POST", "/pet/42/uploadImage").as_deref(),
        Some("/pet/{petId}/uploadImage")
    );
    assert_eq!(t("GET", "/pet/42/").as_deref(), Some("/pet/{petId}"));
    assert!(
        matches!(spec.match_request("GET", "/pet/1"), RouteMatch::Operation(op) if op.pointer == "#/paths/~1pet~1{petId}/get")
    );
    assert_eq!(
        spec.match_request("PATCH", "/pet/1"),
        RouteMatch::MethodNotDocumented {
            template: "/pet/{petId}"
        }
    );
    assert_eq!(spec.match_request("GET", "/nope/1"), RouteMatch::NoPath);
    assert_eq!(spec.match_request("GET", "/pet/1/2/3"), RouteMatch::NoPath);
    let get = spec.operation("GET", "/pet/{petId}").unwrap();
    assert!(get.documents_status(200) && get.documents_status(404));
    let find = spec.operation("GET", "/pet/findByStatus").unwrap();
    assert!(
        find.documents_status(599),
        "the fixture has default responses"
    );
}

/// An extra check against a spec not written for these tests: the Swagger Petstore, when
/// `CLIENTELE_PETSTORE_SPEC` names a copy of it. The repository's own tests never reach outside
/// the clone, so without the variable this is skipped.
#[test]
fn the_swagger_petstore_loads_when_present() {
    let Some(path) = std::env::var_os("CLIENTELE_PETSTORE_SPEC").map(std::path::PathBuf::from)
    else {
        eprintln!("skipped: set CLIENTELE_PETSTORE_SPEC to a copy of the Swagger Petstore spec");
        return;
    };
    let spec = Spec::load(&path).unwrap();
    assert_eq!(spec.base_paths, vec!["/api/v3".to_string()]);
    assert!(spec.operations.len() >= 19, "{}", spec.operations.len());
    let t = |m: &str, p: &str| spec.match_request(m, p).template().map(str::to_string);
    assert_eq!(t("GET", "/api/v3/pet/42").as_deref(), Some("/pet/{petId}"));
    assert_eq!(
        t("POST", "/pet/42/uploadImage").as_deref(),
        Some("/pet/{petId}/uploadImage")
    );
}

#[test]
fn loads_json_and_3_1_with_refs_across_files() {
    let dir = temp_dir("refs");
    std::fs::write(
        dir.join("common.yaml"),
        "responses:\n  NotFound:\n    description: nope\nparams:\n  id: {name: id, in: path, required: true, schema: {type: string}}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("items.json"),
        r#"{"get": {"operationId": "getItem", "deprecated": true, "x-replaced-by": "GET /v2/items/{id}",
             "parameters": [{"$ref": "common.yaml#/params/id"}],
             "responses": {"200": {"description": "ok"}, "404": {"$ref": "common.yaml#/responses/NotFound"}}}}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("api.json"),
        r##"{"openapi": "3.1.0", "info": {"title": "t", "version": "1"},
            "servers": [{"url": "{scheme}://example.com/{base}", "variables": {"scheme": {"default": "https"}, "base": {"default": "v1"}}}],
            "paths": {"/items/{id}": {"$ref": "items.json"},
                      "/v2/items/{id}": {"get": {"responses": {"2XX": {"description": "ok"}}}},
                      "/files/{name}.json": {"get": {"responses": {"200": {"description": "ok"}}}},
                      "/files/{name}": {"get": {"responses": {"200": {"description": "ok"}}}},
                      "/tree": {"get": {"responses": {"200": {"description": "ok", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Node"}}}}}}}},
            "components": {"schemas": {"Node": {"type": "object", "properties": {"children": {"type": "array", "items": {"$ref": "#/components/schemas/Node"}}}}}}}"##,
    )
    .unwrap();
    let spec = Spec::load(&dir.join("api.json")).unwrap();
    assert_eq!(spec.openapi_version, "3.1.0");
    assert_eq!(spec.base_paths, vec!["/v1".to_string()]);
    let item = spec.operation("GET", "/items/{id}").unwrap();
    assert!(item.deprecated);
    assert!(item.documents_status(404) && !item.documents_status(500));
    assert_eq!(
        spec.find("GET /v2/items/{id}").unwrap().template.as_ref(),
        "/v2/items/{id}"
    );
    assert!(
        spec.operation("GET", "/v2/items/{id}")
            .unwrap()
            .documents_status(204)
    );
    assert_eq!(spec.find("getItem").unwrap().route(), "GET /items/{id}");
    let t = |p: &str| spec.match_request("GET", p).template().map(str::to_string);
    assert_eq!(t("/v1/items/x").as_deref(), Some("/items/{id}"));
    assert_eq!(t("/files/a.json").as_deref(), Some("/files/{name}.json"));
    assert_eq!(t("/files/a.txt").as_deref(), Some("/files/{name}"));
    assert_eq!(spec.hash.len(), 64);
}

#[test]
fn bad_specs_name_the_file_and_the_place() {
    let dir = temp_dir("bad");
    let err = Spec::load(&dir.join("missing.yaml"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("missing.yaml") && err.contains("cannot read"),
        "{err}"
    );

    std::fs::write(dir.join("broken.yaml"), "openapi: 3.0.0\npaths: [\n").unwrap();
    let err = Spec::load(&dir.join("broken.yaml"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("broken.yaml") && err.contains("not valid YAML"),
        "{err}"
    );

    std::fs::write(
        dir.join("dangling.yaml"),
        "openapi: 3.0.3\ninfo: {title: t, version: '1'}\npaths:\n  /a:\n    get:\n      responses:\n        '200': {$ref: '#/components/responses/Gone'}\n",
    )
    .unwrap();
    let err = Spec::load(&dir.join("dangling.yaml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("dangling.yaml"), "{err}");
    assert!(err.contains("#/paths/~1a/get/responses/200"), "{err}");
    assert!(err.contains("#/components/responses/Gone"), "{err}");

    std::fs::write(
        dir.join("other.yaml"),
        "openapi: 3.0.3\npaths:\n  /a: {$ref: 'nowhere.yaml#/x'}\n",
    )
    .unwrap();
    let err = Spec::load(&dir.join("other.yaml")).unwrap_err().to_string();
    assert!(
        err.contains("other.yaml: at #/paths/~1a") && err.contains("nowhere.yaml"),
        "{err}"
    );

    std::fs::write(
        dir.join("swagger.json"),
        r#"{"swagger": "2.0", "paths": {}}"#,
    )
    .unwrap();
    let err = Spec::load(&dir.join("swagger.json"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("Swagger 2.0"), "{err}");

    std::fs::write(dir.join("nopath.yaml"), "openapi: 3.0.3\npaths:\n  a: {}\n").unwrap();
    let err = Spec::load(&dir.join("nopath.yaml"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("#/paths/a") && err.contains("start with /"),
        "{err}"
    );

    // 100,000 nested flow sequences (200 KB): the YAML parser would take minutes; refused at
    // once, with the line.
    let n = 100_000;
    std::fs::write(
        dir.join("deep.yaml"),
        format!(
            "openapi: 3.0.3\npaths: {{}}\nx-deep: {}{}\n",
            "[".repeat(n),
            "]".repeat(n)
        ),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let err = Spec::load(&dir.join("deep.yaml")).unwrap_err().to_string();
    assert!(
        err.contains("deep.yaml") && err.contains("nest more than 64 deep at line 3"),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
}

fn event(consumer: &str, method: &str, route: &str, status: u16, ts_ms: i64) -> Event {
    let mut e: Event = serde_json::from_value(serde_json::json!({
        "id": format!("e{ts_ms}{route}{status}"), "ts_ms": ts_ms, "consumer": consumer, "api": "petstore",
        "method": method, "path": route, "route": route, "status": status, "latency_ms": 1.0,
        "request_bytes": 0, "response_bytes": 0, "outcome": "proxied"
    }))
    .unwrap();
    e.consumer = Some(consumer.to_string());
    e
}

#[test]
fn drift_findings_deprecations_and_reload_keep_the_last_good_spec() {
    let dir = temp_dir("drift");
    let original = std::fs::read_to_string(petstore()).unwrap();
    // A variant: findPetsByTags is deprecated in favour of findPetsByStatus.
    let variant = original.replacen(
        "      operationId: findPetsByTags\n",
        "      operationId: findPetsByTags\n      deprecated: true\n      x-replaced-by: findPetsByStatus\n",
        1,
    );
    // And responses without `default`, so undocumented statuses show.
    let variant = variant.replace(DEFAULT_RESPONSE, "");
    assert_ne!(variant, original, "the fixture changed shape");
    let path = dir.join("petstore.yaml");
    std::fs::write(&path, &variant).unwrap();
    let contracts = Contracts::load(&[("petstore".to_string(), path.clone())]).unwrap();
    let now = clientele_core::time::now_ms();
    contracts.observe(&[
        event("acme", "GET", "/pet/findByTags", 200, now - 1000),
        event("acme", "GET", "/pet/findByTags", 200, now - 900),
        event("acme", "GET", "/pet/findByStatus", 200, now - 800),
        event("acme", "GET", "/nope/{id}", 404, now - 700),
        event("initech", "PATCH", "/pet/{petId}", 405, now - 600),
        event("initech", "GET", "/store/inventory", 418, now - 500),
    ]);
    let findings = contracts.findings(now, 3_600_000);
    let kinds: Vec<(FindingKind, &str, &str)> = findings
        .iter()
        .map(|f| {
            (
                f.kind,
                f.consumer.as_deref().unwrap(),
                f.route.as_deref().unwrap(),
            )
        })
        .collect();
    assert!(
        kinds.contains(&(FindingKind::DeprecatedUsage, "acme", "GET /pet/findByTags")),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&(FindingKind::UndocumentedEndpoint, "acme", "GET /nope/{id}")),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&(
            FindingKind::UndocumentedEndpoint,
            "initech",
            "PATCH /pet/{petId}"
        )),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&(
            FindingKind::UndocumentedStatus,
            "initech",
            "GET /store/inventory"
        )),
        "{kinds:?}"
    );
    assert_eq!(findings.len(), 4, "{kinds:?}");
    let dep = findings
        .iter()
        .find(|f| f.kind == FindingKind::DeprecatedUsage)
        .unwrap();
    assert_eq!(dep.evidence["count"], 2);
    assert_eq!(
        dep.evidence["pointer"],
        "#/paths/~1pet~1findByTags/get/deprecated"
    );

    let report = contracts.deprecations(0);
    assert_eq!(report.len(), 1);
    assert_eq!(
        report[0].replaced_by.as_deref(),
        Some("GET /pet/findByStatus")
    );
    let acme = &report[0].consumers[0];
    assert_eq!(
        (acme.consumer.as_str(), acme.calls, acme.replacement_calls),
        ("acme", 2, 1)
    );
    assert!((acme.migration_progress.unwrap() - 1.0 / 3.0).abs() < 1e-9);

    // A broken new version keeps the last good one and says why.
    std::fs::write(&path, "openapi: 3.0.3\npaths: {/a: {$ref: '#/nowhere'}}\n").unwrap();
    let err = contracts.reload("petstore", 7).unwrap_err();
    assert!(
        err.contains("petstore.yaml") && err.contains("keeping the last good spec"),
        "{err}"
    );
    let contract = contracts.api("petstore").unwrap();
    assert!(contract.last_error().is_some());
    assert_eq!(
        contract.route_template("GET", "/pet/1").as_deref(),
        Some("/pet/{petId}")
    );

    // The original spec: findByTags is no longer deprecated (modified); the history grows.
    std::fs::write(&path, &original).unwrap();
    let report = contracts.reload("petstore", 7).unwrap();
    assert!(report.changed);
    // Every operation got its `default` back; findByTags also lost `deprecated`.
    assert_eq!(report.modified.len(), 12, "{:?}", report.modified);
    assert!(report.removed.is_empty());
    assert_eq!(report.impacted_consumers.get("acme"), Some(&3));
    assert_eq!(report.impacted_consumers.get("initech"), Some(&1));
    assert_eq!(contract.history().len(), 2);
    assert!(contract.last_error().is_none());
    assert!(contracts.deprecations(0).is_empty());

    // A schema change alone (Pet gains a required field) is a change to every operation that
    // takes or returns a Pet, and those callers are listed.
    let stricter = original.replacen(
        "        - name\n        - photoUrls\n",
        "        - name\n        - photoUrls\n        - tags\n",
        1,
    );
    assert_ne!(
        stricter, original,
        "the Pet schema's required list was not found"
    );
    std::fs::write(&path, &stricter).unwrap();
    let report = contracts.reload("petstore", 7).unwrap();
    assert!(
        report.modified.contains(&"POST /pet".to_string()),
        "{:?}",
        report.modified
    );
    assert!(
        report.modified.contains(&"GET /pet/{petId}".to_string()),
        "{:?}",
        report.modified
    );
    assert!(
        !report
            .modified
            .contains(&"GET /store/inventory".to_string()),
        "{:?}",
        report.modified
    );
}

/// The fixture with a closed `Pet` schema (`additionalProperties: false`).
fn closed_petstore(name: &str) -> PathBuf {
    let original = std::fs::read_to_string(petstore()).unwrap();
    let closed = original.replacen(
        "    Pet:\n      # tests edit: the schema tests close this object after the next line\n      type: object\n",
        "    Pet:\n      type: object\n      additionalProperties: false\n",
        1,
    );
    assert_ne!(closed, original);
    let dir = temp_dir(name);
    let path = dir.join("petstore.yaml");
    std::fs::write(&path, closed).unwrap();
    path
}

fn sample(method: &str, path: &str, body: Option<&str>, status: u16, resp: Option<&str>) -> Sample {
    let chunk = |b: Option<&str>| match b {
        Some(b) => BodySample::Json(
            b.as_bytes()
                .chunks(7)
                .map(bytes::Bytes::copy_from_slice)
                .collect(),
        ),
        None => BodySample::Skipped,
    };
    Sample {
        api: "petstore".into(),
        consumer: "acme".into(),
        method: method.into(),
        path: path.into(),
        ts_ms: clientele_core::time::now_ms(),
        check_parameters: true,
        request_body: chunk(body),
        status,
        response_body: chunk(resp),
    }
}

fn rules(found: &[(&'static str, validate::Violation)]) -> Vec<(String, String, String)> {
    let mut v: Vec<_> = found
        .iter()
        .map(|(l, v)| (l.to_string(), v.pointer.clone(), v.rule.clone()))
        .collect();
    v.sort();
    v
}

#[test]
fn validator_checks_types_enums_formats_required_and_closed_objects() {
    use serde_json::json;
    let schema = json!({
        "type": "object",
        "required": ["id", "when"],
        "additionalProperties": false,
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "when": {"type": "string", "format": "date-time"},
            "day": {"type": "string", "format": "date"},
            "mail": {"type": "string", "format": "email"},
            "n": {"type": "integer", "format": "int32", "minimum": 0},
            "big": {"type": "integer", "format": "int64"},
            "kind": {"type": "string", "enum": ["a", "b"]},
            "maybe": {"type": "string", "nullable": true},
            "either": {"type": ["string", "null"]},
            "items": {"type": "array", "maxItems": 2, "items": {"type": "object", "required": ["x"], "properties": {"x": {"type": "number"}}}}
        }
    });
    let ok = json!({"id": "123e4567-e89b-12d3-a456-426614174000", "when": "2026-01-01T00:00:00Z",
        "day": "2026-02-28", "mail": "a@b.io", "n": 5, "big": 9_000_000_000_i64, "kind": "a",
        "maybe": null, "either": null, "items": [{"x": 1.5}]});
    assert!(validate::is_valid(&schema, &ok));
    let bad = json!({"id": "nope", "day": "2026-02-30", "mail": "x", "n": 3_000_000_000_i64,
        "big": 1.5, "kind": "c", "maybe": 3, "either": 1, "items": [{"x": "s"}, {}, {"x": 1}],
        "extra": true});
    let mut out = Vec::new();
    validate::validate(&schema, &bad, "", &mut out);
    let got: Vec<(String, String)> = out.into_iter().map(|v| (v.pointer, v.rule)).collect();
    for want in [
        ("/when", "required"),
        ("/id", "format:uuid"),
        ("/day", "format:date"),
        ("/mail", "format:email"),
        ("/n", "format:int32"),
        ("/big", "type"),
        ("/kind", "enum"),
        ("/maybe", "type"),
        ("/either", "type"),
        ("/items", "maxItems"),
        ("/items/0/x", "type"),
        ("/items/1/x", "required"),
        ("/extra", "additionalProperties"),
    ] {
        assert!(
            got.contains(&(want.0.to_string(), want.1.to_string())),
            "{want:?} not in {got:?}"
        );
    }
}

#[test]
fn samples_are_checked_against_the_operation_and_become_findings_per_consumer() {
    let contracts = Contracts::load(&[("petstore".into(), closed_petstore("schema"))]).unwrap();
    // A valid body, then a body missing a required field with a wrong enum and an unknown field.
    let good = r#"{"name": "rex", "photoUrls": [], "status": "sold", "category": {"id": 1, "name": "dogs"}}"#;
    assert!(
        contracts
            .check_sample(&sample("POST", "/pet", Some(good), 200, None))
            .is_empty()
    );
    let bad = r#"{"photoUrls": [], "status": "lost", "colour": "red"}"#;
    let found = contracts.check_sample(&sample("POST", "/api/v1/pet", Some(bad), 200, None));
    assert_eq!(
        rules(&found),
        vec![
            (
                "request".into(),
                "/colour".into(),
                "additionalProperties".into()
            ),
            ("request".into(), "/name".into(), "required".into()),
            ("request".into(), "/status".into(), "enum".into()),
        ]
    );
    // Parameters: a non-integer path id, a wrong enum in the query, a missing body.
    let found = contracts.check_sample(&sample("GET", "/pet/abc", None, 200, None));
    assert_eq!(
        rules(&found),
        vec![("parameter".into(), "/path/petId".into(), "type".into())]
    );
    let found = contracts.check_sample(&sample(
        "GET",
        "/pet/findByStatus?status=lost",
        None,
        200,
        None,
    ));
    assert_eq!(
        rules(&found),
        vec![("parameter".into(), "/query/status".into(), "enum".into())]
    );
    let found = contracts.check_sample(&sample("PUT", "/pet", Some(""), 200, None));
    assert_eq!(
        rules(&found),
        vec![("request".into(), "".into(), "required".into())]
    );
    // A response that breaks the schema; broken JSON.
    let found = contracts.check_sample(&sample(
        "GET",
        "/pet/7",
        None,
        200,
        Some(r#"{"id": "seven", "name": "rex", "photoUrls": []}"#),
    ));
    assert_eq!(
        rules(&found),
        vec![("response".into(), "/id".into(), "type".into())]
    );
    let found = contracts.check_sample(&sample("POST", "/pet", Some("{"), 200, None));
    assert_eq!(
        rules(&found),
        vec![("request".into(), "".into(), "json".into())]
    );

    let findings = contracts.findings(clientele_core::time::now_ms(), 3_600_000);
    let schema: Vec<&Finding> = findings
        .iter()
        .filter(|f| f.kind == FindingKind::SchemaViolation)
        .collect();
    let post = schema
        .iter()
        .find(|f| f.route.as_deref() == Some("POST /pet"))
        .unwrap();
    assert_eq!(post.consumer.as_deref(), Some("acme"));
    let pointers: Vec<&str> = post.evidence["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["pointer"].as_str().unwrap())
        .collect();
    assert!(
        pointers.contains(&"/name") && pointers.contains(&"/status"),
        "{pointers:?}"
    );
    assert!(post.evidence["first_seen"].is_string() && post.evidence["count"].as_u64() == Some(4));
    let get = schema
        .iter()
        .find(|f| f.route.as_deref() == Some("GET /pet/{petId}"))
        .unwrap();
    assert_eq!(get.evidence["violations"].as_array().unwrap().len(), 2);
    assert_eq!(
        contracts
            .validation
            .checked
            .load(std::sync::atomic::Ordering::Relaxed),
        7
    );
}

#[test]
fn config_deprecations_add_sunsets_and_replacements_and_are_checked_against_the_spec() {
    let contracts = Contracts::load(&[("petstore".into(), petstore())]).unwrap();
    let contract = contracts.api("petstore").unwrap();
    let over = |op: &str, replaced_by: Option<&str>| DeprecationOverride {
        operation: op.into(),
        sunset_ms: Some(clientele_core::time::now_ms() + 86_400_000),
        replaced_by: replaced_by.map(str::to_string),
    };
    let (i, field, reason) = contract
        .set_deprecations(vec![over("GET /pet/nothing", None)])
        .unwrap_err();
    assert_eq!((i, field), (0, "operation"));
    assert!(
        reason.contains("GET /pet/nothing is not an operation"),
        "{reason}"
    );
    let (_, field, _) = contract
        .set_deprecations(vec![over("GET /pet/findByTags", Some("GET /nope"))])
        .unwrap_err();
    assert_eq!(field, "replaced_by");
    contract
        .set_deprecations(vec![over(
            "GET /pet/findByTags",
            Some("GET /pet/findByStatus"),
        )])
        .unwrap();

    let now = clientele_core::time::now_ms();
    let event = |route: &str| event("acme", "GET", route, 200, now);
    contracts.observe(&[
        event("/pet/findByTags"),
        event("/pet/findByTags"),
        event("/pet/findByTags"),
        event("/pet/findByStatus"),
    ]);
    let report = contracts.deprecations(i64::MIN);
    let dep = report
        .iter()
        .find(|d| d.route == "GET /pet/findByTags")
        .unwrap();
    assert_eq!(dep.source, "config");
    assert!(dep.sunset.is_some());
    assert_eq!(dep.replaced_by.as_deref(), Some("GET /pet/findByStatus"));
    assert_eq!(dep.consumers[0].calls, 3);
    assert_eq!(dep.consumers[0].migration_progress, Some(0.25));
    let findings = contracts.findings(now, 3_600_000);
    let f = findings
        .iter()
        .find(|f| f.kind == FindingKind::DeprecatedUsage)
        .unwrap();
    assert_eq!(f.severity, Severity::Critical, "sunset in a day");
    assert!(f.evidence["sunset"].is_string());
    assert!(f.summary.contains("goes away on"), "{}", f.summary);
}
