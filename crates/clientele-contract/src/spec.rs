//! A loaded spec: its operations and the matcher from (method, path) to operation.
//!
//! The matcher is a trie of path segments. At each node literal children are tried before
//! parameter children (so `/pet/findByStatus` wins over `/pet/{petId}`, as OpenAPI requires),
//! with backtracking when a literal branch dead-ends. A match costs one hash lookup per
//! segment in the common case, whatever the number of operations.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::load::{SpecError, escape, load_document};

/// The HTTP methods an OpenAPI path item can hold, in a fixed order (the index is the slot).
pub const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn method_index(method: &str) -> Option<usize> {
    METHODS.iter().position(|m| m.eq_ignore_ascii_case(method))
}

/// One documented operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// Upper case, e.g. `GET`.
    pub method: String,
    /// The path template as written in the spec, e.g. `/pet/{petId}`.
    pub template: Arc<str>,
    /// JSON pointer of the operation in the (resolved) document, e.g. `#/paths/~1pet~1{petId}/get`.
    pub pointer: String,
    pub operation_id: Option<String>,
    pub deprecated: bool,
    /// The `x-replaced-by` extension: `METHOD /template` or an operationId.
    pub replaced_by: Option<String>,
    /// Documented response codes: `200`, `4XX`, ... (`default` is in `has_default`).
    pub statuses: Vec<String>,
    pub has_default: bool,
    /// Path-item and operation parameters (path, query, header), the operation's winning.
    pub parameters: Vec<Parameter>,
    /// The request body, when documented.
    pub request_body: Option<RequestBodySpec>,
    /// JSON response schemas by documented status key (`200`, `4XX`, `default`).
    pub response_schemas: Vec<(String, Value)>,
}

/// One documented parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parameter {
    pub name: String,
    /// `path`, `query`, `header` or `cookie`.
    pub location: String,
    pub required: bool,
    pub schema: Option<Value>,
}

/// A documented request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestBodySpec {
    pub required: bool,
    /// The JSON media type's schema, when the body can be JSON.
    pub json_schema: Option<Value>,
}

/// The schema of the JSON media type in a `content` map (`application/json`, `*+json`).
fn json_schema(content: Option<&Value>) -> Option<Value> {
    let content = content?.as_object()?;
    let media = content.get("application/json").or_else(|| {
        content
            .iter()
            .find(|(k, _)| {
                k.split(';')
                    .next()
                    .is_some_and(|t| t.trim().ends_with("json"))
            })
            .map(|(_, v)| v)
    })?;
    media.get("schema").cloned()
}

fn parameters_of(list: Option<&Value>, into: &mut Vec<Parameter>) {
    for p in list.and_then(Value::as_array).into_iter().flatten() {
        let (Some(name), Some(location)) = (
            p.get("name").and_then(Value::as_str),
            p.get("in").and_then(Value::as_str),
        ) else {
            continue;
        };
        into.retain(|q| !(q.name == name && q.location == location));
        into.push(Parameter {
            name: name.to_string(),
            location: location.to_string(),
            required: location == "path"
                || p.get("required").and_then(Value::as_bool) == Some(true),
            schema: p
                .get("schema")
                .cloned()
                .or_else(|| json_schema(p.get("content"))),
        });
    }
}

impl Operation {
    /// The JSON schema documented for a response status: exact, then range, then `default`.
    pub fn response_schema(&self, status: u16) -> Option<&Value> {
        let exact = status.to_string();
        let range = format!("{}XX", status / 100);
        let find = |k: &str| {
            self.response_schemas
                .iter()
                .find(|(code, _)| code.eq_ignore_ascii_case(k))
                .map(|(_, s)| s)
        };
        find(&exact)
            .or_else(|| find(&range))
            .or_else(|| find("default"))
    }

    /// The values of the path parameters in `path` (the request path, maybe with a base path
    /// in front), by name. Segments are aligned from the end, so a base path does not matter.
    pub fn path_values<'p>(&self, path: &'p str) -> Vec<(&str, &'p str)> {
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        let path = path.strip_suffix('/').unwrap_or(path);
        let tpl: Vec<&str> = self.template.trim_matches('/').split('/').collect();
        let segs: Vec<&'p str> = path.trim_start_matches('/').split('/').collect();
        if segs.len() < tpl.len() {
            return Vec::new();
        }
        let segs = &segs[segs.len() - tpl.len()..];
        let mut out = Vec::new();
        for (t, s) in tpl.iter().zip(segs) {
            if let (Some(open), Some(close)) = (t.find('{'), t.rfind('}'))
                && open < close
            {
                let (prefix, suffix) = (&t[..open], &t[close + 1..]);
                if s.len() >= prefix.len() + suffix.len() {
                    let name = &t[open + 1..close];
                    out.push((name, &s[prefix.len()..s.len() - suffix.len()]));
                }
            }
        }
        out
    }

    /// `METHOD /template`, the form findings and stats use.
    pub fn route(&self) -> String {
        format!("{} {}", self.method, self.template)
    }

    /// Whether a response status is documented: exactly, by range (`4XX`), or by `default`.
    pub fn documents_status(&self, status: u16) -> bool {
        if self.has_default {
            return true;
        }
        let exact = status.to_string();
        let range = format!("{}XX", status / 100);
        self.statuses
            .iter()
            .any(|s| *s == exact || s.eq_ignore_ascii_case(&range))
    }
}

