//! Token usage read from LLM responses as their bytes pass to the client.
//!
//! [`UsageScanner`] is fed every data frame of a response (JSON or an SSE stream) and never
//! holds the body: it walks the bytes once with a small JSON lexer state (inside a string or
//! not, escaped or not, the last short string seen) and only copies the value of a `"usage"`
//! key (an object of a few hundred bytes, at most [`MAX_USAGE_BYTES`]) and of a `"model"` key
//! (at most [`MAX_MODEL_BYTES`]). A `"usage"` literal inside a message cannot be mistaken for
//! the key: JSON escapes the quotes of a string's content, so an unescaped `"usage"` followed by
//! `:` is always a key.
//!
//! The providers' formats (their published API references):
//! - OpenAI chat and completions: `usage {prompt_tokens, completion_tokens,
//!   prompt_tokens_details.cached_tokens, completion_tokens_details.reasoning_tokens}`, in the
//!   body, or in the last chunk of a stream with `stream_options.include_usage`.
//! - OpenAI responses: `usage {input_tokens, output_tokens, input_tokens_details.cached_tokens,
//!   output_tokens_details.reasoning_tokens}`, in `response.completed` when streamed.
//! - Anthropic messages: `usage {input_tokens, output_tokens, cache_read_input_tokens,
//!   cache_creation_input_tokens}`; streamed, `message_start` carries the input side and
//!   `message_delta` the running output count. Anthropic's `input_tokens` leave out cached
//!   tokens; OpenAI's include them. [`Usage`] holds OpenAI's convention (input includes cache).
//!
//! The tool calls a response asks for are fingerprinted on the same pass ([`UsageScanner::tool_print`]),
//! so a session's agent that calls the same tool with the same arguments again is seen as
//! repeating itself even though its requests differ (a chat request carries the whole
//! conversation, which grows every turn). The CRC-32 is fed the raw (still escaped) bytes of
//! the string values of `name` and `arguments` keys (OpenAI: chat `tool_calls[].function`,
//! streamed as `delta.tool_calls` fragments, and the responses API's `function_call` items),
//! or of `name`, `partial_json` and the `input` object (Anthropic `tool_use` blocks and their
//! `input_json_delta`s), in the order they pass, never held. Consecutive values of one kind
//! are fed as one (a tag byte only when the kind changes), so however a provider splits the
//! arguments into fragments the print is the same. Ids (`call_…`, `toolu_…`) are left out:
//! they differ on every answer. A response is a tool call when an arguments value passed;
//! the names alone (the responses API echoes its tool definitions) are not. The same call
//! answered streamed and not streamed has two prints (the bytes differ); an agent keeps one.
//!
//! A stream that ends before its usage (the client left, the upstream broke, or an OpenAI
//! stream without `include_usage`) is counted from what passed: the input the stream had
//! already reported, and one output token per content delta seen, and marked `partial`.

use serde_json::Value;

/// The largest `usage` object copied; a larger one is ignored (real ones are under 1 KiB).
pub const MAX_USAGE_BYTES: usize = 16 * 1024;
/// The longest model name kept.
pub const MAX_MODEL_BYTES: usize = 256;
/// Keys are compared on their first bytes only; the keys we look for are shorter.
const MAX_KEY_BYTES: usize = 16;

/// Which provider's conventions a response follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    OpenAi,
    Anthropic,
}

/// The well-known paths of OpenAI- and Anthropic-compatible APIs, matched on the path's end
/// so `/openai/v1/chat/completions` behind a prefix is found too.
pub fn flavor_of_path(path: &str) -> Option<Flavor> {
    const OPENAI: [&str; 4] = [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/responses",
        "/v1/embeddings",
    ];
    let path = path.trim_end_matches('/');
    if path.ends_with("/v1/messages") {
        Some(Flavor::Anthropic)
    } else if OPENAI.iter().any(|p| path.ends_with(p)) {
        Some(Flavor::OpenAi)
    } else {
        None
    }
}

