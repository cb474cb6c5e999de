//! OpenAPI contracts: what each API promises, and where its consumers' traffic disagrees.
//!
//! [`Spec`] loads an OpenAPI 3.0 or 3.1 document (YAML or JSON, `$ref`s across local files) and
//! matches requests to operations with a segment trie. [`ApiContract`] holds an API's current
//! spec behind a lock that is only taken to clone an `Arc` (the gateway matches on its hot path),
//! reloads it, and keeps the history of versions. [`Contracts`] is every API's contract plus the
//! usage table that drift and deprecation findings are computed from: the writer feeds it stored
//! events ([`Contracts::observe`], off the hot path), and detection asks it for findings
//! ([`Contracts::findings`]) and for the deprecation report ([`Contracts::deprecations`]).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use clientele_core::event::{Event, Outcome};
use clientele_core::finding::{Finding, FindingKind, Severity};
use serde::Serialize;
use serde_json::json;

pub mod first;
mod load;
mod sample;
mod spec;
pub mod validate;
mod yaml_depth;

pub use load::{SpecError, escape};
use sample::ViolationKey;
pub use sample::{
    BodySample, LOCATION_PARAMETER, LOCATION_REQUEST, LOCATION_RESPONSE, Sample, SampleSender,
    ValidationStats,
};
pub use spec::{METHODS, Operation, Parameter, RequestBodySpec, RouteMatch, Spec};

/// One loaded version of a spec.
#[derive(Debug, Clone, Serialize)]
pub struct SpecVersion {
    /// SHA-256 of the spec's files, hex.
    pub hash: String,
    pub loaded_at_ms: i64,
    pub openapi: String,
    pub operations: usize,
}

/// The answer to a reload.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    pub api: String,
    /// False when the files had not changed (same hash).
    pub changed: bool,
    pub hash: String,
    /// Operations (`METHOD /template`) in the previous version and not in this one.
    pub removed: Vec<String>,
    /// Operations whose documented statuses, deprecation, parameters or schemas changed.
    pub modified: Vec<String>,
    /// Consumers that called a removed or modified operation in the last `impact_days`, with
    /// their calls.
    pub impacted_consumers: BTreeMap<String, u64>,
    pub impact_days: i64,
}

/// One API's spec: the current version, its history and the last reload error.
#[derive(Debug)]
pub struct ApiContract {
    pub api: String,
    pub path: PathBuf,
    current: RwLock<Arc<Spec>>,
    history: Mutex<Vec<SpecVersion>>,
    last_error: Mutex<Option<String>>,
    /// Deprecations from the config (`[[apis]] deprecations`), on top of the spec's.
    overrides: RwLock<Vec<DeprecationOverride>>,
}

/// A deprecation set in the config rather than in the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeprecationOverride {
    /// `METHOD /template`.
    pub operation: String,
    pub sunset_ms: Option<i64>,
    /// `METHOD /template` or an operationId.
    pub replaced_by: Option<String>,
}

/// Why an operation counts as deprecated, and what replaces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deprecation {
    /// `spec` (`deprecated: true`) or `config`.
    pub source: &'static str,
    /// Where it is said: the operation's `deprecated` pointer, or the config key.
    pub pointer: String,
    pub sunset_ms: Option<i64>,
    pub replaced_by: Option<String>,
}

fn normalize_route(s: &str) -> String {
    match s.trim().split_once(' ') {
        Some((m, t)) => format!("{} {}", m.to_ascii_uppercase(), t.trim()),
        None => s.trim().to_string(),
    }
}

impl ApiContract {
    /// Loads the spec; an error here is a start-up error naming the file and the place.
    pub fn load(api: &str, path: PathBuf) -> Result<ApiContract, SpecError> {
        let spec = Spec::load(&path)?;
        let version = version_of(&spec);
        Ok(ApiContract {
            api: api.to_string(),
            path,
            current: RwLock::new(Arc::new(spec)),
            history: Mutex::new(vec![version]),
            last_error: Mutex::new(None),
            overrides: RwLock::new(Vec::new()),
        })
    }

