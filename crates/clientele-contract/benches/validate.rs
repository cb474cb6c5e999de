//! Cost of checking one sampled request body (the Petstore `Pet`, closed) on the validator
//! thread: parse + validate. Run with `cargo bench -p clientele-contract --bench validate`.

use std::hint::black_box;
use std::time::Instant;

use clientele_contract::validate::validate;
use serde_json::{Value, json};

fn main() {
    let measure = std::env::args().any(|a| a == "--bench");
    let schema = json!({
        "type": "object", "required": ["name", "photoUrls"], "additionalProperties": false,
        "properties": {
            "id": {"type": "integer", "format": "int64"},
            "name": {"type": "string"},
            "category": {"type": "object", "properties": {"id": {"type": "integer", "format": "int64"}, "name": {"type": "string"}}},
            "photoUrls": {"type": "array", "items": {"type": "string"}},
            "tags": {"type": "array", "items": {"type": "object", "properties": {"id": {"type": "integer"}, "name": {"type": "string"}}}},
            "status": {"type": "string", "enum": ["available", "pending", "sold"]}
        }
    });
    let body = br#"{"id": 10, "name": "doggie", "category": {"id": 1, "name": "Dogs"}, "photoUrls": ["a", "b"], "tags": [{"id": 1, "name": "t"}], "status": "lost", "extra": 1}"#;
    let rounds = if measure { 200_000 } else { 100 };
    let mut found = 0usize;
    let started = Instant::now();
    for _ in 0..rounds {
        let value: Value = serde_json::from_slice(black_box(body)).unwrap_or(Value::Null);
        let mut out = Vec::new();
        validate(&schema, &value, "", &mut out);
        found += black_box(out).len();
    }
    let per = started.elapsed().as_nanos() as f64 / rounds as f64;
    println!(
        "validate: {:.0} ns per {}-byte body (parse + check), {} violations each",
        per,
        body.len(),
        found / rounds
    );
}