/// Tokens of one response, in OpenAI's convention: `input` includes `cache_read` and
/// `cache_write`, `output` includes `reasoning`. The parts are `None` when the provider did
/// not report them (OpenAI reports no cache writes, Anthropic no reasoning tokens), which
/// the event keeps apart from a reported 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    pub cache_read: Option<u64>,
    pub cache_write: Option<u64>,
    pub reasoning: Option<u64>,
    /// The response ended before the provider reported its final usage; the figures are what
    /// had passed (output estimated from the deltas seen).
    pub partial: bool,
    /// The provider reported an error in the body or stream.
    pub error: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Nothing in particular: lexing.
    Nothing,
    /// A key we want was just closed; waiting for its `:`.
    Colon(Want),
    /// After the `:`; waiting for the value's first byte.
    Value(Want),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Usage,
    Model,
    Error,
    /// A tool's name: a string hashed into the tool print.
    ToolName,
    /// A tool call's arguments (or a fragment of them): a string hashed into the tool print.
    ToolArgs,
    /// Anthropic's `input` object, hashed whole into the tool print.
    ToolInput,
}

/// What the tool print was last fed: a tag byte is hashed when it changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ToolPart {
    None,
    Name,
    Args,
}

/// The per-response scanner. Its memory is bounded by [`MAX_USAGE_BYTES`] plus
/// [`MAX_MODEL_BYTES`] whatever the body's size.
#[derive(Debug)]
pub struct UsageScanner {
    flavor: Flavor,
    /// In an SSE stream a raw newline ends any JSON value (JSON strings cannot hold one), so a
    /// malformed event cannot derail the lexer for the rest of the stream.
    sse: bool,
    in_string: bool,
    escaped: bool,
    /// The first bytes of the string being lexed, and whether it was longer.
    key: [u8; MAX_KEY_BYTES],
    key_len: usize,
    key_long: bool,
    expect: Expect,
    /// The `usage` object being copied, and its brace depth.
    capture: Vec<u8>,
    depth: u32,
    capturing: bool,
    /// The model string being copied.
    model_buf: Option<Vec<u8>>,
    model: Option<String>,
    /// Fields reported so far (later reports overwrite earlier ones).
    input: Option<u64>,
    output: Option<u64>,
    cache_read: Option<u64>,
    cache_write: Option<u64>,
    reasoning: Option<u64>,
    /// Whether a report carried the output side (OpenAI's final usage, Anthropic's
    /// `message_delta`), which is what makes the count complete.
    final_seen: bool,
    /// `usage` objects read: in an Anthropic stream the first is `message_start`'s.
    reports: u32,
    deltas: u64,
    error: bool,
    /// The tool calls' fingerprint (see the module docs): the hasher, the part last fed,
    /// whether the string being lexed is hashed, the brace depth of an `input` object being
    /// hashed (0: none), and whether arguments were seen.
    tools: crc32fast::Hasher,
    tool_part: ToolPart,
    tool_string: bool,
    tool_depth: u32,
    tool_seen: bool,
}

impl UsageScanner {
    pub fn new(flavor: Flavor, sse: bool) -> UsageScanner {
        UsageScanner {
            flavor,
            sse,
            in_string: false,
            escaped: false,
            key: [0; MAX_KEY_BYTES],
            key_len: 0,
            key_long: false,
            expect: Expect::Nothing,
            capture: Vec::new(),
            depth: 0,
            capturing: false,
            model_buf: None,
            model: None,
            input: None,
            output: None,
            cache_read: None,
            cache_write: None,
            reasoning: None,
            final_seen: false,
            reports: 0,
            deltas: 0,
            error: false,
            tools: crc32fast::Hasher::new(),
            tool_part: ToolPart::None,
            tool_string: false,
            tool_depth: 0,
            tool_seen: false,
        }
    }

    /// Reads one frame's bytes.
    pub fn feed(&mut self, data: &[u8]) {
        for &b in data {
            self.byte(b);
        }
    }