    /// Sets the config's deprecations, checked against the current spec: the operation and the
    /// replacement must exist. An error is `(index, field, reason)`.
    pub fn set_deprecations(
        &self,
        overrides: Vec<DeprecationOverride>,
    ) -> Result<(), (usize, &'static str, String)> {
        let spec = self.current();
        for (i, o) in overrides.iter().enumerate() {
            if spec.find(&o.operation).is_none() {
                return Err((
                    i,
                    "operation",
                    format!(
                        "{} is not an operation of {}; use `METHOD /template` as written in the spec",
                        o.operation,
                        self.path.display()
                    ),
                ));
            }
            if let Some(r) = &o.replaced_by
                && spec.find(r).is_none()
            {
                return Err((
                    i,
                    "replaced_by",
                    format!(
                        "{r} is not an operation (or operationId) of {}",
                        self.path.display()
                    ),
                ));
            }
        }
        *self
            .overrides
            .write()
            .unwrap_or_else(PoisonError::into_inner) = overrides;
        Ok(())
    }

    /// Whether `op` is deprecated, by the config (which wins) or by the spec.
    pub fn deprecation(&self, op: &Operation) -> Option<Deprecation> {
        let route = op.route();
        let overrides = self
            .overrides
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((i, o)) = overrides
            .iter()
            .enumerate()
            .find(|(_, o)| normalize_route(&o.operation) == route)
        {
            return Some(Deprecation {
                source: "config",
                pointer: format!("apis.{}.deprecations[{i}]", self.api),
                sunset_ms: o.sunset_ms,
                replaced_by: o.replaced_by.clone().or_else(|| op.replaced_by.clone()),
            });
        }
        op.deprecated.then(|| Deprecation {
            source: "spec",
            pointer: format!("{}/deprecated", op.pointer),
            sunset_ms: None,
            replaced_by: op.replaced_by.clone(),
        })
    }

    /// The current spec. The lock is held only to clone the `Arc`.
    pub fn current(&self) -> Arc<Spec> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The template a request's route is recorded under, when the spec has its path. This is
    /// the only contract work on the gateway's hot path: one trie walk.
    pub fn route_template(&self, method: &str, path: &str) -> Option<String> {
        self.current()
            .match_request(method, path)
            .template()
            .map(str::to_string)
    }

    /// Replaces the history (with the versions kept in the store, so it survives restarts).
    pub fn set_history(&self, versions: Vec<SpecVersion>) {
        *self.history.lock().unwrap_or_else(PoisonError::into_inner) = versions;
    }

