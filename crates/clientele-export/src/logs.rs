//! Log sinks for per-request events: NDJSON files with size-based rotation, and HTTP push in
//! Loki, Splunk HEC, JSON-array or NDJSON form.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use clientele_core::event::{Event, span_id_of};
use clientele_core::exports_config::HttpLogFormat;
use serde_json::{Map, Value, json};

use crate::prom::is_error;

/// Whether a sink with `rate` keeps this event: errors always, the rest by a hash of the event
/// id, so a retried batch samples the same events and the choice is uniform.
pub fn keep(e: &Event, rate: f64) -> bool {
    if rate >= 1.0 || is_error(e) {
        return true;
    }
    if rate <= 0.0 {
        return false;
    }
    // FNV-1a over the id, mapped to [0, 1).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in e.id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    ((h >> 11) as f64 / (1u64 << 53) as f64) < rate
}

/// The event as a JSON object: its fields, `ts` (RFC 3339) and `span_id`, narrowed to `fields`
/// when that is not empty.
pub fn event_object(e: &Event, fields: &[String]) -> Map<String, Value> {
    let mut m = match serde_json::to_value(e) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    m.insert(
        "ts".into(),
        Value::String(clientele_core::time::format_ts(e.ts_ms)),
    );
    m.insert("span_id".into(), Value::String(span_id_of(&e.id)));
    if !fields.is_empty() {
        m.retain(|k, _| fields.iter().any(|f| f == k));
    }
    m
}

/// A body for an HTTP sink, with its content type.
pub fn http_body(
    format: HttpLogFormat,
    events: &[Event],
    fields: &[String],
) -> (Bytes, &'static str) {
    match format {
        HttpLogFormat::Json => {
            let arr: Vec<Value> = events
                .iter()
                .map(|e| Value::Object(event_object(e, fields)))
                .collect();
            (
                Bytes::from(Value::Array(arr).to_string()),
                "application/json",
            )
        }
        HttpLogFormat::Ndjson => {
            let mut out = String::new();
            for e in events {
                out.push_str(&Value::Object(event_object(e, fields)).to_string());
                out.push('\n');
            }
            (Bytes::from(out), "application/x-ndjson")
        }
        HttpLogFormat::Splunk => {
            // HEC accepts several event objects concatenated in one request.
            let mut out = String::new();
            for e in events {
                let obj = json!({
                    "time": e.ts_ms as f64 / 1000.0,
                    "source": "clientele",
                    "sourcetype": "_json",
                    "event": Value::Object(event_object(e, fields)),
                });
                out.push_str(&obj.to_string());
                out.push('\n');
            }
            (Bytes::from(out), "application/json")
        }
        HttpLogFormat::Loki => {
            // Stream labels stay low-cardinality (service, API, level); the consumer and
            // everything else go in the line, where LogQL's `| json` reads them.
            let mut streams: std::collections::BTreeMap<
                (String, &'static str),
                Vec<(i64, String)>,
            > = std::collections::BTreeMap::new();
            for e in events {
                let level = if is_error(e) { "error" } else { "info" };
                let api = e.api.clone().unwrap_or_else(|| "none".into());
                let line = Value::Object(event_object(e, fields)).to_string();
                streams
                    .entry((api, level))
                    .or_default()
                    .push((e.ts_ms, line));
            }
            let streams: Vec<Value> = streams
                .into_iter()
                .map(|((api, level), mut values)| {
                    values.sort_by_key(|(ts, _)| *ts);
                    let values: Vec<Value> = values
                        .into_iter()
                        .map(|(ts, line)| {
                            json!([(i128::from(ts.max(0)) * 1_000_000).to_string(), line])
                        })
                        .collect();
                    json!({
                        "stream": {"service_name": "clientele", "api": api, "level": level},
                        "values": values,
                    })
                })
                .collect();
            (
                Bytes::from(json!({ "streams": streams }).to_string()),
                "application/json",
            )
        }
    }
}

/// An NDJSON file that rotates by size: `path` is current, `path.1` the newest rotated file,
/// up to `path.<keep>`; older ones are deleted.
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: Option<File>,
    size: u64,
}

impl RotatingFile {
    pub fn new(path: PathBuf, max_bytes: u64, keep: u32) -> RotatingFile {
        RotatingFile {
            path,
            max_bytes,
            keep,
            file: None,
            size: 0,
        }
    }

