//! `clientele import --format envoy`: any line gives an event or a per-line error, never a panic;
//! the event it gives goes through the server's ingest parser without a panic either.
#![no_main]
use libfuzzer_sys::fuzz_target;

mod import_common;

fuzz_target!(|data: &[u8]| {
    import_common::check(data, Some(import_common::logformat::Format::Envoy));
});
