//! `clientele import` without `--format`: the shape is detected per line (Clientele, nginx,
//! Kong or Envoy); any line gives an event or a per-line error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

mod import_common;

fuzz_target!(|data: &[u8]| {
    import_common::check(data, None);
});
