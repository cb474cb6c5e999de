//! A small JSON Schema validator for the subset OpenAPI request and response schemas use.
//!
//! Hand-written rather than the `jsonschema` crate: that crate compiles a regex engine, an HTTP
//! client for remote `$ref`s and every draft's vocabulary, for checks that here come down to a
//! few hundred lines over an already resolved `serde_json::Value`. What is checked: `type`
//! (3.0 `nullable` and 3.1 type arrays), `enum`, `const`, `required`, `properties`,
//! `additionalProperties` (`false` or a schema), `items`, `allOf`/`anyOf`/`oneOf`, string
//! `minLength`/`maxLength`, number `minimum`/`maximum` (and exclusive forms), array
//! `minItems`/`maxItems`, and the formats `date-time`, `date`, `email`, `uuid`, `int32`,
//! `int64`. `pattern` is not checked (no regex engine). A `$ref` left in place (a recursive
//! schema) is not followed: what lies under it is accepted.

use serde_json::Value;

/// One broken rule: where in the instance (a JSON pointer) and which rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Violation {
    /// JSON pointer in the validated document, e.g. `/category/name`, or `/query/status` for a
    /// parameter; `""` is the whole body.
    pub pointer: String,
    /// The rule: `required`, `type`, `enum`, `format:uuid`, `additionalProperties`, ...
    pub rule: String,
}

/// Most violations reported for one document; a wildly wrong body says enough with these.
const MAX_VIOLATIONS: usize = 20;
/// Deepest nesting followed.
const MAX_DEPTH: usize = 64;

/// Validates `value` against `schema`, appending what is broken to `out`.
pub fn validate(schema: &Value, value: &Value, pointer: &str, out: &mut Vec<Violation>) {
    check(schema, value, pointer, out, 0);
}

/// Whether `value` satisfies `schema` (no report).
pub fn is_valid(schema: &Value, value: &Value) -> bool {
    let mut out = Vec::new();
    check(schema, value, "", &mut out, 0);
    out.is_empty()
}

fn push(out: &mut Vec<Violation>, pointer: &str, rule: impl Into<String>) {
    if out.len() < MAX_VIOLATIONS {
        out.push(Violation {
            pointer: pointer.to_string(),
            rule: rule.into(),
        });
    }
}

fn type_matches(ty: &str, value: &Value) -> bool {
    match ty {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        "number" => value.is_number(),
        "integer" => match value {
            Value::Number(n) => {
                n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
            }
            _ => false,
        },
        _ => true,
    }
}

