//! What the gateway reads from an LLM request before forwarding it
//! (`clientele_gateway::llm_request`): the facts budgets reserve from (model, output limit,
//! streaming) and the rewrite that asks an OpenAI stream for its usage. Whatever the bytes, it
//! never panics; and a rewritten body is still JSON that says exactly what the client's said,
//! plus `stream_options.include_usage: true`, so the upstream gets the request it was sent.
#![no_main]
use clientele_gateway::llm_request::{read_facts, with_include_usage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let Some(facts) = read_facts(body) else {
        return;
    };
    let Some(rewritten) = with_include_usage(body, &facts) else {
        return;
    };
    assert!(facts.stream && !facts.includes_usage, "rewrote a body that needed nothing");
    let again = read_facts(&rewritten).expect("the rewritten body no longer reads");
    assert!(again.includes_usage, "the rewrite did not ask for usage");
    assert_eq!(
        (again.model, again.max_output, again.stream),
        (facts.model, facts.max_output, facts.stream),
        "the rewrite changed what the request says"
    );
    // Every member of the client's object survives with its value.
    let before: serde_json::Value = serde_json::from_slice(body).expect("read_facts parsed it");
    let after: serde_json::Value = serde_json::from_slice(&rewritten).expect("checked above");
    let (Some(before), Some(after)) = (before.as_object(), after.as_object()) else {
        panic!("the rewrite changed the body's shape");
    };
    for (k, v) in before {
        if k != "stream_options" {
            assert_eq!(after.get(k), Some(v), "member {k} changed");
        }
    }
});
