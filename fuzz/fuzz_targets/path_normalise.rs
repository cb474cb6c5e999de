//! The gateway's path normaliser: never panics, and its output is a fixed point with no empty,
//! `.` or `..` segments.
#![no_main]
use clientele_gateway::path::normalise;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(n) = normalise(raw) {
        let once = n.path.into_owned();
        let twice = normalise(&once).expect("a normal path normalises").path;
        assert_eq!(once, twice, "normalising is idempotent");
        assert!(!once.contains("//"));
        assert!(!once.split('/').any(|s| s == "." || s == ".."));
    }
});
