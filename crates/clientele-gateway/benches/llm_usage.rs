//! The cost of reading LLM usage as a response streams: the golden OpenAI chat stream (with its
//! usage chunk) and the Anthropic messages stream fed to `UsageScanner` frame by frame, as the
//! gateway does. Reports ns per frame and per streamed response, and bytes per second.
//!
//! `cargo bench -p clientele-gateway --bench llm_usage` (add `-- 200000` for another count of
//! responses). It reports; it never fails on a time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Instant;

use clientele_gateway::llm::{Flavor, UsageScanner};

const OPENAI: &str = include_str!("../tests/llm/openai_chat_stream_usage.sse");
const ANTHROPIC: &str = include_str!("../tests/llm/anthropic_messages_stream.sse");

/// The stream split at its event boundaries, one frame per SSE event as providers send them.
fn frames(text: &str) -> Vec<&[u8]> {
    text.split_inclusive("\n\n").map(str::as_bytes).collect()
}

fn run(name: &str, text: &str, flavor: Flavor, responses: usize) {
    let frames = frames(text);
    let bytes: usize = frames.iter().map(|f| f.len()).sum();
    let start = Instant::now();
    for _ in 0..responses {
        let mut s = UsageScanner::new(flavor, true);
        for f in &frames {
            s.feed(black_box(f));
        }
        black_box(s.usage());
    }
    let secs = start.elapsed().as_secs_f64();
    let per_response = secs * 1e9 / responses as f64;
    println!(
        "{name}: {} frames, {bytes} bytes per response: {per_response:.0} ns per response, \
         {:.0} ns per frame, {:.0} MB/s",
        frames.len(),
        per_response / frames.len() as f64,
        (bytes * responses) as f64 / secs / 1e6
    );
}

fn main() {
    let responses = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    run("openai chat stream", OPENAI, Flavor::OpenAi, responses);
    run(
        "anthropic messages stream",
        ANTHROPIC,
        Flavor::Anthropic,
        responses,
    );
}