    #[inline]
    fn byte(&mut self, b: u8) {
        if self.sse && b == b'\n' {
            self.reset_line();
            return;
        }
        if self.capturing {
            self.capture_byte(b);
            return;
        }
        if self.tool_depth > 0 {
            // Anthropic's `input` object: every byte to its closing brace; braces inside
            // strings do not count (the lexer's string state is still the previous byte's).
            self.tools.update(&[b]);
            if !self.in_string {
                match b {
                    b'{' => self.tool_depth += 1,
                    b'}' => self.tool_depth -= 1,
                    _ => {}
                }
            }
        }
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.in_string = false;
                self.tool_string = false;
                self.string_closed();
                return;
            }
            if self.tool_string {
                self.tools.update(&[b]);
            }
            if let Some(buf) = self.model_buf.as_mut() {
                if buf.len() < MAX_MODEL_BYTES {
                    buf.push(b);
                }
            } else if self.key_len < MAX_KEY_BYTES {
                self.key[self.key_len] = b;
                self.key_len += 1;
            } else {
                self.key_long = true;
            }
            return;
        }
        match (self.expect, b) {
            (_, b' ' | b'\t' | b'\r' | b'\n') => {}
            (Expect::Colon(want), b':') => self.expect = Expect::Value(want),
            (Expect::Value(Want::Usage), b'{') => {
                self.expect = Expect::Nothing;
                self.capturing = true;
                self.depth = 1;
                self.capture.clear();
                self.capture.push(b'{');
            }
            (Expect::Value(Want::Error), b'{') => {
                self.expect = Expect::Nothing;
                self.error = true;
            }
            (Expect::Value(want @ (Want::ToolName | Want::ToolArgs)), b'"') => {
                let part = if want == Want::ToolName {
                    ToolPart::Name
                } else {
                    self.tool_seen = true;
                    ToolPart::Args
                };
                self.tool_feed_part(part);
                self.expect = Expect::Nothing;
                self.in_string = true;
                self.tool_string = true;
                self.key_len = 0;
                self.key_long = false;
            }
            (Expect::Value(Want::ToolInput), b'{') if self.tool_depth == 0 => {
                self.tool_seen = true;
                self.tool_feed_part(ToolPart::Args);
                self.tools.update(b"{");
                self.tool_depth = 1;
                self.expect = Expect::Nothing;
            }
            (Expect::Value(Want::Model), b'"') if self.model.is_none() => {
                self.expect = Expect::Nothing;
                self.in_string = true;
                self.model_buf = Some(Vec::new());
            }
            (_, b'"') => {
                self.expect = Expect::Nothing;
                self.in_string = true;
                self.key_len = 0;
                self.key_long = false;
            }
            _ => self.expect = Expect::Nothing,
        }
    }

    fn string_closed(&mut self) {
        if let Some(buf) = self.model_buf.take() {
            if !buf.is_empty() {
                self.model = Some(String::from_utf8_lossy(&buf).into_owned());
            }
            return;
        }
        if self.key_long {
            return;
        }
        self.expect = match &self.key[..self.key_len] {
            b"usage" => Expect::Colon(Want::Usage),
            b"model" => Expect::Colon(Want::Model),
            b"error" => Expect::Colon(Want::Error),
            b"name" => Expect::Colon(Want::ToolName),
            b"arguments" if self.flavor == Flavor::OpenAi => Expect::Colon(Want::ToolArgs),
            b"partial_json" if self.flavor == Flavor::Anthropic => Expect::Colon(Want::ToolArgs),
            b"input" if self.flavor == Flavor::Anthropic => Expect::Colon(Want::ToolInput),
            b"delta" => {
                // Every streamed content chunk carries a `delta` key (chat chunks, Anthropic's
                // content_block_delta, the responses API's `*.delta` events): the estimate of
                // output when the stream ends before its usage.
                self.deltas += 1;
                Expect::Nothing
            }
            _ => Expect::Nothing,
        };
    }

    fn capture_byte(&mut self, b: u8) {
        if self.capture.len() >= MAX_USAGE_BYTES {
            // Not a usage object we know; give it up and go on lexing after it.
            self.capturing = false;
            self.capture = Vec::new();
            self.in_string = false;
            self.escaped = false;
            return;
        }
        self.capture.push(b);
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.in_string = false;
            }
            return;
        }
        match b {
            b'"' => self.in_string = true,
            b'{' => self.depth += 1,
            b'}' => {
                self.depth -= 1;
                if self.depth == 0 {
                    self.capturing = false;
                    let captured = std::mem::take(&mut self.capture);
                    if let Ok(v) = serde_json::from_slice::<Value>(&captured) {
                        self.absorb(&v);
                    }
                    self.capture = captured;
                    self.capture.clear();
                }
            }
            _ => {}
        }
    }

    fn reset_line(&mut self) {
        self.in_string = false;
        self.escaped = false;
        self.expect = Expect::Nothing;
        self.capturing = false;
        self.capture.clear();
        self.tool_string = false;
        self.tool_depth = 0;
        if self.model_buf.take().is_some() {
            // A model string cut by a line end was not a model.
        }
    }

    /// Folds one `usage` object in; fields present overwrite earlier reports.
    fn absorb(&mut self, v: &Value) {
        let get = |v: &Value, path: &[&str]| -> Option<u64> {
            let mut cur = v;
            for p in path {
                cur = cur.get(p)?;
            }
            cur.as_u64()
        };
        self.reports = self.reports.saturating_add(1);
        match self.flavor {
            Flavor::OpenAi => {
                let input = get(v, &["prompt_tokens"]).or_else(|| get(v, &["input_tokens"]));
                let output = get(v, &["completion_tokens"]).or_else(|| get(v, &["output_tokens"]));
                let cached = get(v, &["prompt_tokens_details", "cached_tokens"])
                    .or_else(|| get(v, &["input_tokens_details", "cached_tokens"]));
                let reasoning = get(v, &["completion_tokens_details", "reasoning_tokens"])
                    .or_else(|| get(v, &["output_tokens_details", "reasoning_tokens"]));
                // Embeddings report prompt and total tokens only: the answer is complete.
                let embeddings = output.is_none() && get(v, &["total_tokens"]).is_some();
                set(&mut self.input, input);
                set(&mut self.output, output);
                set(&mut self.cache_read, cached);
                set(&mut self.reasoning, reasoning);
                if output.is_some() || embeddings {
                    self.final_seen = true;
                }
            }
            Flavor::Anthropic => {
                set(&mut self.input, get(v, &["input_tokens"]));
                set(&mut self.cache_read, get(v, &["cache_read_input_tokens"]));
                set(
                    &mut self.cache_write,
                    get(v, &["cache_creation_input_tokens"]),
                );
                let output = get(v, &["output_tokens"]);
                set(&mut self.output, output);
                // `message_start` reports output_tokens too (the first token or so); only a
                // non-streamed body or a later report (`message_delta`'s) make it final.
                if output.is_some() && (!self.sse || self.reports >= 2) {
                    self.final_seen = true;
                }
            }
        }
    }

    /// Feeds the tag of `part` when the print's last part was another one.
    fn tool_feed_part(&mut self, part: ToolPart) {
        if self.tool_part != part {
            self.tool_part = part;
            self.tools.update(if part == ToolPart::Name {
                b"\0n"
            } else {
                b"\0a"
            });
        }
    }

    /// The fingerprint of the tool calls the response asked for (names and arguments, in
    /// order), or `None` when it asked for none.
    pub fn tool_print(&self) -> Option<u32> {
        self.tool_seen.then(|| self.tools.clone().finalize())
    }

    /// The model the response named, if any.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// The usage read so far; `None` when the response carried nothing countable (not an LLM
    /// answer, or one cut before any usage or content).
    pub fn usage(&self) -> Option<Usage> {
        if self.input.is_none() && self.output.is_none() && self.deltas == 0 {
            return None;
        }
        let input = match self.flavor {
            Flavor::OpenAi => self.input.unwrap_or(0),
            Flavor::Anthropic => self
                .input
                .unwrap_or(0)
                .saturating_add(self.cache_read.unwrap_or(0))
                .saturating_add(self.cache_write.unwrap_or(0)),
        };
        // A part is never more than its whole (a provider's slip would price tokens that
        // were never used).
        let cache_read = self.cache_read.map(|c| c.min(input));
        let cache_write = self
            .cache_write
            .map(|c| c.min(input - cache_read.unwrap_or(0)));
        let partial = !self.final_seen;
        let output = if partial {
            self.output.unwrap_or(0).max(self.deltas)
        } else {
            self.output.unwrap_or(0)
        };
        Some(Usage {
            input,
            output,
            cache_read,
            cache_write,
            reasoning: self.reasoning.map(|r| r.min(output)),
            partial,
            error: self.error,
        })
    }
}