    fn open(&mut self) -> std::io::Result<&mut File> {
        if self.file.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.size = f.metadata()?.len();
            self.file = Some(f);
        }
        // Just set above when it was None.
        self.file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("file not open"))
    }

    fn rotated(path: &Path, i: u32) -> PathBuf {
        let mut s = path.as_os_str().to_owned();
        s.push(format!(".{i}"));
        PathBuf::from(s)
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        if let Some(mut f) = self.file.take() {
            f.flush()?;
        }
        if self.keep == 0 {
            std::fs::remove_file(&self.path).or_else(ignore_missing)?;
        } else {
            std::fs::remove_file(Self::rotated(&self.path, self.keep)).or_else(ignore_missing)?;
            for i in (1..self.keep).rev() {
                std::fs::rename(
                    Self::rotated(&self.path, i),
                    Self::rotated(&self.path, i + 1),
                )
                .or_else(ignore_missing)?;
            }
            std::fs::rename(&self.path, Self::rotated(&self.path, 1)).or_else(ignore_missing)?;
        }
        self.size = 0;
        Ok(())
    }

    /// Appends lines (each ending in '\n'), rotating before a line that would pass the limit.
    pub fn write_lines(&mut self, lines: &[String]) -> std::io::Result<()> {
        for line in lines {
            self.open()?;
            if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
                self.rotate()?;
            }
            let f = self.open()?;
            f.write_all(line.as_bytes())?;
            self.size += line.len() as u64;
        }
        if let Some(f) = self.file.as_mut() {
            f.flush()?;
        }
        Ok(())
    }
}

fn ignore_missing(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

/// Writes a batch to the file on the blocking pool (file I/O must not stall the runtime).
pub async fn write_file_batch(
    file: Arc<Mutex<RotatingFile>>,
    events: Vec<Event>,
    fields: Arc<Vec<String>>,
) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || {
        let lines: Vec<String> = events
            .iter()
            .map(|e| {
                let mut s = Value::Object(event_object(e, &fields)).to_string();
                s.push('\n');
                s
            })
            .collect();
        let mut f = file
            .lock()
            .map_err(|_| std::io::Error::other("file sink lock poisoned"))?;
        f.write_lines(&lines)
    })
    .await
    .map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::event;

    #[test]
    fn sampling_keeps_errors_and_about_the_rate() {
        let mut kept = 0;
        for i in 0..10_000 {
            let mut e = event("a", 200, 1.0);
            e.id = format!("id{i}");
            if keep(&e, 0.1) {
                kept += 1;
            }
            e.status = 500;
            assert!(keep(&e, 0.0), "errors are always kept");
        }
        assert!((800..1200).contains(&kept), "{kept}");
    }

    #[test]
    fn fields_narrow_the_object() {
        let e = event("acme", 200, 1.0);
        let m = event_object(&e, &["ts".into(), "consumer".into()]);
        assert_eq!(m.len(), 2);
        assert_eq!(m["consumer"], "acme");
        assert!(m["ts"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn rotation_keeps_n_files_of_bounded_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ev.ndjson");
        let mut f = RotatingFile::new(path.clone(), 100, 2);
        let line = format!("{}\n", "x".repeat(39)); // 40 bytes: two lines per file
        for _ in 0..9 {
            f.write_lines(std::slice::from_ref(&line)).unwrap();
        }
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).ok();
        assert_eq!(
            size(&path),
            Some(40),
            "9 lines: 4 files of 2, current holds 1"
        );
        assert_eq!(size(&RotatingFile::rotated(&path, 1)), Some(80));
        assert_eq!(size(&RotatingFile::rotated(&path, 2)), Some(80));
        assert_eq!(size(&RotatingFile::rotated(&path, 3)), None, "keep = 2");
    }

    #[test]
    fn loki_and_splunk_bodies() {
        let mut a = event("acme", 200, 1.0);
        a.ts_ms = 2000;
        let mut b = event("acme", 500, 1.0);
        b.ts_ms = 1000;
        let (body, _) = http_body(HttpLogFormat::Loki, &[a.clone(), b.clone()], &[]);
        let v: Value = serde_json::from_slice(&body).unwrap();
        let streams = v["streams"].as_array().unwrap();
        assert_eq!(streams.len(), 2, "info and error streams");
        assert_eq!(streams[0]["values"][0][0], "1000000000");
        let line: Value =
            serde_json::from_str(streams[0]["values"][0][1].as_str().unwrap()).unwrap();
        assert_eq!(line["consumer"], "acme");
        let (body, _) = http_body(HttpLogFormat::Splunk, &[a], &[]);
        let first: Value =
            serde_json::from_str(std::str::from_utf8(&body).unwrap().lines().next().unwrap())
                .unwrap();
        assert_eq!(first["time"], 2.0);
        assert_eq!(first["event"]["consumer"], "acme");
    }
}
