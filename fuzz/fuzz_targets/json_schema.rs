//! The JSON Schema subset validator: a schema (first line) against a value (the rest). Never
//! panics, whatever the schema.
#![no_main]
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let (schema, value) = match data.iter().position(|b| *b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &b"null"[..]),
    };
    let (Ok(schema), Ok(value)) = (
        serde_json::from_slice::<Value>(schema),
        serde_json::from_slice::<Value>(value),
    ) else {
        return;
    };
    let mut out = Vec::new();
    clientele_contract::validate::validate(&schema, &value, "", &mut out);
});
