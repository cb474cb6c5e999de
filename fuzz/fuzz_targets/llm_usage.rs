//! The gateway's LLM usage scanner (`clientele_gateway::llm::UsageScanner`), which reads
//! provider answers byte by byte as they pass to the client: whatever the bytes, it never
//! panics, and how the answer is split into frames never changes what it reads (usage and
//! model), since a TCP stream can split anywhere.
#![no_main]
use clientele_gateway::llm::{Flavor, UsageScanner};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // First byte: flavor, JSON or SSE, and the chunk size of the split feed.
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let flavor = if mode & 1 == 0 {
        Flavor::OpenAi
    } else {
        Flavor::Anthropic
    };
    let sse = mode & 2 != 0;
    let chunk = usize::from(mode >> 2) + 1;
    let mut whole = UsageScanner::new(flavor, sse);
    whole.feed(body);
    let mut split = UsageScanner::new(flavor, sse);
    for part in body.chunks(chunk) {
        split.feed(part);
    }
    assert_eq!(whole.usage(), split.usage(), "usage depends on the split");
    assert_eq!(whole.model(), split.model(), "model depends on the split");
});
