//! A linear pre-scan of YAML text for deeply nested flow collections (`[[[...]]]`, `{a: {b:
//! ...}}`), run before the YAML parser.
//!
//! The parser refuses such documents in the end, but in more than quadratic time: 8,000 levels
//! (16 KB) take 0.4 s and 100,000 more than a minute (upstream yaml/yaml-serde#1). No OpenAPI
//! document nests flow collections more than a few levels, so anything past [`MAX_FLOW_DEPTH`]
//! is refused here, in one pass, with its line.
//!
//! Only what can open a flow collection is tracked, so brackets in text are not counted: in
//! block context a collection opens only where a value starts (a line's first token, after
//! `key: `, `- ` or `? `, past any anchor or tag), and the lines of block scalars (`|`, `>`)
//! and comments are skipped; inside a collection, quoted scalars are skipped.

/// Deeper nesting than this is refused.
pub(crate) const MAX_FLOW_DEPTH: usize = 64;

#[derive(Clone, Copy, PartialEq)]
enum Quote {
    None,
    Single,
    Double,
}

/// The 1-based line on which flow collections nest deeper than `limit`, if any.
pub(crate) fn too_deep(text: &str, limit: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut quote = Quote::None;
    // Indentation of the line that introduced a block scalar: its content is the following
    // lines indented further (or blank).
    let mut block_scalar: Option<usize> = None;
    for (n, line) in text.lines().enumerate() {
        let indent = line.len() - line.trim_start_matches(' ').len();
        if let Some(parent) = block_scalar {
            if line.trim().is_empty() || indent > parent {
                continue;
            }
            block_scalar = None;
        }
        let bytes = line.as_bytes();
        let mut i = indent;
        // In block context: whether the next token starts a value.
        let mut value_start = true;
        while i < bytes.len() {
            let b = bytes[i];
            match quote {
                Quote::Single => {
                    if b == b'\'' {
                        // '' is an escaped quote inside a single-quoted scalar.
                        if bytes.get(i + 1) == Some(&b'\'') {
                            i += 1;
                        } else {
                            quote = Quote::None;
                            value_start = false;
                        }
                    }
                    i += 1;
                    continue;
                }
                Quote::Double => {
                    if b == b'\\' {
                        i += 2;
                        continue;
                    }
                    if b == b'"' {
                        quote = Quote::None;
                        value_start = false;
                    }
                    i += 1;
                    continue;
                }
                Quote::None => {}
            }
            let prev_space = i == 0 || matches!(bytes[i - 1], b' ' | b'\t');
            if b == b'#' && prev_space {
                break; // a comment runs to the end of the line
            }
            if depth > 0 {
                match b {
                    b'[' | b'{' => {
                        depth += 1;
                        if depth > limit {
                            return Some(n + 1);
                        }
                    }
                    b']' | b'}' => depth -= 1,
                    b'\'' if prev_space || after_flow_indicator(bytes, i) => quote = Quote::Single,
                    b'"' if prev_space || after_flow_indicator(bytes, i) => quote = Quote::Double,
                    _ => {}
                }
                i += 1;
                if depth == 0 {
                    value_start = false;
                }
                continue;
            }
            // Block context.
            match b {
                b' ' | b'\t' => {}
                b'[' | b'{' if value_start => {
                    depth = 1;
                    if depth > limit {
                        return Some(n + 1);
                    }
                }
                b'\'' if value_start => quote = Quote::Single,
                b'"' if value_start => quote = Quote::Double,
                b'|' | b'>' if value_start => {
                    block_scalar = Some(indent);
                    break;
                }
                b'&' | b'!' if value_start => {
                    // An anchor or a tag: the value starts after it.
                    while i < bytes.len() && bytes[i] != b' ' {
                        i += 1;
                    }
                    continue;
                }
                b'-' | b'?' if value_start && matches!(bytes.get(i + 1), None | Some(b' ')) => {}
                b':' if matches!(bytes.get(i + 1), None | Some(b' ' | b'\t')) => value_start = true,
                _ => value_start = false,
            }
            i += 1;
        }
        // A plain or quoted scalar may continue on the next line; a flow collection may too.
    }
    None
}

/// Whether the byte before `i` is a flow indicator, where a quoted scalar may start.
fn after_flow_indicator(bytes: &[u8], i: usize) -> bool {
    i > 0 && matches!(bytes[i - 1], b'[' | b'{' | b',' | b':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_flow_nesting_is_found_in_linear_time() {
        let n = 200_000;
        let text = format!("a: {}{}\n", "[".repeat(n), "]".repeat(n));
        let started = std::time::Instant::now();
        assert_eq!(too_deep(&text, MAX_FLOW_DEPTH), Some(1));
        // Stops at the limit: far from the parser's minute.
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        let text = format!("a:\n  b: {}1{}\n", "{x: ".repeat(100), "}".repeat(100));
        assert_eq!(too_deep(&text, MAX_FLOW_DEPTH), Some(2));
        let text = format!("- {}\n", "[".repeat(70));
        assert_eq!(too_deep(&text, MAX_FLOW_DEPTH), Some(1));
    }

    #[test]
    fn brackets_in_text_are_not_nesting() {
        let many = "[".repeat(100);
        let texts = [
            // A plain scalar with brackets inside it.
            format!("description: see {many} here\n"),
            // Quoted scalars, in block and flow context.
            format!("a: '{many}'\nb: \"{many}\"\nc: ['{many}', \"{many}\"]\n"),
            // A block scalar's lines, even one that starts with brackets.
            format!("description: |\n  {many}\n  more\n\n  {many}\nnext: 1\n"),
            format!("- >-\n    {many}\n- x\n"),
            // Comments.
            format!("a: 1 # {many}\n# {many}\n"),
            // An escaped quote in a quoted scalar does not end it.
            format!("a: 'it''s {many}'\nb: \"say \\\"{many}\\\"\"\n"),
            // Apostrophes in plain text are not quotes.
            format!("a: it's {many}\n"),
        ];
        for t in &texts {
            assert_eq!(too_deep(t, MAX_FLOW_DEPTH), None, "{t}");
        }
    }

    #[test]
    fn ordinary_specs_pass() {
        for t in [
            include_str!("../tests/fixtures/kennel.yaml"),
            "openapi: 3.0.3\npaths:\n  /a:\n    get:\n      tags: [a, b]\n      parameters:\n        - {name: x, in: query, schema: {type: array, items: {type: string, enum: [\"a\", 'b']}}}\n",
            "a: &anchor [1, [2, [3]]]\nb: !!seq [1]\nc: *anchor\n",
        ] {
            assert_eq!(too_deep(t, MAX_FLOW_DEPTH), None, "{t}");
            assert_eq!(too_deep(t, 4), None, "{t}");
        }
        assert_eq!(
            too_deep("a: [1, [2, [3, [4]]]]\n", 3),
            Some(1),
            "the depth is counted"
        );
    }
}
