//! Schema checks of sampled exchanges, off the gateway's hot path.
//!
//! The gateway copies (by reference count: `Bytes` clones, no byte copy) at most
//! `max_body_bytes` of a sampled request's and response's body as the frames stream past, and
//! when the exchange completes hands a [`Sample`] to a [`SampleSender`]: a bounded channel and
//! `try_send`, so a full queue drops the sample (and counts it) instead of waiting. One
//! background thread ([`Contracts::start_validator`]) parses and validates, and records each
//! broken rule per consumer, operation, JSON pointer and rule; [`Contracts::findings`] turns them
//! into `schema_violation` findings.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, PoisonError};

use bytes::Bytes;
use serde_json::Value;

use crate::validate::{Violation, coerce_param, validate};
use crate::{Contracts, RouteMatch, UsageCell};

/// What was kept of a sampled body.
#[derive(Debug, Clone, Default)]
pub enum BodySample {
    /// Not sampled, or not JSON: not checked.
    #[default]
    Skipped,
    /// The whole body (maybe empty), as the frames that carried it.
    Json(Vec<Bytes>),
    /// Longer than `max_body_bytes`: not checked (counted).
    TooLarge,
}

/// One sampled exchange.
#[derive(Debug, Clone)]
pub struct Sample {
    pub api: String,
    pub consumer: String,
    pub method: String,
    /// The path relative to the API's prefix, with its query string.
    pub path: String,
    pub ts_ms: i64,
    /// Whether parameters are checked (the request was sampled).
    pub check_parameters: bool,
    pub request_body: BodySample,
    pub status: u16,
    pub response_body: BodySample,
}

/// Where a violation was found.
pub const LOCATION_PARAMETER: &str = "parameter";
pub const LOCATION_REQUEST: &str = "request";
pub const LOCATION_RESPONSE: &str = "response";

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ViolationKey {
    pub api: String,
    pub consumer: String,
    pub method: String,
    pub route: String,
    pub location: &'static str,
    pub pointer: String,
    pub rule: String,
}

/// Counters of the validation pipeline, for `/metrics` and the spec endpoint.
#[derive(Debug, Default)]
pub struct ValidationStats {
    /// Samples validated.
    pub checked: AtomicU64,
    /// Samples dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Bodies longer than `max_body_bytes`, not checked.
    pub too_large: AtomicU64,
    /// Violations recorded.
    pub violations: AtomicU64,
}

/// The gateway's end of the validation queue. Cloning is cheap.
#[derive(Clone)]
pub struct SampleSender {
    tx: SyncSender<Sample>,
    contracts: Arc<Contracts>,
    first: Arc<crate::first::FirstCalls>,
}

impl SampleSender {
    /// Whether this exchange is among the first of its consumer and operation this hour, and
    /// so checked in full whatever the sample rate (see [`crate::first`]). Counts it.
    pub fn first_of_hour(&self, consumer: &str, op: &str, ts_ms: i64) -> bool {
        self.first.admit(consumer, op, ts_ms)
    }

    /// Hands a sample over without waiting; a full queue drops it and counts the drop.
    pub fn offer(&self, sample: Sample) {
        match self.tx.try_send(sample) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.contracts
                    .validation
                    .dropped
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn concat(chunks: &[Bytes]) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunks.iter().map(Bytes::len).sum());
    for c in chunks {
        out.extend_from_slice(c);
    }
    out
}

