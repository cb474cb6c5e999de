//! What the gateway reads from an LLM request before forwarding it: a bounded look at small
//! JSON bodies on LLM paths.
//!
//! Budgets reserve an estimate before the request goes upstream, and the estimate needs the
//! model and the most output tokens the request allows (`max_tokens`, `max_completion_tokens`
//! or the Responses API's `max_output_tokens`). An OpenAI stream without a usage chunk can
//! only be estimated, so `stream_options.include_usage` is added to a streamed request that
//! lacks it. Both need the body, which the gateway otherwise streams: only a body that
//! declares a `Content-Length` of at most [`PEEK_MAX`] is read first (it is forwarded as
//! the bytes read); anything else streams as before and is estimated from its length.

use bytes::Bytes;
use clientele_core::limits::{BudgetCharge, Budgets};
use clientele_core::prices::{PriceBook, Tokens};
use serde::Deserialize;
use serde::de::IgnoredAny;

/// The largest request body read before forwarding. Chat requests are mostly a few KiB; a
/// larger one streams and its reservation counts its size instead of its `max_tokens`.
pub const PEEK_MAX: u64 = 256 * 1024;

/// Output tokens reserved for a request that sets no maximum. It only matters near the end
/// of a budget: a request is admitted while anything is left.
pub const DEFAULT_OUTPUT_ESTIMATE: u64 = 1024;

/// Bytes per input token assumed by the estimate (JSON framing included, so it errs high).
const BYTES_PER_TOKEN: u64 = 4;

#[derive(Debug, Default, Deserialize)]
struct Fields {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    max_output_tokens: Option<u64>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    #[allow(dead_code)]
    messages: Option<IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// The facts of one request body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestFacts {
    pub model: Option<String>,
    /// The most output tokens the request allows, when it says.
    pub max_output: Option<u64>,
    pub stream: bool,
    /// `stream_options.include_usage` is already `true`.
    pub includes_usage: bool,
    /// `stream_options` is present (as anything).
    pub has_stream_options: bool,
}

/// Reads the facts of a JSON request body; `None` when it is not a JSON object of that
/// shape (the request is then forwarded untouched and estimated from its size).
pub fn read_facts(body: &[u8]) -> Option<RequestFacts> {
    // JSON is UTF-8 (RFC 8259). serde skips the members it ignores without checking their
    // bytes, so a body with invalid UTF-8 there would read, and be rewritten for usage: such a
    // body is forwarded untouched instead (found by fuzzing, `fuzz/fuzz_targets/llm_request.rs`).
    let text = std::str::from_utf8(body).ok()?;
    let f: Fields = serde_json::from_str(text).ok()?;
    Some(RequestFacts {
        model: f.model,
        max_output: f
            .max_completion_tokens
            .or(f.max_tokens)
            .or(f.max_output_tokens),
        stream: f.stream == Some(true),
        includes_usage: f
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage == Some(true)),
        has_stream_options: f.stream_options.is_some(),
    })
}

