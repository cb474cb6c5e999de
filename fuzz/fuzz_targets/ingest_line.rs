//! `POST /v1/events` bodies: NDJSON lines and JSON arrays. Never panics; every accepted event
//! is within the documented bounds.
#![no_main]
use clientele_api::ingest::{MAX_BYTES, MAX_COST_USD, TimeBounds, parse_batch};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let bounds = TimeBounds {
        min_ms: i64::MIN,
        max_ms: i64::MAX,
    };
    let ndjson = data.first().is_none_or(|b| *b != b'[');
    if let Ok((events, _)) = parse_batch(data, ndjson, bounds) {
        for e in events {
            assert!(e.request_bytes <= MAX_BYTES && e.response_bytes <= MAX_BYTES);
            assert!((100..=599).contains(&e.status));
            assert!(e.latency_ms.is_finite());
            assert!(
                e.cost_usd
                    .is_none_or(|c| c.is_finite() && c <= MAX_COST_USD)
            );
            assert!(!e.path.contains('\0'));
        }
    }
});
