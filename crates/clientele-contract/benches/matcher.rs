//! Match cost per request on a generated spec the size of GitHub's REST API (~1,000 operations).
//!
//! `cargo bench -p clientele-contract --bench matcher` measures; without `--bench` (as `cargo
//! test --benches` runs it) it does a quick smoke pass so the target cannot rot.

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use clientele_contract::Spec;
use serde_json::{Map, Value, json};

/// GitHub-like shape: ~60 resource families, nested owner/repo parameters, literal
/// sub-resources beside parameters, 1-4 methods per path.
fn generate() -> (Value, Vec<(String, String)>) {
    let mut paths = Map::new();
    let mut requests = Vec::new();
    let methods = ["get", "post", "patch", "delete"];
    let mut ops = 0;
    let mut family = 0;
    while ops < 1000 {
        let f = format!("family{family}");
        let templates = [
            format!("/{f}"),
            format!("/{f}/{{owner}}"),
            format!("/{f}/{{owner}}/{{repo}}"),
            format!("/{f}/{{owner}}/{{repo}}/issues"),
            format!("/{f}/{{owner}}/{{repo}}/issues/{{issue_number}}"),
            format!("/{f}/{{owner}}/{{repo}}/issues/{{issue_number}}/comments"),
            format!("/{f}/{{owner}}/{{repo}}/pulls/{{pull_number}}/reviews/{{review_id}}"),
            format!("/{f}/{{owner}}/{{repo}}/contents/{{path}}"),
            format!("/{f}/{{owner}}/{{repo}}/actions/runs/{{run_id}}/logs"),
            format!("/{f}/search"),
        ];
        for (i, t) in templates.iter().enumerate() {
            let mut item = Map::new();
            for m in methods.iter().take(1 + (i + family) % 4) {
                item.insert(
                    m.to_string(),
                    json!({"responses": {"200": {"description": "ok"}}}),
                );
                ops += 1;
            }
            paths.insert(t.clone(), Value::Object(item));
            let concrete = t
                .replace("{owner}", "octocat")
                .replace("{repo}", "hello-world")
                .replace("{issue_number}", "1347")
                .replace("{pull_number}", "12")
                .replace("{review_id}", "80")
                .replace("{path}", "README.md")
                .replace("{run_id}", "30433642");
            requests.push(("GET".to_string(), format!("/api/v3{concrete}")));
        }
        family += 1;
    }
    requests.push(("GET".to_string(), "/api/v3/unknown/path/here".to_string()));
    let doc = json!({"openapi": "3.1.0", "info": {"title": "gh", "version": "1"},
        "servers": [{"url": "https://api.example.com/api/v3"}], "paths": paths});
    (doc, requests)
}

fn main() {
    let measure = std::env::args().any(|a| a == "--bench");
    let (doc, requests) = generate();
    let started = Instant::now();
    let spec = match Spec::from_value(Path::new("generated.json"), &doc, String::new()) {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!("generated spec refused: {e}");
            std::process::exit(1);
        }
    };
    let build = started.elapsed();
    let rounds = if measure { 2_000 } else { 20 };
    let mut matched = 0usize;
    let started = Instant::now();
    for _ in 0..rounds {
        for (m, p) in &requests {
            if black_box(spec.match_request(black_box(m), black_box(p)))
                .template()
                .is_some()
            {
                matched += 1;
            }
        }
    }
    let elapsed = started.elapsed();
    let per = elapsed.as_nanos() as f64 / (rounds * requests.len()) as f64;
    println!(
        "spec: {} operations, {} paths, indexed in {:.2} ms; match: {:.0} ns per request ({} requests, {} matched)",
        spec.operations.len(),
        requests.len() - 1,
        build.as_secs_f64() * 1000.0,
        per,
        rounds * requests.len(),
        matched
    );
    if matched != rounds * (requests.len() - 1) {
        eprintln!("expected every generated request but the last to match");
        std::process::exit(1);
    }
}