/// What a request matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteMatch<'a> {
    /// A documented operation.
    Operation(&'a Operation),
    /// The path matches a template, but the method is not documented on it.
    MethodNotDocumented { template: &'a str },
    /// No template matches the path.
    NoPath,
}

impl<'a> RouteMatch<'a> {
    /// The template the request's route should be recorded under, if the path matched.
    pub fn template(&self) -> Option<&'a str> {
        match self {
            RouteMatch::Operation(op) => Some(&op.template),
            RouteMatch::MethodNotDocumented { template } => Some(template),
            RouteMatch::NoPath => None,
        }
    }
}

/// A loaded, resolved and indexed spec.
#[derive(Debug)]
pub struct Spec {
    /// `3.0.4`, `3.1.0`, ...
    pub openapi_version: String,
    pub title: Option<String>,
    pub version: Option<String>,
    /// SHA-256 of the bytes of every file the spec was read from, hex.
    pub hash: String,
    /// Path parts of `servers[].url`, longest first, without a trailing slash (`/api/v3`).
    pub base_paths: Vec<String>,
    pub operations: Vec<Operation>,
    trie: Node,
    by_route: HashMap<(String, String), usize>,
    by_operation_id: HashMap<String, usize>,
}

#[derive(Debug, Default)]
struct Node {
    literals: HashMap<Box<str>, Node>,
    /// Parameter segments: (literal prefix, literal suffix, child). `{id}` is ("", "");
    /// `{name}.json` is ("", ".json").
    params: Vec<(Box<str>, Box<str>, Node)>,
    /// Set when a template ends here.
    template: Option<Arc<str>>,
    /// Operation index per method slot.
    ops: [Option<u32>; 8],
}

impl Spec {
    /// Reads and indexes the spec at `path` (YAML or JSON, OpenAPI 3.0 or 3.1).
    pub fn load(path: &Path) -> Result<Spec, SpecError> {
        let loaded = load_document(path)?;
        let mut hasher = Sha256::new();
        for (_, bytes) in &loaded.sources {
            hasher.update(bytes);
        }
        let hash = hex::encode(hasher.finalize());
        Spec::from_value(path, &loaded.root, hash)
    }