    pub fn history(&self) -> Vec<SpecVersion> {
        self.history
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Why the last reload failed, if it did (cleared by a good reload).
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Re-reads the spec. A bad new spec leaves the current one in place and is remembered as
    /// `last_error`. Returns the previous spec alongside the report, for change impact.
    fn reload(&self) -> Result<(Arc<Spec>, Arc<Spec>), String> {
        match Spec::load(&self.path) {
            Ok(spec) => {
                let spec = Arc::new(spec);
                let previous = {
                    let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
                    std::mem::replace(&mut *current, spec.clone())
                };
                if previous.hash != spec.hash {
                    self.history
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(version_of(&spec));
                }
                *self
                    .last_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = None;
                Ok((previous, spec))
            }
            Err(e) => {
                let message = format!("{e}; keeping the last good spec");
                *self
                    .last_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(message.clone());
                Err(message)
            }
        }
    }
}

fn version_of(spec: &Spec) -> SpecVersion {
    SpecVersion {
        hash: spec.hash.clone(),
        loaded_at_ms: clientele_core::time::now_ms(),
        openapi: spec.openapi_version.clone(),
        operations: spec.operations.len(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct UsageKey {
    api: String,
    consumer: String,
    method: String,
    route: String,
    status: u16,
}

fn display_pointer(p: &str) -> &str {
    if p.is_empty() { "the root" } else { p }
}

#[derive(Debug, Clone, Copy)]
struct UsageCell {
    count: u64,
    first_ms: i64,
    last_ms: i64,
}

/// Bounds the usage table: one row per (api, consumer, method, route, status) is small, but a
/// client probing random undocumented paths must not grow it without limit.
const MAX_USAGE_ROWS: usize = 200_000;

#[derive(Default)]
struct Usage {
    rows: HashMap<UsageKey, UsageCell>,
    dropped: u64,
}

/// Every API's contract and the per-consumer usage that drift is judged from.
#[derive(Default)]
pub struct Contracts {
    apis: BTreeMap<String, Arc<ApiContract>>,
    usage: Mutex<Usage>,
    /// Schema violations of sampled exchanges, per consumer, operation, pointer and rule.
    violations: Mutex<HashMap<ViolationKey, UsageCell>>,
    /// Counters of the sampling and validation pipeline.
    pub validation: ValidationStats,
}

impl std::fmt::Debug for Contracts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contracts")
            .field("apis", &self.apis.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Contracts {
    /// Loads every API's spec (`(api name, spec path)`); the first bad one stops start-up.
    pub fn load(specs: &[(String, PathBuf)]) -> Result<Contracts, SpecError> {
        let mut apis = BTreeMap::new();
        for (api, path) in specs {
            apis.insert(api.clone(), Arc::new(ApiContract::load(api, path.clone())?));
        }
        Ok(Contracts {
            apis,
            ..Contracts::default()
        })
    }

    pub fn api(&self, name: &str) -> Option<&Arc<ApiContract>> {
        self.apis.get(name)
    }

    pub fn apis(&self) -> impl Iterator<Item = &Arc<ApiContract>> {
        self.apis.values()
    }

    pub fn is_empty(&self) -> bool {
        self.apis.is_empty()
    }

    /// Reloads one API's spec and reports the change impact over the last `impact_days`.
    pub fn reload(&self, api: &str, impact_days: i64) -> Result<ReloadReport, String> {
        let Some(contract) = self.apis.get(api) else {
            return Err(format!("api {api} has no openapi spec in the config"));
        };
        let (previous, current) = contract.reload()?;
        let mut removed = Vec::new();
        let mut modified = Vec::new();
        for op in &previous.operations {
            match current.operation(&op.method, &op.template) {
                None => removed.push(op.route()),
                Some(new) => {
                    let mut a = op.statuses.clone();
                    let mut b = new.statuses.clone();
                    a.sort();
                    b.sort();
                    // Schemas count too: a new required field or a narrower enum breaks
                    // callers as surely as a removed status.
                    let mut ra = op.response_schemas.clone();
                    let mut rb = new.response_schemas.clone();
                    ra.sort_by(|x, y| x.0.cmp(&y.0));
                    rb.sort_by(|x, y| x.0.cmp(&y.0));
                    if a != b
                        || op.has_default != new.has_default
                        || op.deprecated != new.deprecated
                        || op.parameters != new.parameters
                        || op.request_body != new.request_body
                        || ra != rb
                    {
                        modified.push(op.route());
                    }
                }
            }
        }
        let since = clientele_core::time::now_ms() - impact_days * 86_400_000;
        let mut impacted = BTreeMap::new();
        {
            let usage = self.usage.lock().unwrap_or_else(PoisonError::into_inner);
            for (key, cell) in &usage.rows {
                if key.api != api || cell.last_ms < since {
                    continue;
                }
                let route = format!("{} {}", key.method, key.route);
                if removed.contains(&route) || modified.contains(&route) {
                    *impacted.entry(key.consumer.clone()).or_insert(0) += cell.count;
                }
            }
        }
        Ok(ReloadReport {
            api: api.to_string(),
            changed: previous.hash != current.hash,
            hash: current.hash.clone(),
            removed,
            modified,
            impacted_consumers: impacted,
            impact_days,
        })
    }

    /// Reloads every spec (SIGHUP); failures are returned per API, the others still reload.
    pub fn reload_all(&self, impact_days: i64) -> Vec<Result<ReloadReport, String>> {
        self.apis
            .keys()
            .map(|api| self.reload(api, impact_days))
            .collect()
    }

    /// Records stored events (the writer calls this after the store accepted them; never on the
    /// gateway's path). Only answered requests of known consumers to APIs with a spec count:
    /// a 401 or a 429 from the gateway says nothing about the contract.
    pub fn observe(&self, events: &[Event]) {
        if self.apis.is_empty() {
            return;
        }
        let mut usage = self.usage.lock().unwrap_or_else(PoisonError::into_inner);
        for e in events {
            let (Some(api), Some(consumer)) = (e.api.as_deref(), e.consumer.as_deref()) else {
                continue;
            };
            if e.outcome != Outcome::Proxied || !self.apis.contains_key(api) {
                continue;
            }
            let key = UsageKey {
                api: api.to_string(),
                consumer: consumer.to_string(),
                method: e.method.to_ascii_uppercase(),
                route: e.route.clone(),
                status: e.status,
            };
            let full = usage.rows.len() >= MAX_USAGE_ROWS;
            match usage.rows.get_mut(&key) {
                Some(cell) => {
                    cell.count += 1;
                    cell.first_ms = cell.first_ms.min(e.ts_ms);
                    cell.last_ms = cell.last_ms.max(e.ts_ms);
                }
                None if full => usage.dropped += 1,
                None => {
                    usage.rows.insert(
                        key,
                        UsageCell {
                            count: 1,
                            first_ms: e.ts_ms,
                            last_ms: e.ts_ms,
                        },
                    );
                }
            }
        }
    }

    fn rows(&self) -> Vec<(UsageKey, UsageCell)> {
        let usage = self.usage.lock().unwrap_or_else(PoisonError::into_inner);
        usage.rows.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Drift and deprecation findings for usage seen in `[now_ms - lookback_ms, now_ms]`, judged
    /// against each API's current spec.
    pub fn findings(&self, now_ms: i64, lookback_ms: i64) -> Vec<Finding> {
        #[derive(Default)]
        struct Agg {
            count: u64,
            first_ms: i64,
            last_ms: i64,
            statuses: BTreeMap<u16, u64>,
            pointer: String,
            rule: &'static str,
            replaced_by: Option<String>,
            sunset_ms: Option<i64>,
        }
        let mut groups: BTreeMap<(FindingKind, String, String, String), Agg> = BTreeMap::new();
        let specs: HashMap<&str, (&ApiContract, Arc<Spec>)> = self
            .apis
            .iter()
            .map(|(name, c)| (name.as_str(), (&**c, c.current())))
            .collect();
        for (key, cell) in self.rows() {
            if cell.last_ms < now_ms - lookback_ms || cell.first_ms > now_ms {
                continue;
            }
            let Some((contract, spec)) = specs.get(key.api.as_str()) else {
                continue;
            };
            let route = format!("{} {}", key.method, key.route);
            let mut sunset_ms = None;
            let mut hits: Vec<(FindingKind, String, &'static str, Option<String>)> = Vec::new();
            match spec.operation(&key.method, &key.route) {
                None if spec.has_template(&key.route) => hits.push((
                    FindingKind::UndocumentedEndpoint,
                    format!("#/paths/{}", escape(&key.route)),
                    "method not documented for this path",
                    None,
                )),
                None => hits.push((
                    FindingKind::UndocumentedEndpoint,
                    "#/paths".to_string(),
                    "path matches no template in paths",
                    None,
                )),
                Some(op) => {
                    if !op.documents_status(key.status) {
                        hits.push((
                            FindingKind::UndocumentedStatus,
                            format!("{}/responses", op.pointer),
                            "status not in responses and no default",
                            None,
                        ));
                    }
                    if let Some(d) = contract.deprecation(op) {
                        sunset_ms = d.sunset_ms;
                        hits.push((
                            FindingKind::DeprecatedUsage,
                            d.pointer,
                            if d.source == "spec" {
                                "operation is deprecated: true"
                            } else {
                                "operation is deprecated in the config (sunset/replacement)"
                            },
                            d.replaced_by,
                        ));
                    }
                }
            }
            for (kind, pointer, rule, replaced_by) in hits {
                let agg = groups
                    .entry((kind, key.consumer.clone(), key.api.clone(), route.clone()))
                    .or_insert_with(|| Agg {
                        first_ms: i64::MAX,
                        last_ms: i64::MIN,
                        ..Agg::default()
                    });
                agg.count += cell.count;
                agg.first_ms = agg.first_ms.min(cell.first_ms);
                agg.last_ms = agg.last_ms.max(cell.last_ms);
                *agg.statuses.entry(key.status).or_insert(0) += cell.count;
                agg.pointer = pointer;
                agg.rule = rule;
                agg.replaced_by = replaced_by;
                if kind == FindingKind::DeprecatedUsage {
                    agg.sunset_ms = sunset_ms;
                }
            }
        }
        let mut out: Vec<Finding> = groups
            .into_iter()
            .map(|((kind, consumer, api, route), agg)| {
                // Only the statuses that broke the rule matter for undocumented_status.
                let summary = match kind {
                    FindingKind::UndocumentedEndpoint => format!(
                        "{consumer} called {route}, which {api}'s spec does not document ({} calls); \
                         document it or tell them it is unsupported",
                        agg.count
                    ),
                    FindingKind::UndocumentedStatus => format!(
                        "{consumer} received status {} on {route}, which {api}'s spec does not list ({} responses); \
                         document the status or fix the API",
                        agg.statuses
                            .keys()
                            .map(u16::to_string)
                            .collect::<Vec<_>>()
                            .join(", "),
                        agg.count
                    ),
                    _ => format!(
                        "{consumer} still calls the deprecated {route} ({} calls){}{}",
                        agg.count,
                        agg.sunset_ms
                            .map(|t| format!(
                                ", {} on {}",
                                if t <= now_ms { "past its sunset" } else { "which goes away" },
                                &clientele_core::time::format_ts(t)[..10]
                            ))
                            .unwrap_or_default(),
                        agg.replaced_by
                            .as_deref()
                            .map(|r| format!("; ask them to move to {r}"))
                            .unwrap_or_default()
                    ),
                };
                let severity = match kind {
                    FindingKind::UndocumentedStatus
                        if agg.statuses.keys().all(|s| *s < 500) =>
                    {
                        Severity::Info
                    }
                    // Past the sunset, or within 30 days of it: the calls are about to break.
                    FindingKind::DeprecatedUsage
                        if agg.sunset_ms.is_some_and(|t| t <= now_ms + 30 * 86_400_000) =>
                    {
                        Severity::Critical
                    }
                    _ => Severity::Warning,
                };
                Finding {
                    id: format!("f_contract_{}", clientele_core::event::random_id128()),
                    kind,
                    consumer: Some(consumer),
                    api: Some(api),
                    route: Some(route),
                    severity,
                    first_seen_ms: agg.first_ms,
                    last_seen_ms: agg.last_ms,
                    summary,
                    evidence: json!({
                        "pointer": agg.pointer,
                        "rule": agg.rule,
                        "count": agg.count,
                        "statuses": agg.statuses.iter().map(|(s, n)| (s.to_string(), *n)).collect::<BTreeMap<_, _>>(),
                        "replaced_by": agg.replaced_by,
                        "sunset": agg.sunset_ms.map(clientele_core::time::format_ts),
                        "first_seen": clientele_core::time::format_ts(agg.first_ms),
                        "last_seen": clientele_core::time::format_ts(agg.last_ms),
                    }),
                }
            })
            .collect();
        out.extend(self.schema_findings(now_ms, lookback_ms));
        out
    }

    /// One `schema_violation` finding per consumer and operation, with every (location,
    /// pointer, rule) it broke in the evidence, the most frequent first.
    fn schema_findings(&self, now_ms: i64, lookback_ms: i64) -> Vec<Finding> {
        let rows: Vec<(ViolationKey, UsageCell)> = {
            let table = self
                .violations
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            table
                .iter()
                .filter(|(_, c)| c.last_ms >= now_ms - lookback_ms && c.first_ms <= now_ms)
                .map(|(k, c)| (k.clone(), *c))
                .collect()
        };
        let mut groups: BTreeMap<(String, String, String), Vec<(ViolationKey, UsageCell)>> =
            BTreeMap::new();
        for (k, c) in rows {
            groups
                .entry((
                    k.consumer.clone(),
                    k.api.clone(),
                    format!("{} {}", k.method, k.route),
                ))
                .or_default()
                .push((k, c));
        }
        groups
            .into_iter()
            .map(|((consumer, api, route), mut list)| {
                list.sort_by(|a, b| {
                    b.1.count
                        .cmp(&a.1.count)
                        .then_with(|| a.0.pointer.cmp(&b.0.pointer))
                });
                let count: u64 = list.iter().map(|(_, c)| c.count).sum();
                let first = list.iter().map(|(_, c)| c.first_ms).min().unwrap_or(now_ms);
                let last = list.iter().map(|(_, c)| c.last_ms).max().unwrap_or(now_ms);
                let response_only = list.iter().all(|(k, _)| k.location == LOCATION_RESPONSE);
                // What the consumer sends comes first: that is what they can fix.
                let (top, _) = list
                    .iter()
                    .find(|(k, _)| k.location != LOCATION_RESPONSE)
                    .unwrap_or(&list[0]);
                let summary = if response_only {
                    format!(
                        "{api}'s responses to {consumer} on {route} break the spec ({} at {} in the body, {count} times); \
                         fix the API or the spec before the integration relies on it",
                        top.rule,
                        display_pointer(&top.pointer)
                    )
                } else {
                    format!(
                        "{consumer} sends {route} requests that break the spec ({} at {} in the {}, {count} times); \
                         tell them what the contract expects",
                        top.rule,
                        display_pointer(&top.pointer),
                        if top.location == LOCATION_PARAMETER {
                            "parameters"
                        } else {
                            "request body"
                        }
                    )
                };
                let violations: Vec<serde_json::Value> = list
                    .iter()
                    .take(20)
                    .map(|(k, c)| {
                        json!({
                            "location": k.location,
                            "pointer": k.pointer,
                            "rule": k.rule,
                            "count": c.count,
                            "first_seen": clientele_core::time::format_ts(c.first_ms),
                            "last_seen": clientele_core::time::format_ts(c.last_ms),
                        })
                    })
                    .collect();
                Finding {
                    id: format!("f_contract_{}", clientele_core::event::random_id128()),
                    kind: FindingKind::SchemaViolation,
                    consumer: Some(consumer),
                    api: Some(api),
                    route: Some(route),
                    severity: if response_only { Severity::Warning } else { Severity::Info },
                    first_seen_ms: first,
                    last_seen_ms: last,
                    summary,
                    evidence: json!({
                        "location": top.location,
                        "pointer": top.pointer,
                        "rule": top.rule,
                        "count": count,
                        "first_seen": clientele_core::time::format_ts(first),
                        "last_seen": clientele_core::time::format_ts(last),
                        "violations": violations,
                    }),
                }
            })
            .collect()
    }

    /// The deprecation report: every deprecated operation, who still calls it since `from_ms`,
    /// and each caller's migration to the replacement.
    pub fn deprecations(&self, from_ms: i64) -> Vec<DeprecatedOperation> {
        let rows = self.rows();
        let mut out = Vec::new();
        for (api, contract) in &self.apis {
            let spec = contract.current();
            for (op, dep) in spec
                .operations
                .iter()
                .filter_map(|op| contract.deprecation(op).map(|d| (op, d)))
            {
                let replacement = dep.replaced_by.as_deref().and_then(|r| spec.find(r));
                let mut consumers: BTreeMap<String, DeprecatedCaller> = BTreeMap::new();
                for (key, cell) in &rows {
                    if key.api != *api || cell.last_ms < from_ms {
                        continue;
                    }
                    let on_old = key.method == op.method && key.route == *op.template;
                    let on_new = replacement
                        .is_some_and(|r| key.method == r.method && key.route == *r.template);
                    if !on_old && !on_new {
                        continue;
                    }
                    let caller =
                        consumers
                            .entry(key.consumer.clone())
                            .or_insert_with(|| DeprecatedCaller {
                                consumer: key.consumer.clone(),
                                calls: 0,
                                last_call: String::new(),
                                last_call_ms: i64::MIN,
                                replacement_calls: 0,
                                migration_progress: None,
                            });
                    if on_old {
                        caller.calls += cell.count;
                        caller.last_call_ms = caller.last_call_ms.max(cell.last_ms);
                    } else {
                        caller.replacement_calls += cell.count;
                    }
                }
                let mut callers: Vec<DeprecatedCaller> = consumers
                    .into_values()
                    // Consumers that only call the replacement are done migrating: not listed.
                    .filter(|c| c.calls > 0)
                    .map(|mut c| {
                        c.last_call = clientele_core::time::format_ts(c.last_call_ms);
                        if replacement.is_some() {
                            c.migration_progress = Some(
                                c.replacement_calls as f64 / (c.calls + c.replacement_calls) as f64,
                            );
                        }
                        c
                    })
                    .collect();
                callers.sort_by_key(|c| std::cmp::Reverse(c.calls));
                out.push(DeprecatedOperation {
                    api: api.clone(),
                    route: op.route(),
                    operation_id: op.operation_id.clone(),
                    pointer: op.pointer.clone(),
                    replaced_by: replacement
                        .map(Operation::route)
                        .or_else(|| dep.replaced_by.clone()),
                    source: dep.source,
                    sunset: dep.sunset_ms.map(clientele_core::time::format_ts),
                    consumers: callers,
                });
            }
        }
        out
    }
}

/// One deprecated operation in the report.
#[derive(Debug, Clone, Serialize)]
pub struct DeprecatedOperation {
    pub api: String,
    /// `METHOD /template`.
    pub route: String,
    pub operation_id: Option<String>,
    pub pointer: String,
    pub replaced_by: Option<String>,
    /// `spec` (`deprecated: true`) or `config` (`[[apis]] deprecations`).
    pub source: &'static str,
    /// The sunset date from the config, RFC 3339.
    pub sunset: Option<String>,
    pub consumers: Vec<DeprecatedCaller>,
}

/// A consumer that still calls a deprecated operation.
#[derive(Debug, Clone, Serialize)]
pub struct DeprecatedCaller {
    pub consumer: String,
    pub calls: u64,
    pub last_call: String,
    #[serde(skip)]
    pub last_call_ms: i64,
    pub replacement_calls: u64,
    /// Share of the consumer's calls (old + new) already on the replacement; `null` without a
    /// known replacement.
    pub migration_progress: Option<f64>,
}

#[cfg(test)]
mod tests;