fn check(schema: &Value, value: &Value, pointer: &str, out: &mut Vec<Violation>, depth: usize) {
    if depth > MAX_DEPTH || out.len() >= MAX_VIOLATIONS {
        return;
    }
    let Some(s) = schema.as_object() else {
        // `false` rejects everything; `true` and anything else accept.
        if schema == &Value::Bool(false) {
            push(out, pointer, "false");
        }
        return;
    };
    if s.contains_key("$ref") {
        return;
    }
    // 3.0 `nullable: true`; 3.1 uses `type: [.., "null"]`.
    if value.is_null() && s.get("nullable").and_then(Value::as_bool) == Some(true) {
        return;
    }
    match s.get("type") {
        Some(Value::String(ty)) if !type_matches(ty, value) => {
            push(out, pointer, "type");
            return;
        }
        Some(Value::Array(types))
            if !types
                .iter()
                .filter_map(Value::as_str)
                .any(|t| type_matches(t, value)) =>
        {
            push(out, pointer, "type");
            return;
        }
        _ => {}
    }
    if let Some(Value::Array(options)) = s.get("enum")
        && !options.iter().any(|o| o == value)
    {
        push(out, pointer, "enum");
    }
    if let Some(c) = s.get("const")
        && c != value
    {
        push(out, pointer, "const");
    }
    if let Some(Value::Array(all)) = s.get("allOf") {
        for sub in all {
            check(sub, value, pointer, out, depth + 1);
        }
    }
    if let Some(Value::Array(any)) = s.get("anyOf")
        && !any.iter().any(|sub| is_valid_at(sub, value, depth))
    {
        push(out, pointer, "anyOf");
    }
    if let Some(Value::Array(one)) = s.get("oneOf") {
        let n = one
            .iter()
            .filter(|sub| is_valid_at(sub, value, depth))
            .count();
        if n != 1 {
            push(out, pointer, "oneOf");
        }
    }
    match value {
        Value::Object(obj) => {
            if let Some(Value::Array(required)) = s.get("required") {
                for name in required.iter().filter_map(Value::as_str) {
                    if !obj.contains_key(name) {
                        push(out, &format!("{pointer}/{}", escape(name)), "required");
                    }
                }
            }
            let props = s.get("properties").and_then(Value::as_object);
            let additional = s.get("additionalProperties");
            for (name, v) in obj {
                let at = format!("{pointer}/{}", escape(name));
                match props.and_then(|p| p.get(name)) {
                    Some(sub) => check(sub, v, &at, out, depth + 1),
                    None => match additional {
                        Some(Value::Bool(false)) => push(out, &at, "additionalProperties"),
                        Some(sub @ Value::Object(_)) => check(sub, v, &at, out, depth + 1),
                        _ => {}
                    },
                }
            }
        }
        Value::Array(items) => {
            let len = items.len() as u64;
            if s.get("minItems")
                .and_then(Value::as_u64)
                .is_some_and(|m| len < m)
            {
                push(out, pointer, "minItems");
            }
            if s.get("maxItems")
                .and_then(Value::as_u64)
                .is_some_and(|m| len > m)
            {
                push(out, pointer, "maxItems");
            }
            if let Some(sub) = s.get("items") {
                for (i, v) in items.iter().enumerate() {
                    check(sub, v, &format!("{pointer}/{i}"), out, depth + 1);
                }
            }
        }
        Value::String(text) => {
            let len = text.chars().count() as u64;
            if s.get("minLength")
                .and_then(Value::as_u64)
                .is_some_and(|m| len < m)
            {
                push(out, pointer, "minLength");
            }
            if s.get("maxLength")
                .and_then(Value::as_u64)
                .is_some_and(|m| len > m)
            {
                push(out, pointer, "maxLength");
            }
            if let Some(format) = s.get("format").and_then(Value::as_str)
                && !string_format_ok(format, text)
            {
                push(out, pointer, format!("format:{format}"));
            }
        }
        Value::Number(n) => {
            let f = n.as_f64().unwrap_or(0.0);
            let bound = |k: &str| s.get(k).and_then(Value::as_f64);
            // 3.0: exclusiveMinimum is a boolean modifier; 3.1: a number.
            let excl = |k: &str| s.get(k).and_then(Value::as_bool) == Some(true);
            if let Some(m) = bound("minimum")
                && (f < m || (excl("exclusiveMinimum") && f == m))
            {
                push(out, pointer, "minimum");
            }
            if let Some(m) = bound("maximum")
                && (f > m || (excl("exclusiveMaximum") && f == m))
            {
                push(out, pointer, "maximum");
            }
            if bound("exclusiveMinimum").is_some_and(|m| f <= m) {
                push(out, pointer, "exclusiveMinimum");
            }
            if bound("exclusiveMaximum").is_some_and(|m| f >= m) {
                push(out, pointer, "exclusiveMaximum");
            }
            match s.get("format").and_then(Value::as_str) {
                Some("int32") if n.as_i64().is_none_or(|i| i32::try_from(i).is_err()) => {
                    push(out, pointer, "format:int32");
                }
                Some("int64") if !(n.is_i64()) => push(out, pointer, "format:int64"),
                _ => {}
            }
        }
        _ => {}
    }
}

fn is_valid_at(schema: &Value, value: &Value, depth: usize) -> bool {
    let mut out = Vec::new();
    check(schema, value, "", &mut out, depth + 1);
    out.is_empty()
}

fn escape(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

/// Whether `text` has the string `format`. Unknown formats pass (they are annotations).
pub fn string_format_ok(format: &str, text: &str) -> bool {
    match format {
        "date-time" => chrono::DateTime::parse_from_rfc3339(text).is_ok(),
        "date" => chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").is_ok() && text.len() == 10,
        "email" => email_ok(text),
        "uuid" => uuid_ok(text),
        _ => true,
    }
}

fn email_ok(text: &str) -> bool {
    let Some((local, domain)) = text.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.is_empty()
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !text.chars().any(char::is_whitespace)
        && !local.contains('@')
}

fn uuid_ok(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Turns a parameter's text into the JSON value its schema expects (`"3"` → `3` for an
/// integer), so the same validator checks parameters and bodies. Text that cannot be converted
/// stays a string and fails the `type` rule.
pub fn coerce_param(schema: &Value, text: &str) -> Value {
    let ty = match schema.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("string"),
        _ => "string",
    };
    match ty {
        "integer" | "number" => text
            .parse::<i64>()
            .map(Value::from)
            .or_else(|_| text.parse::<u64>().map(Value::from))
            .ok()
            .or_else(|| {
                text.parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                    .map(Value::Number)
            })
            .unwrap_or_else(|| Value::String(text.to_string())),
        "boolean" => match text {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => Value::String(text.to_string()),
        },
        "array" => {
            let items = schema.get("items").cloned().unwrap_or(Value::Null);
            Value::Array(
                text.split(',')
                    .map(|part| coerce_param(&items, part))
                    .collect(),
            )
        }
        _ => Value::String(text.to_string()),
    }
}