    /// Indexes an already resolved document. `file` is only used in error messages.
    pub fn from_value(file: &Path, doc: &Value, hash: String) -> Result<Spec, SpecError> {
        let Some(root) = doc.as_object() else {
            return Err(SpecError::invalid(
                file,
                "",
                "the document is not an object",
            ));
        };
        let openapi_version = match root.get("openapi") {
            Some(Value::String(v)) if v.starts_with("3.0") || v.starts_with("3.1") => v.clone(),
            Some(Value::String(v)) => {
                return Err(SpecError::invalid(
                    file,
                    "/openapi",
                    format!("OpenAPI {v} is not supported; use 3.0 or 3.1"),
                ));
            }
            Some(_) => return Err(SpecError::invalid(file, "/openapi", "must be a string")),
            None if root.contains_key("swagger") => {
                return Err(SpecError::invalid(
                    file,
                    "/swagger",
                    "Swagger 2.0 is not supported; convert the spec to OpenAPI 3",
                ));
            }
            None => {
                return Err(SpecError::invalid(
                    file,
                    "",
                    "missing the `openapi` field; is this an OpenAPI document?",
                ));
            }
        };
        let info = root.get("info");
        let text = |v: Option<&Value>, k: &str| {
            v.and_then(|i| i.get(k))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let base_paths = base_paths(root.get("servers"));

        let mut operations = Vec::new();
        let mut trie = Node::default();
        // 3.1 documents may have only `webhooks`/`components`; then there is nothing to match.
        let paths = match root.get("paths") {
            None | Some(Value::Null) => None,
            Some(Value::Object(p)) => Some(p),
            Some(_) => return Err(SpecError::invalid(file, "/paths", "must be an object")),
        };
        for (template, item) in paths.into_iter().flatten() {
            let item_at = format!("/paths/{}", escape(template));
            if !template.starts_with('/') {
                return Err(SpecError::invalid(
                    file,
                    &item_at,
                    "a path must start with /",
                ));
            }
            let Some(item) = item.as_object() else {
                return Err(SpecError::invalid(
                    file,
                    &item_at,
                    "a path item must be an object",
                ));
            };
            let template: Arc<str> = template.as_str().into();
            let node = insert(&mut trie, &template, file, &item_at)?;
            if node.template.is_some() {
                return Err(SpecError::invalid(
                    file,
                    &item_at,
                    format!(
                        "{template} is the same template as {} with other parameter names",
                        node.template.as_deref().unwrap_or("")
                    ),
                ));
            }
            node.template = Some(template.clone());
            for (slot, method) in METHODS.iter().enumerate() {
                let Some(op) = item.get(*method) else {
                    continue;
                };
                let op_at = format!("{item_at}/{method}");
                let Some(op) = op.as_object() else {
                    return Err(SpecError::invalid(
                        file,
                        &op_at,
                        "an operation must be an object",
                    ));
                };
                let mut statuses = Vec::new();
                let mut has_default = false;
                let mut parameters = Vec::new();
                parameters_of(item.get("parameters"), &mut parameters);
                parameters_of(op.get("parameters"), &mut parameters);
                let request_body = op.get("requestBody").map(|b| RequestBodySpec {
                    required: b.get("required").and_then(Value::as_bool) == Some(true),
                    json_schema: json_schema(b.get("content")),
                });
                let mut response_schemas = Vec::new();
                if let Some(responses) = op.get("responses").and_then(Value::as_object) {
                    for (code, r) in responses {
                        if let Some(schema) = json_schema(r.get("content")) {
                            response_schemas.push((code.clone(), schema));
                        }
                    }
                }
                if let Some(responses) = op.get("responses") {
                    let Some(responses) = responses.as_object() else {
                        return Err(SpecError::invalid(
                            file,
                            &format!("{op_at}/responses"),
                            "must be an object",
                        ));
                    };
                    for code in responses.keys() {
                        if code == "default" {
                            has_default = true;
                        } else {
                            statuses.push(code.clone());
                        }
                    }
                }
                node.ops[slot] = Some(operations.len() as u32);
                operations.push(Operation {
                    method: method.to_ascii_uppercase(),
                    template: template.clone(),
                    pointer: format!("#{op_at}"),
                    operation_id: op
                        .get("operationId")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    deprecated: op.get("deprecated").and_then(Value::as_bool) == Some(true),
                    replaced_by: op
                        .get("x-replaced-by")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    statuses,
                    has_default,
                    parameters,
                    request_body,
                    response_schemas,
                });
            }
        }
        sort_params(&mut trie);
        let by_route = operations
            .iter()
            .enumerate()
            .map(|(i, op)| ((op.method.clone(), op.template.to_string()), i))
            .collect();
        let by_operation_id = operations
            .iter()
            .enumerate()
            .filter_map(|(i, op)| op.operation_id.clone().map(|id| (id, i)))
            .collect();
        Ok(Spec {
            openapi_version,
            title: text(info, "title"),
            version: text(info, "version"),
            hash,
            base_paths,
            operations,
            trie,
            by_route,
            by_operation_id,
        })
    }

    /// Matches a request. `path` may carry a query string and may or may not start with one of
    /// the servers' base paths (clients may call `/api/v3/pet/1` or `/pet/1` depending on how
    /// the upstream URL is configured); both match `/pet/{petId}`.
    pub fn match_request(&self, method: &str, path: &str) -> RouteMatch<'_> {
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        for base in &self.base_paths {
            if let Some(rest) = path.strip_prefix(base.as_str())
                && (rest.is_empty() || rest.starts_with('/'))
            {
                let found = self.match_path(method, if rest.is_empty() { "/" } else { rest });
                if found != RouteMatch::NoPath {
                    return found;
                }
            }
        }
        self.match_path(method, path)
    }

