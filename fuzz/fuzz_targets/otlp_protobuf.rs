//! `POST /v1/otlp/v1/traces` as `application/x-protobuf`: the hand-written protobuf reader
//! (included as it is from clientele-api) gives spans or an error, never a panic or a stack
//! overflow, whatever the bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../crates/clientele-api/src/otlp_decode.rs"]
mod otlp_decode;

fuzz_target!(|data: &[u8]| {
    let _ = otlp_decode::traces_protobuf(data);
});