fn set(slot: &mut Option<u64>, v: Option<u64>) {
    if v.is_some() {
        *slot = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden(name: &str) -> String {
        let path = format!("{}/tests/llm/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// Scans the file whole and in every chunk size from 1 to 17 bytes: frames split keys,
    /// numbers and lines anywhere, and the answer must not depend on where.
    fn scan(name: &str, flavor: Flavor, sse: bool) -> (Option<Usage>, Option<String>) {
        let text = golden(name);
        let mut whole = UsageScanner::new(flavor, sse);
        whole.feed(text.as_bytes());
        let expected = (whole.usage(), whole.model().map(str::to_string));
        for size in 1..=17 {
            let mut s = UsageScanner::new(flavor, sse);
            for chunk in text.as_bytes().chunks(size) {
                s.feed(chunk);
            }
            assert_eq!(
                (s.usage(), s.model().map(str::to_string)),
                expected,
                "{name} in chunks of {size}"
            );
        }
        expected
    }

    fn full(
        input: u64,
        output: u64,
        cache_read: Option<u64>,
        cache_write: Option<u64>,
        reasoning: Option<u64>,
    ) -> Usage {
        Usage {
            input,
            output,
            cache_read,
            cache_write,
            reasoning,
            partial: false,
            error: false,
        }
    }

    #[test]
    fn openai_chat_json() {
        let (u, m) = scan("openai_chat.json", Flavor::OpenAi, false);
        assert_eq!(u, Some(full(1_234, 56, Some(1_024), None, Some(0))));
        assert_eq!(m.as_deref(), Some("gpt-4o-2024-08-06"));
    }

    #[test]
    fn openai_chat_stream_with_usage() {
        let (u, m) = scan("openai_chat_stream_usage.sse", Flavor::OpenAi, true);
        assert_eq!(u, Some(full(19, 10, Some(0), None, Some(0))));
        assert_eq!(m.as_deref(), Some("gpt-4o-mini-2024-07-18"));
    }

    #[test]
    fn openai_chat_stream_without_usage_is_estimated_and_partial() {
        let (u, _) = scan("openai_chat_stream_no_usage.sse", Flavor::OpenAi, true);
        let u = u.unwrap();
        assert!(u.partial);
        // Five chunks carry a delta (the role chunk, three content chunks, the finish chunk).
        assert_eq!(u.output, 5);
        assert_eq!(u.input, 0);
    }

    #[test]
    fn openai_responses_stream_with_reasoning() {
        let (u, m) = scan("openai_responses_stream.sse", Flavor::OpenAi, true);
        assert_eq!(u, Some(full(37, 120, Some(0), None, Some(64))));
        assert_eq!(m.as_deref(), Some("o4-mini-2025-04-16"));
    }

    #[test]
    fn openai_embeddings_json() {
        let (u, m) = scan("openai_embeddings.json", Flavor::OpenAi, false);
        assert_eq!(u, Some(full(8, 0, None, None, None)));
        assert_eq!(m.as_deref(), Some("text-embedding-3-small"));
    }

    #[test]
    fn anthropic_stream_with_cache_tokens() {
        let (u, m) = scan("anthropic_messages_stream.sse", Flavor::Anthropic, true);
        // input 25 + cache read 2048 + cache write 512; output from message_delta.
        assert_eq!(u, Some(full(2_585, 15, Some(2_048), Some(512), None)));
        assert_eq!(m.as_deref(), Some("claude-sonnet-4-5-20250929"));
    }

    #[test]
    fn anthropic_json() {
        let (u, m) = scan("anthropic_messages.json", Flavor::Anthropic, false);
        assert_eq!(u, Some(full(2_095, 503, Some(0), Some(2_000), None)));
        assert_eq!(m.as_deref(), Some("claude-3-5-haiku-20241022"));
    }

    #[test]
    fn anthropic_error_mid_stream_is_partial() {
        let (u, _) = scan("anthropic_error_mid_stream.sse", Flavor::Anthropic, true);
        let u = u.unwrap();
        assert!(u.partial && u.error, "{u:?}");
        assert_eq!(u.input, 410);
        // message_start's output_tokens (1) and two deltas: the larger is kept.
        assert_eq!(u.output, 2);
    }

    #[test]
    fn a_cut_stream_counts_what_passed() {
        let text = golden("anthropic_messages_stream.sse");
        let cut = text.find("event: message_delta").unwrap();
        let mut s = UsageScanner::new(Flavor::Anthropic, true);
        s.feed(&text.as_bytes()[..cut]);
        let u = s.usage().unwrap();
        assert!(u.partial);
        assert_eq!(u.input, 2_585);
        assert_eq!(u.output, 3, "three content deltas passed before the cut");
    }

    /// The tool print of `text`, the same whole and in every chunk size from 1 to 17 bytes.
    fn tools_of(text: &str, flavor: Flavor, sse: bool) -> Option<u32> {
        let mut whole = UsageScanner::new(flavor, sse);
        whole.feed(text.as_bytes());
        for size in 1..=17 {
            let mut s = UsageScanner::new(flavor, sse);
            for chunk in text.as_bytes().chunks(size) {
                s.feed(chunk);
            }
            assert_eq!(s.tool_print(), whole.tool_print(), "in chunks of {size}");
        }
        whole.tool_print()
    }

    /// Each tool-call golden file has a print that the same call gives again (with other
    /// ids) and that another argument, or another tool, changes.
    #[test]
    fn tool_calls_are_fingerprinted_by_name_and_arguments() {
        let cases = [
            (
                "openai_chat_tool_calls.json",
                Flavor::OpenAi,
                false,
                "call_9pw1qnYScqvGrCH58HWCvFH6",
            ),
            (
                "openai_chat_stream_tool_calls.sse",
                Flavor::OpenAi,
                true,
                "call_9pw1qnYScqvGrCH58HWCvFH6",
            ),
            (
                "openai_responses_function_call.sse",
                Flavor::OpenAi,
                true,
                "call_Wq3nT8xYz1AbCdEfGhIjKlMn",
            ),
            (
                "anthropic_messages_tool_use.json",
                Flavor::Anthropic,
                false,
                "toolu_01A09q90qw90lq917835lq9",
            ),
            (
                "anthropic_messages_stream_tool_use.sse",
                Flavor::Anthropic,
                true,
                "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
            ),
        ];
        for (name, flavor, sse, id) in cases {
            let text = golden(name);
            assert!(text.contains(id) && text.contains("Par"), "{name}");
            let print = tools_of(&text, flavor, sse);
            assert!(print.is_some(), "{name} asks for a tool call");
            let other_ids = text.replace(id, "call_other0000000000000000000");
            assert_eq!(
                tools_of(&other_ids, flavor, sse),
                print,
                "{name}: ids do not count"
            );
            // "Par" + "is" is split across fragments in the Anthropic stream.
            let other_city = text.replace("Par", "Lyo");
            assert_ne!(
                tools_of(&other_city, flavor, sse),
                print,
                "{name}: arguments count"
            );
            let other_tool = text.replace("get_weather", "get_forecast");
            assert_ne!(
                tools_of(&other_tool, flavor, sse),
                print,
                "{name}: names count"
            );
        }
        // The usage of a tool-call answer is read as before.
        let (u, _) = scan("openai_chat_stream_tool_calls.sse", Flavor::OpenAi, true);
        assert_eq!(u, Some(full(82, 18, Some(0), None, Some(0))));
        let (u, _) = scan(
            "anthropic_messages_stream_tool_use.sse",
            Flavor::Anthropic,
            true,
        );
        assert_eq!(u, Some(full(472, 89, None, None, None)));
    }

    #[test]
    fn answers_without_tool_calls_have_no_tool_print() {
        for (name, flavor, sse) in [
            ("openai_chat.json", Flavor::OpenAi, false),
            ("openai_chat_stream_usage.sse", Flavor::OpenAi, true),
            ("openai_responses_stream.sse", Flavor::OpenAi, true),
            ("anthropic_messages_stream.sse", Flavor::Anthropic, true),
            ("anthropic_messages.json", Flavor::Anthropic, false),
        ] {
            assert_eq!(tools_of(&golden(name), flavor, sse), None, "{name}");
        }
        // Tool definitions echoed without a call (the responses API) are not a call.
        let mut s = UsageScanner::new(Flavor::OpenAi, false);
        s.feed(br#"{"tools":[{"type":"function","name":"get_weather"}],"output":[]}"#);
        assert_eq!(s.tool_print(), None);
        // Arguments quoted in a message's text are not arguments.
        s.feed(br#"{"content":"\"arguments\": \"{}\""}"#);
        assert_eq!(s.tool_print(), None);
    }

    /// A provider may split the arguments into other fragments on another answer: the
    /// print of the chat stream does not depend on where.
    #[test]
    fn streamed_arguments_split_elsewhere_print_the_same() {
        let chunk = |delta: &str| {
            format!(
                "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"tool_calls\":[{delta}]}}}}]}}\n\n"
            )
        };
        let stream = |fragments: &[&str]| {
            let mut text = chunk(
                r#"{"index":0,"id":"call_1","type":"function","function":{"name":"search","arguments":""}}"#,
            );
            for f in fragments {
                text += &chunk(&format!(
                    r#"{{"index":0,"function":{{"arguments":"{f}"}}}}"#
                ));
            }
            text
        };
        let a = tools_of(
            &stream(&[r#"{\"q\":"#, r#"\"rust\"}"#]),
            Flavor::OpenAi,
            true,
        );
        let b = tools_of(
            &stream(&[r#"{\""#, r#"q\":\"ru"#, r#"st\"}"#]),
            Flavor::OpenAi,
            true,
        );
        let c = tools_of(&stream(&[r#"{\"q\":\"rust lang\"}"#]), Flavor::OpenAi, true);
        assert!(a.is_some());
        assert_eq!(a, b);
        assert_ne!(a, c);
        // A name and its arguments are told apart from a longer name without arguments'
        // first bytes.
        let moved = stream(&[r#"{\"q\":"#, r#"\"rust\"}"#]).replace(r#""search""#, r#""search{""#);
        assert_ne!(tools_of(&moved, Flavor::OpenAi, true), a);
    }

    #[test]
    fn usage_inside_content_is_not_a_key() {
        let body = br#"{"model":"gpt-4o","choices":[{"message":{"content":"say \"usage\": {\"prompt_tokens\": 999}"}}],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#;
        let mut s = UsageScanner::new(Flavor::OpenAi, false);
        s.feed(body);
        assert_eq!(s.usage(), Some(full(3, 4, None, None, None)));
    }

    #[test]
    fn not_an_llm_answer_has_no_usage() {
        let mut s = UsageScanner::new(Flavor::OpenAi, false);
        s.feed(br#"{"id":1,"name":"rex"}"#);
        assert_eq!(s.usage(), None);
    }

    #[test]
    fn oversized_usage_is_dropped_and_memory_bounded() {
        let mut s = UsageScanner::new(Flavor::OpenAi, false);
        s.feed(br#"{"usage":{"x":""#);
        s.feed(&vec![b'a'; MAX_USAGE_BYTES * 4]);
        s.feed(br#""},"other":1}"#);
        assert!(s.capture.capacity() <= MAX_USAGE_BYTES * 2);
        assert_eq!(s.usage(), None);
    }

    #[test]
    fn paths() {
        assert_eq!(flavor_of_path("/v1/chat/completions"), Some(Flavor::OpenAi));
        assert_eq!(
            flavor_of_path("/openai/v1/responses/"),
            Some(Flavor::OpenAi)
        );
        assert_eq!(flavor_of_path("/v1/messages"), Some(Flavor::Anthropic));
        assert_eq!(flavor_of_path("/v1/pets"), None);
    }
}
