//! Shared by the `import_*` targets: one access-log line through `clientele import`'s converter
//! (the binary crate's `logformat.rs`, included as it is), then the converted event through the
//! server's ingest parser, which is what the import sends it to.

#[allow(dead_code)]
#[path = "../../crates/clientele/src/logformat.rs"]
pub mod logformat;

use clientele_api::ingest::{TimeBounds, parse_batch};
use logformat::{Format, convert_line};

pub fn check(data: &[u8], format: Option<Format>) {
    let Ok(event) = convert_line(data, format) else {
        return;
    };
    // Every converted line is an object with a stable id (re-imports are idempotent by it).
    let obj = event.as_object().expect("convert_line returns an object");
    assert!(obj.get("id").is_some(), "every converted event has an id");
    // Deterministic: the same line gives the same event, so a re-run stores it once.
    assert_eq!(
        convert_line(data, format).ok().as_ref(),
        Some(&event),
        "conversion is deterministic"
    );
    let line = serde_json::to_vec(&event).expect("a Value always serialises");
    let bounds = TimeBounds {
        min_ms: i64::MIN,
        max_ms: i64::MAX,
    };
    let _ = parse_batch(&line, true, bounds);
}
