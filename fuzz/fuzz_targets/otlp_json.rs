//! `POST /v1/otlp/v1/traces` as `application/json` (OTLP JSON): spans or an error, never a
//! panic, whatever the document.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../crates/clientele-api/src/otlp_decode.rs"]
mod otlp_decode;

fuzz_target!(|data: &[u8]| {
    let _ = otlp_decode::traces_json(data);
});
