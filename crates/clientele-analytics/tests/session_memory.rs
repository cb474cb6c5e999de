//! Heap bytes the session table holds per session, measured with a counting global allocator
//! (its own test binary so no other test's allocations interfere). The world is the sparse one
//! of issue 12: every event starts an inferred session, up to `MAX_SESSIONS`.

// A counting allocator must implement `GlobalAlloc`, which is unsafe; it only forwards.
#![allow(unsafe_code)]
#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use clientele_analytics::sessions::{IDLE_GAP_MS, MAX_SESSIONS, SessionTable};
use clientele_core::event::Event;

/// Live heap bytes: the system allocator, counting.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
/// Live allocations: each costs the allocator's own header on top of its bytes.
static BLOCKS: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to `System` unchanged; only the counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        BLOCKS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract for `layout` is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        BLOCKS.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: `ptr` came from `System.alloc` with this `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: as for `dealloc`, and `new_size` is the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn event(ts_ms: i64, consumer: &str, route: &str) -> Event {
    let mut e: Event = serde_json::from_value(serde_json::json!({
        "id": "e", "ts_ms": ts_ms, "consumer": consumer,
        "key_id": null, "api": "ai", "method": "POST", "path": route,
        "route": route, "status": 200, "latency_ms": 1.0,
        "upstream_latency_ms": null, "request_bytes": 1, "response_bytes": 1,
        "client_ip": null, "user_agent": null, "session_id": null, "trace_id": null,
        "outcome": "proxied", "plan": null, "team": null, "use_case": null,
        "model": null, "tokens_in": 10, "tokens_out": 2, "cost_usd": null
    }))
    .unwrap();
    e.call_hash = Some(ts_ms as u64);
    e
}

#[test]
fn single_request_inferred_sessions_are_small() {
    // 2,000 consumers x 20 routes; each consumer's calls an idle gap apart, so every event
    // is a session of its own: 200,000 single-request inferred sessions.
    let consumers: Vec<String> = (0..2_000).map(|i| format!("consumer-{i:04}")).collect();
    let routes: Vec<String> = (0..20).map(|i| format!("/v1/route-{i:02}/items")).collect();
    let per_consumer = MAX_SESSIONS / consumers.len();
    let mut events = Vec::with_capacity(MAX_SESSIONS);
    for (c, name) in consumers.iter().enumerate() {
        for i in 0..per_consumer {
            let ts = i as i64 * (IDLE_GAP_MS + 1) + c as i64;
            events.push(event(ts, name, &routes[(c + i) % routes.len()]));
        }
    }
    let table = SessionTable::default();
    let before = LIVE.load(Ordering::Relaxed);
    let blocks_before = BLOCKS.load(Ordering::Relaxed);
    for chunk in events.chunks(1_000) {
        table.ingest(chunk);
    }
    let held = LIVE.load(Ordering::Relaxed) - before;
    let blocks = BLOCKS.load(Ordering::Relaxed) - blocks_before;
    let per_session = held as f64 / MAX_SESSIONS as f64;
    println!(
        "session table: {} sessions, {:.1} MiB in {blocks} allocations, {per_session:.0} B/session",
        MAX_SESSIONS,
        held as f64 / (1024.0 * 1024.0)
    );
    let all = table.query(i64::MIN, i64::MAX, None, usize::MAX);
    assert_eq!(all.len(), MAX_SESSIONS);
    assert!(all.iter().all(|s| s.inferred && s.requests == 1));
    // Before the compact layout: 582 B and 6 allocations per session; now 265 B and none
    // (consumers and endpoints are interned, the map's slots are the bulk).
    assert!(per_session < 300.0, "{per_session:.0} B/session");
    assert!(
        blocks < 10_000,
        "{blocks} allocations for {MAX_SESSIONS} sessions"
    );
}