    fn match_path(&self, method: &str, path: &str) -> RouteMatch<'_> {
        let trimmed = path.strip_prefix('/').unwrap_or(path);
        // One trailing slash is tolerated: `/pet/` is `/pet`.
        let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
        let mut segments = [""; 32];
        let mut n = 0;
        if !trimmed.is_empty() {
            for seg in trimmed.split('/') {
                if n == segments.len() {
                    return RouteMatch::NoPath;
                }
                segments[n] = seg;
                n += 1;
            }
        }
        let Some(node) = walk(&self.trie, &segments[..n]) else {
            return RouteMatch::NoPath;
        };
        let Some(template) = node.template.as_deref() else {
            return RouteMatch::NoPath;
        };
        match method_index(method).and_then(|slot| node.ops[slot]) {
            Some(i) => match self.operations.get(i as usize) {
                Some(op) => RouteMatch::Operation(op),
                None => RouteMatch::MethodNotDocumented { template },
            },
            None => RouteMatch::MethodNotDocumented { template },
        }
    }

    /// The operation recorded under `METHOD` and `template` (an event's route).
    pub fn operation(&self, method: &str, template: &str) -> Option<&Operation> {
        self.by_route
            .get(&(method.to_ascii_uppercase(), template.to_string()))
            .and_then(|&i| self.operations.get(i))
    }

    /// Whether `template` is one of the spec's path templates (with any method).
    pub fn has_template(&self, template: &str) -> bool {
        self.operations.iter().any(|op| &*op.template == template)
    }

    /// Resolves a replacement named as `METHOD /template` or as an operationId.
    pub fn find(&self, name: &str) -> Option<&Operation> {
        if let Some((method, template)) = name.trim().split_once(' ') {
            return self.operation(method, template.trim());
        }
        self.by_operation_id
            .get(name.trim())
            .and_then(|&i| self.operations.get(i))
    }
}

fn walk<'a>(node: &'a Node, segments: &[&str]) -> Option<&'a Node> {
    let Some((first, rest)) = segments.split_first() else {
        return node.template.as_ref().map(|_| node);
    };
    if let Some(child) = node.literals.get(*first)
        && let Some(found) = walk(child, rest)
    {
        return Some(found);
    }
    for (prefix, suffix, child) in &node.params {
        if first.len() > prefix.len() + suffix.len()
            && first.starts_with(&**prefix)
            && first.ends_with(&**suffix)
            && let Some(found) = walk(child, rest)
        {
            return Some(found);
        }
    }
    None
}

/// Longer literal parts around a parameter are more specific (`{name}.json` before `{name}`),
/// so they are tried first.
fn sort_params(node: &mut Node) {
    node.params
        .sort_by_key(|(p, s, _)| std::cmp::Reverse(p.len() + s.len()));
    for child in node.literals.values_mut() {
        sort_params(child);
    }
    for (_, _, child) in &mut node.params {
        sort_params(child);
    }
}

fn insert<'a>(
    root: &'a mut Node,
    template: &str,
    file: &Path,
    at: &str,
) -> Result<&'a mut Node, SpecError> {
    let mut node = root;
    let trimmed = template.trim_start_matches('/');
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    if trimmed.is_empty() {
        return Ok(node);
    }
    for seg in trimmed.split('/') {
        match (seg.find('{'), seg.rfind('}')) {
            (Some(open), Some(close)) if open < close => {
                let prefix: Box<str> = seg[..open].into();
                let suffix: Box<str> = seg[close + 1..].into();
                if seg[open + 1..close].contains(['{', '}']) || suffix.contains('{') {
                    return Err(SpecError::invalid(
                        file,
                        at,
                        format!(
                            "segment {seg:?} holds more than one parameter, which is not supported"
                        ),
                    ));
                }
                let pos = node
                    .params
                    .iter()
                    .position(|(p, s, _)| *p == prefix && *s == suffix);
                let pos = match pos {
                    Some(pos) => pos,
                    None => {
                        node.params.push((prefix, suffix, Node::default()));
                        node.params.len() - 1
                    }
                };
                node = &mut node.params[pos].2;
            }
            (None, None) => {
                node = node.literals.entry(seg.into()).or_default();
            }
            _ => {
                return Err(SpecError::invalid(
                    file,
                    at,
                    format!("segment {seg:?} has an unbalanced brace"),
                ));
            }
        }
    }
    Ok(node)
}

/// The path parts of `servers[].url`, with `{variables}` replaced by their defaults.
fn base_paths(servers: Option<&Value>) -> Vec<String> {
    let mut out = Vec::new();
    for server in servers.and_then(Value::as_array).into_iter().flatten() {
        let Some(mut url) = server
            .get("url")
            .and_then(Value::as_str)
            .map(str::to_string)
        else {
            continue;
        };
        if let Some(vars) = server.get("variables").and_then(Value::as_object) {
            for (name, var) in vars {
                if let Some(default) = var.get("default").and_then(Value::as_str) {
                    url = url.replace(&format!("{{{name}}}"), default);
                }
            }
        }
        let path = match url.split_once("://") {
            Some((_, rest)) => rest.find('/').map_or("", |i| &rest[i..]),
            None => url.as_str(),
        };
        let path = path.trim_end_matches('/');
        if path.starts_with('/') && !out.iter().any(|p| p == path) {
            out.push(path.to_string());
        }
    }
    out.sort_by_key(|p| std::cmp::Reverse(p.len()));
    out
}
