//! Reading a spec: YAML or JSON, one file or several joined by local `$ref`s.
//!
//! The document is worked on as a `serde_json::Value` rather than through a typed OpenAPI model:
//! no maintained crate models both 3.0 and 3.1, and matching, drift and deprecation read only a
//! few fields. Every `$ref` (to the same file or to another local file) is replaced by its target,
//! so the rest of the crate never sees one; recursive references (a `Node` schema holding
//! `Node`s) are left as `$ref`s at the point where they would recurse.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// Why a spec could not be used. Every variant names the file and, where there is one, the place
/// in it (a JSON pointer), so the message alone says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{}: cannot read the spec: {source}", file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not valid YAML or JSON: {message}", file.display())]
    Parse { file: PathBuf, message: String },
    #[error("{}: at {pointer}: {reason}", file.display())]
    Invalid {
        file: PathBuf,
        /// JSON pointer of the offending place, `#/paths/~1pet/get` style (`#` = the root).
        pointer: String,
        reason: String,
    },
}

impl SpecError {
    pub(crate) fn invalid(file: &Path, pointer: &str, reason: impl Into<String>) -> SpecError {
        SpecError::Invalid {
            file: file.to_path_buf(),
            pointer: format!("#{pointer}"),
            reason: reason.into(),
        }
    }
}

/// The raw bytes of every file the spec was read from, for the content hash.
pub(crate) struct Loaded {
    pub root: Value,
    pub sources: Vec<(PathBuf, Vec<u8>)>,
}

/// Reads `path` and every local file it references, and inlines every `$ref`.
pub(crate) fn load_document(path: &Path) -> Result<Loaded, SpecError> {
    let mut resolver = Resolver::default();
    let root_file = path.to_path_buf();
    let raw = resolver.file(&root_file)?.clone();
    let mut stack = Vec::new();
    let root = resolver.resolve(&root_file, &raw, "", &mut stack, 0)?;
    let mut sources: Vec<(PathBuf, Vec<u8>)> = resolver.bytes.into_iter().collect();
    sources.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Loaded { root, sources })
}

/// Parses YAML or JSON (JSON is YAML, but the JSON parser gives better messages for it).
pub(crate) fn parse(file: &Path, bytes: &[u8]) -> Result<Value, SpecError> {
    let text = std::str::from_utf8(bytes).map_err(|e| SpecError::Parse {
        file: file.to_path_buf(),
        message: format!("not UTF-8: {e}"),
    })?;
    let looks_json = text.trim_start().starts_with('{')
        || file
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    if looks_json {
        return serde_json::from_str(text).map_err(|e| SpecError::Parse {
            file: file.to_path_buf(),
            message: e.to_string(),
        });
    }
    if let Some(line) = crate::yaml_depth::too_deep(text, crate::yaml_depth::MAX_FLOW_DEPTH) {
        // Refused before the YAML parser, which takes minutes over such nesting.
        return Err(SpecError::Parse {
            file: file.to_path_buf(),
            message: format!(
                "flow collections ([...] or {{...}}) nest more than {} deep at line {line}; no OpenAPI document needs that, so the file is refused unread",
                crate::yaml_depth::MAX_FLOW_DEPTH
            ),
        });
    }
    let yaml: yaml_serde::Value = yaml_serde::from_str(text).map_err(|e| SpecError::Parse {
        file: file.to_path_buf(),
        message: e.to_string(),
    })?;
    yaml_to_json(file, yaml, "")
}

/// YAML allows keys that are not strings (`200:` for a response); JSON and OpenAPI treat them
/// as strings, so they are converted here rather than refused.
fn yaml_to_json(file: &Path, v: yaml_serde::Value, at: &str) -> Result<Value, SpecError> {
    use yaml_serde::Value as Y;
    Ok(match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                serde_json::Number::from_f64(n.as_f64().unwrap_or(0.0))
                    .map(Value::Number)
                    .unwrap_or(Value::Null)
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                out.push(yaml_to_json(file, item, &format!("{at}/{i}"))?);
            }
            Value::Array(out)
        }
        Y::Mapping(map) => {
            let mut out = Map::with_capacity(map.len());
            for (k, v) in map {
                let key = match k {
                    Y::String(s) => s,
                    Y::Number(n) => n.to_string(),
                    Y::Bool(b) => b.to_string(),
                    other => {
                        return Err(SpecError::invalid(
                            file,
                            at,
                            format!("unsupported mapping key {other:?}"),
                        ));
                    }
                };
                let child = yaml_to_json(file, v, &format!("{at}/{}", escape(&key)))?;
                out.insert(key, child);
            }
            Value::Object(out)
        }
        Y::Tagged(t) => yaml_to_json(file, t.value, at)?,
    })
}