/// The body with `stream_options.include_usage: true`, for a streamed OpenAI chat or
/// completions request that does not ask for it; `None` when nothing needs changing.
pub fn with_include_usage(body: &[u8], facts: &RequestFacts) -> Option<Bytes> {
    if !facts.stream || facts.includes_usage {
        return None;
    }
    if !facts.has_stream_options {
        // The common case: add the member before the object's closing brace, leaving every
        // other byte as the client wrote it.
        let end = body.iter().rposition(|b| !b.is_ascii_whitespace())?;
        if body[end] != b'}' {
            return None;
        }
        let empty = body[..end]
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .is_some_and(|i| body[i] == b'{');
        let mut out = Vec::with_capacity(body.len() + 48);
        out.extend_from_slice(&body[..end]);
        if !empty {
            out.push(b',');
        }
        out.extend_from_slice(br#""stream_options":{"include_usage":true}"#);
        out.extend_from_slice(&body[end..]);
        return Some(out.into());
    }
    // `stream_options` is there without `include_usage: true`: rewrite it in the parsed
    // object (rare, so the cost of a full parse is fine).
    let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let options = v.get_mut("stream_options")?;
    if !options.is_object() {
        return None;
    }
    options["include_usage"] = serde_json::Value::Bool(true);
    serde_json::to_vec(&v).ok().map(Bytes::from)
}

/// The charge reserved for a request before it is forwarded: its input estimated from the
/// body's size, its output from its maximum (or [`DEFAULT_OUTPUT_ESTIMATE`]), and their cost
/// at the model's price. An unpriced model reserves no dollars (its cost is unknown).
pub fn estimate(
    facts: Option<&RequestFacts>,
    body_len: Option<u64>,
    prices: &PriceBook,
) -> BudgetCharge {
    let input = body_len.unwrap_or(0).div_ceil(BYTES_PER_TOKEN);
    let output = facts
        .and_then(|f| f.max_output)
        .unwrap_or(DEFAULT_OUTPUT_ESTIMATE);
    let micro_usd = facts
        .and_then(|f| f.model.as_deref())
        .and_then(|m| {
            prices.cost_usd(
                m,
                &Tokens {
                    input,
                    output,
                    ..Tokens::default()
                },
            )
        })
        .map_or(0, Budgets::micro_usd);
    BudgetCharge {
        tokens: input.saturating_add(output),
        micro_usd,
    }
}

/// What a finished request really used, from its event's tokens and cost.
pub fn actual(tokens_in: Option<u64>, tokens_out: Option<u64>, cost: Option<f64>) -> BudgetCharge {
    BudgetCharge {
        tokens: tokens_in
            .unwrap_or(0)
            .saturating_add(tokens_out.unwrap_or(0)),
        micro_usd: cost.map_or(0, Budgets::micro_usd),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_of_openai_anthropic_and_responses_requests() {
        let f = read_facts(br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":40,"stream":true}"#).unwrap();
        assert_eq!(f.model.as_deref(), Some("gpt-4o-mini"));
        assert_eq!(f.max_output, Some(40));
        assert!(f.stream && !f.includes_usage && !f.has_stream_options);
        let f = read_facts(br#"{"model":"o3","max_completion_tokens":7,"max_tokens":9}"#).unwrap();
        assert_eq!(f.max_output, Some(7));
        let f = read_facts(br#"{"model":"gpt-5","input":"x","max_output_tokens":12}"#).unwrap();
        assert_eq!(f.max_output, Some(12));
        assert!(read_facts(b"[1,2]").is_none());
        assert!(read_facts(b"{\"max_tokens\":\"many\"}").is_none());
        assert!(read_facts(b"not json").is_none());
    }

    #[test]
    fn include_usage_is_added_only_when_missing() {
        let body = br#"{"model":"m","stream":true}  "#;
        let f = read_facts(body).unwrap();
        let out = with_include_usage(body, &f).unwrap();
        assert_eq!(
            &out[..],
            br#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}  "#
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);

        let body = br#"{"model":"m","stream":true,"stream_options":{"include_obfuscation":false}}"#;
        let out = with_include_usage(body, &read_facts(body).unwrap()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["stream_options"]["include_obfuscation"], false);

        for body in [
            &br#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#[..],
            br#"{"model":"m","stream":false}"#,
            br#"{"model":"m"}"#,
        ] {
            assert!(with_include_usage(body, &read_facts(body).unwrap()).is_none());
        }
    }

    #[test]
    fn a_body_that_is_not_utf8_is_not_read_nor_rewritten() {
        // The fuzzer's find: invalid UTF-8 inside a member serde ignores.
        let mut body = br#"{"model":"gpt-4o","stream":true,"streak_options":{"includ"#.to_vec();
        body.extend_from_slice(&[0xed, 0xa0, 0x80]);
        body.extend_from_slice(br#"_usage":false},"max_tokens":0}"#);
        assert_eq!(read_facts(&body), None);
        body.retain(|b| b.is_ascii());
        assert!(read_facts(&body).is_some_and(|f| f.stream));
    }

    #[test]
    fn estimates_count_the_body_and_the_maximum() {
        let prices = PriceBook::shipped();
        let f = read_facts(br#"{"model":"gpt-4o-mini","max_tokens":40}"#).unwrap();
        let c = estimate(Some(&f), Some(100), &prices);
        assert_eq!(c.tokens, 25 + 40);
        // gpt-4o-mini: $0.15 in, $0.60 out per million.
        assert_eq!(c.micro_usd, (25.0f64 * 0.15 + 40.0 * 0.60).ceil() as u64);
        let unpriced = read_facts(br#"{"model":"my-own","max_tokens":40}"#).unwrap();
        assert_eq!(estimate(Some(&unpriced), Some(8), &prices).micro_usd, 0);
        assert_eq!(
            estimate(None, None, &prices).tokens,
            DEFAULT_OUTPUT_ESTIMATE
        );
        assert_eq!(actual(Some(3), Some(4), Some(0.000_001_5)).micro_usd, 2);
    }
}