/// `%XX` and `+` decoding for query strings.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Contracts {
    /// Starts the background validator with a queue of `capacity` samples and returns the
    /// gateway's sender. The thread ends when every sender is dropped.
    pub fn start_validator(self: &Arc<Self>, capacity: usize) -> SampleSender {
        let (tx, rx) = sync_channel::<Sample>(capacity.max(1));
        let contracts = self.clone();
        let spawned = std::thread::Builder::new()
            .name("clientele-validate".into())
            .spawn(move || {
                while let Ok(sample) = rx.recv() {
                    contracts.check_sample(&sample);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the schema validator; samples will be dropped");
        }
        SampleSender {
            tx,
            contracts: self.clone(),
            first: Arc::new(crate::first::FirstCalls::default()),
        }
    }

    /// Validates one sample against its operation and records what it breaks. Returns the
    /// violations found (for tests).
    pub fn check_sample(&self, sample: &Sample) -> Vec<(&'static str, Violation)> {
        let Some(contract) = self.apis.get(&sample.api) else {
            return Vec::new();
        };
        let spec = contract.current();
        let RouteMatch::Operation(op) = spec.match_request(&sample.method, &sample.path) else {
            return Vec::new();
        };
        self.validation.checked.fetch_add(1, Ordering::Relaxed);
        let mut found: Vec<(&'static str, Violation)> = Vec::new();
        let mut scratch = Vec::new();

        if sample.check_parameters {
            let values = op.path_values(&sample.path);
            let query = sample.path.split_once('?').map(|(_, q)| q).unwrap_or("");
            let pairs: Vec<(String, String)> = query
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (decode(k), decode(v)),
                    None => (decode(p), String::new()),
                })
                .collect();
            for p in &op.parameters {
                let at = format!("/{}/{}", p.location, crate::escape(&p.name));
                let text: Option<String> = match p.location.as_str() {
                    "path" => values
                        .iter()
                        .find(|(n, _)| *n == p.name)
                        .map(|(_, v)| decode(v)),
                    "query" => {
                        let all: Vec<&str> = pairs
                            .iter()
                            .filter(|(k, _)| *k == p.name)
                            .map(|(_, v)| v.as_str())
                            .collect();
                        if all.is_empty() {
                            None
                        } else {
                            Some(all.join(","))
                        }
                    }
                    // Headers and cookies are not carried in samples.
                    _ => continue,
                };
                match (text, &p.schema) {
                    (None, _) if p.required => found.push((
                        LOCATION_PARAMETER,
                        Violation {
                            pointer: at,
                            rule: "required".into(),
                        },
                    )),
                    (Some(text), Some(schema)) => {
                        scratch.clear();
                        validate(schema, &coerce_param(schema, &text), &at, &mut scratch);
                        found.extend(scratch.drain(..).map(|v| (LOCATION_PARAMETER, v)));
                    }
                    _ => {}
                }
            }
        }

        for (location, body, schema, required) in [
            (
                LOCATION_REQUEST,
                &sample.request_body,
                op.request_body
                    .as_ref()
                    .and_then(|b| b.json_schema.as_ref()),
                op.request_body.as_ref().is_some_and(|b| b.required),
            ),
            (
                LOCATION_RESPONSE,
                &sample.response_body,
                op.response_schema(sample.status),
                false,
            ),
        ] {
            match body {
                BodySample::Skipped => {}
                BodySample::TooLarge => {
                    self.validation.too_large.fetch_add(1, Ordering::Relaxed);
                }
                BodySample::Json(chunks) => {
                    let bytes = concat(chunks);
                    if bytes.iter().all(u8::is_ascii_whitespace) {
                        if required {
                            found.push((
                                location,
                                Violation {
                                    pointer: String::new(),
                                    rule: "required".into(),
                                },
                            ));
                        }
                        continue;
                    }
                    let Some(schema) = schema else { continue };
                    match serde_json::from_slice::<Value>(&bytes) {
                        Ok(value) => {
                            scratch.clear();
                            validate(schema, &value, "", &mut scratch);
                            found.extend(scratch.drain(..).map(|v| (location, v)));
                        }
                        Err(_) => found.push((
                            location,
                            Violation {
                                pointer: String::new(),
                                rule: "json".into(),
                            },
                        )),
                    }
                }
            }
        }
        if !found.is_empty() {
            self.validation
                .violations
                .fetch_add(found.len() as u64, Ordering::Relaxed);
            let mut table = self
                .violations
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for (location, v) in &found {
                let key = ViolationKey {
                    api: sample.api.clone(),
                    consumer: sample.consumer.clone(),
                    method: op.method.clone(),
                    route: op.template.to_string(),
                    location,
                    pointer: v.pointer.clone(),
                    rule: v.rule.clone(),
                };
                if table.len() >= crate::MAX_USAGE_ROWS && !table.contains_key(&key) {
                    continue;
                }
                let cell = table.entry(key).or_insert(UsageCell {
                    count: 0,
                    first_ms: sample.ts_ms,
                    last_ms: sample.ts_ms,
                });
                cell.count += 1;
                cell.first_ms = cell.first_ms.min(sample.ts_ms);
                cell.last_ms = cell.last_ms.max(sample.ts_ms);
            }
        }
        found
    }
}