/// Escapes one JSON pointer token (RFC 6901).
pub fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// Deep enough for any real spec; a chain longer than this is a reference loop the cycle check
/// could not see (it cannot happen, but a bound turns a bug into an error, not a stack overflow).
const MAX_DEPTH: usize = 256;

#[derive(Default)]
struct Resolver {
    docs: HashMap<PathBuf, Value>,
    bytes: HashMap<PathBuf, Vec<u8>>,
    /// Resolved targets, so a schema referenced from 500 operations is resolved once.
    memo: HashMap<(PathBuf, String), Value>,
}

impl Resolver {
    fn file(&mut self, path: &Path) -> Result<&Value, SpecError> {
        if !self.docs.contains_key(path) {
            let bytes = std::fs::read(path).map_err(|source| SpecError::Read {
                file: path.to_path_buf(),
                source,
            })?;
            let value = parse(path, &bytes)?;
            self.bytes.insert(path.to_path_buf(), bytes);
            self.docs.insert(path.to_path_buf(), value);
        }
        self.docs
            .get(path)
            .ok_or_else(|| SpecError::invalid(path, "", "file vanished while loading"))
    }

    fn resolve(
        &mut self,
        file: &Path,
        value: &Value,
        at: &str,
        stack: &mut Vec<(PathBuf, String)>,
        depth: usize,
    ) -> Result<Value, SpecError> {
        if depth > MAX_DEPTH {
            return Err(SpecError::invalid(file, at, "references nested too deeply"));
        }
        match value {
            Value::Object(map) => {
                if let Some(reference) = map.get("$ref") {
                    let Some(reference) = reference.as_str() else {
                        return Err(SpecError::invalid(file, at, "$ref must be a string"));
                    };
                    return self.follow(file, reference, at, stack, depth);
                }
                let mut out = Map::with_capacity(map.len());
                for (k, v) in map {
                    let child_at = format!("{at}/{}", escape(k));
                    out.insert(
                        k.clone(),
                        self.resolve(file, v, &child_at, stack, depth + 1)?,
                    );
                }
                Ok(Value::Object(out))
            }
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, v) in items.iter().enumerate() {
                    let child_at = format!("{at}/{i}");
                    out.push(self.resolve(file, v, &child_at, stack, depth + 1)?);
                }
                Ok(Value::Array(out))
            }
            other => Ok(other.clone()),
        }
    }

    fn follow(
        &mut self,
        file: &Path,
        reference: &str,
        at: &str,
        stack: &mut Vec<(PathBuf, String)>,
        depth: usize,
    ) -> Result<Value, SpecError> {
        let (file_part, fragment) = reference.split_once('#').unwrap_or((reference, ""));
        if file_part.contains("://") {
            return Err(SpecError::invalid(
                file,
                at,
                format!("$ref {reference:?} is remote; only local files are supported"),
            ));
        }
        let target_file = if file_part.is_empty() {
            file.to_path_buf()
        } else {
            file.parent().unwrap_or(Path::new(".")).join(file_part)
        };
        if !fragment.is_empty() && !fragment.starts_with('/') {
            return Err(SpecError::invalid(
                file,
                at,
                format!("$ref {reference:?}: the part after # must be a JSON pointer"),
            ));
        }
        let key = (target_file.clone(), fragment.to_string());
        if stack.contains(&key) {
            // A recursive structure: keep the reference instead of unrolling it forever.
            let mut map = Map::new();
            map.insert("$ref".into(), Value::String(reference.to_string()));
            return Ok(Value::Object(map));
        }
        if let Some(done) = self.memo.get(&key) {
            return Ok(done.clone());
        }
        let doc = match self.file(&target_file) {
            Ok(doc) => doc,
            Err(SpecError::Read { source, .. }) => {
                return Err(SpecError::invalid(
                    file,
                    at,
                    format!(
                        "$ref {reference:?}: cannot read {}: {source}",
                        target_file.display()
                    ),
                ));
            }
            Err(e) => return Err(e),
        };
        let mut target = doc;
        for token in fragment.split('/').skip(1) {
            let token = unescape(token);
            let next = match target {
                Value::Object(map) => map.get(&token),
                Value::Array(items) => token.parse::<usize>().ok().and_then(|i| items.get(i)),
                _ => None,
            };
            let Some(next) = next else {
                return Err(SpecError::invalid(
                    file,
                    at,
                    format!(
                        "$ref {reference:?}: {} has nothing at #{fragment}",
                        target_file.display()
                    ),
                ));
            };
            target = next;
        }
        let target = target.clone();
        stack.push(key.clone());
        let resolved = self.resolve(&target_file, &target, fragment, stack, depth + 1);
        stack.pop();
        let resolved = resolved?;
        // A memoised result may keep a `$ref` where its first resolution met a cycle; reusing it
        // elsewhere is still correct (the reference means the same thing everywhere).
        self.memo.insert(key, resolved.clone());
        Ok(resolved)
    }
}
