//! `clientele import FILE...`: sends access logs to a running server's `POST /v1/events`.
//!
//! Each line is read as JSON and converted from whichever shape it has: Clientele's own event
//! (NDJSON as the API takes it), nginx's `log_format ... escape=json`, Kong's file-log or
//! http-log, or Envoy's JSON access log. Lines without an `id` get one derived from the raw line,
//! so re-running an import after a crash stores every event once.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use clap::Args;
use clientele_http::{Outbound, Posted, RetryPolicy};
use http::{Request, StatusCode, header};
use http_body_util::Full;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::Remote;
use crate::logformat::{Format, convert_line};

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// NDJSON files: Clientele events, or nginx/Kong/Envoy JSON access logs.
    #[arg(required = true, value_name = "FILE")]
    pub(crate) files: Vec<PathBuf>,
    /// Events per request.
    #[arg(long, default_value_t = 5000)]
    pub(crate) batch: usize,
    /// The shape of every line; detected per line when absent.
    #[arg(long, value_enum)]
    pub(crate) format: Option<Format>,
    /// Keep following FILE as it grows, across logrotate's rename and copytruncate rotations,
    /// until interrupted. Exactly once across restarts: the offset is saved after each batch the
    /// server accepted.
    #[arg(long)]
    follow: bool,
    /// With --follow: where the offset is kept (default: `.NAME.clientele-follow` beside FILE).
    #[arg(long, value_name = "PATH", requires = "follow")]
    state: Option<PathBuf>,
    /// With --follow: how often to look for new lines and rotations, in milliseconds.
    #[arg(long, default_value_t = 250, value_name = "MS")]
    poll_ms: u64,
    #[command(flatten)]
    remote: Remote,
}

/// Where a line came from, for messages.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    pub(crate) file: usize,
    pub(crate) line: usize,
}

pub(crate) struct Batch {
    pub(crate) body: Vec<u8>,
    pub(crate) origins: Vec<Origin>,
}

#[derive(Debug, Default)]
struct Totals {
    lines: u64,
    accepted: u64,
    duplicates: u64,
    rejected: u64,
    reasons: Vec<String>,
}

impl Totals {
    fn reject(&mut self, reason: String) {
        self.rejected += 1;
        if self.reasons.len() < 10 {
            self.reasons.push(reason);
        }
    }
}

pub async fn run(args: ImportArgs) -> Result<()> {
    if args.batch == 0 || args.batch > 100_000 {
        bail!("--batch must be between 1 and 100000");
    }
    let token = crate::cli::token(&args.remote)?;
    let base = args.remote.admin_url.trim_end_matches('/').to_string();
    let http = crate::client::http(Duration::from_secs(120))?;
    if args.follow {
        let [file] = args.files.as_slice() else {
            bail!("--follow takes exactly one FILE; run one follower per log");
        };
        let state = match &args.state {
            Some(p) => p.clone(),
            None => crate::follow::default_state_path(file),
        };
        return crate::follow::run(crate::follow::Follow {
            path: file.clone(),
            state,
            batch: args.batch,
            format: args.format,
            poll: Duration::from_millis(args.poll_ms.clamp(10, 60_000)),
            json: args.remote.json,
            http,
            base,
            token,
        })
        .await;
    }
    let names: Vec<String> = args.files.iter().map(|p| p.display().to_string()).collect();
    let mut total_bytes = 0u64;
    for p in &args.files {
        total_bytes += std::fs::metadata(p)
            .with_context(|| format!("cannot read {}", p.display()))?
            .len();
    }
    let bar = ProgressBar::with_draw_target(Some(total_bytes), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {msg} [{elapsed_precise}, eta {eta}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );

    let started = Instant::now();
    let mut totals = Totals::default();
    // A fatal error (token refused, server gone) still prints how far the import got; a
    // re-run is safe, since every line keeps its id.
    let outcome: Result<()> = async {
        let mut in_flight: JoinSet<(Vec<Origin>, Result<Value, SendError>)> = JoinSet::new();
        let mut batch = Batch {
            body: Vec::new(),
            origins: Vec::new(),
        };
        for (file_idx, path) in args.files.iter().enumerate() {
            let file = std::fs::File::open(path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            let mut reader = BufReader::with_capacity(
                1 << 20,
                CountingReader {
                    inner: file,
                    bar: bar.clone(),
                },
            );
            let mut line = Vec::new();
            let mut line_no = 0;
            loop {
                line.clear();
                let n = reader
                    .read_until(b'\n', &mut line)
                    .with_context(|| format!("reading {}", path.display()))?;
                if n == 0 {
                    break;
                }
                line_no += 1;
                let text = trim_line(&line);
                if text.is_empty() {
                    continue;
                }
                totals.lines += 1;
                match convert_line(text, args.format) {
                    Ok(event) => {
                        // Serializing a JSON value cannot fail.
                        let _ = serde_json::to_writer(&mut batch.body, &event);
                        batch.body.push(b'\n');
                        batch.origins.push(Origin {
                            file: file_idx,
                            line: line_no,
                        });
                    }
                    Err(reason) => {
                        totals.reject(format!("{}:{line_no}: {reason}", names[file_idx]))
                    }
                }
                if batch.origins.len() >= args.batch {
                    let full = std::mem::replace(
                        &mut batch,
                        Batch {
                            body: Vec::new(),
                            origins: Vec::new(),
                        },
                    );
                    while in_flight.len() >= 4 {
                        if let Some(done) = in_flight.join_next().await {
                            settle(done, &mut totals, &names)?;
                        }
                    }
                    in_flight.spawn(send_batch(http.clone(), base.clone(), token.clone(), full));
                    bar.set_message(format!(
                        "accepted {} rejected {}",
                        totals.accepted, totals.rejected
                    ));
                }
            }
        }
        if !batch.origins.is_empty() {
            while in_flight.len() >= 4 {
                if let Some(done) = in_flight.join_next().await {
                    settle(done, &mut totals, &names)?;
                }
            }
            in_flight.spawn(send_batch(http.clone(), base.clone(), token.clone(), batch));
        }
        while let Some(done) = in_flight.join_next().await {
            settle(done, &mut totals, &names)?;
        }
        Ok(())
    }
    .await;
    bar.finish_and_clear();

    let secs = started.elapsed().as_secs_f64();
    let rate = totals.lines as f64 / secs.max(1e-9);
    if args.remote.json {
        println!(
            "{}",
            json!({"files": names, "lines": totals.lines, "accepted": totals.accepted, "duplicates": totals.duplicates,
                "rejected": totals.rejected, "first_rejections": totals.reasons, "elapsed_s": secs, "events_per_s": rate})
        );
    } else {
        println!("files       {}", names.join(", "));
        println!("lines       {}", totals.lines);
        println!(
            "accepted    {} ({} were already imported)",
            totals.accepted, totals.duplicates
        );
        println!("rejected    {}", totals.rejected);
        println!("elapsed     {secs:.2} s ({rate:.0} lines/s)");
        for reason in &totals.reasons {
            println!("  {reason}");
        }
    }
    outcome?;
    if totals.rejected > 0 {
        bail!(
            "{} lines were rejected; the rest were imported",
            totals.rejected
        );
    }
    Ok(())
}

pub(crate) fn trim_line(line: &[u8]) -> &[u8] {
    let end = line
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    let start = line
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(end);
    &line[start..end]
}

/// Counts bytes read into the progress bar.
struct CountingReader<R> {
    inner: R,
    bar: ProgressBar,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

fn settle(
    done: std::result::Result<(Vec<Origin>, Result<Value, SendError>), tokio::task::JoinError>,
    totals: &mut Totals,
    names: &[String],
) -> Result<()> {
    let (origins, result) = done.map_err(|e| anyhow!("a batch task failed: {e}"))?;
    let answer = Answered::of(&result.map_err(|e| anyhow!(e.message))?);
    totals.accepted += answer.accepted;
    totals.duplicates += answer.duplicates;
    for (index, error) in answer.rejected {
        let place = origins.get(index).map_or_else(
            || "?".to_string(),
            |o| format!("{}:{}", names[o.file], o.line),
        );
        totals.reject(format!(
            "{place}: {}",
            error.as_deref().unwrap_or("rejected")
        ));
    }
    Ok(())
}

/// What `POST /v1/events` answered for one batch: the counts, and each rejected line's index
/// in the batch with the server's reason.
pub(crate) struct Answered {
    pub(crate) accepted: u64,
    pub(crate) duplicates: u64,
    pub(crate) rejected: Vec<(usize, Option<String>)>,
}

impl Answered {
    pub(crate) fn of(answer: &Value) -> Answered {
        let count = |key: &str| answer.get(key).and_then(Value::as_u64).unwrap_or(0);
        let rejected = answer
            .get("rejected")
            .or_else(|| answer.get("errors"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|r| {
                (
                    r.get("index").and_then(Value::as_u64).unwrap_or(0) as usize,
                    r.get("error").and_then(Value::as_str).map(str::to_string),
                )
            })
            .collect();
        Answered {
            accepted: count("accepted"),
            duplicates: count("duplicates"),
            rejected,
        }
    }
}

/// Why a batch was not answered; `retry` says whether the same batch may succeed later
/// (server unavailable) or never will (token refused, batch too large).
#[derive(Debug)]
pub(crate) struct SendError {
    pub(crate) retry: bool,
    pub(crate) message: String,
}

/// Posts one batch with the shared retry policy (connection failures, timeouts, 429 and 5xx).
/// A 400 (nothing valid) is an answer, not a failure: its `errors` say why.
pub(crate) async fn send_batch(
    http: Outbound<Full<Bytes>>,
    base: String,
    token: String,
    batch: Batch,
) -> (Vec<Origin>, Result<Value, SendError>) {
    let body = Bytes::from(batch.body);
    let policy = RetryPolicy::new(4, Duration::from_millis(200), Duration::from_secs(3));
    let mut attempt = 1;
    loop {
        let req = match Request::post(format!("{base}/v1/events"))
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/x-ndjson")
            .body(Full::new(body.clone()))
        {
            Ok(r) => r,
            Err(e) => {
                let message = format!("invalid admin URL {base}: {e}");
                return (
                    batch.origins,
                    Err(SendError {
                        retry: false,
                        message,
                    }),
                );
            }
        };
        let (result, error) = match http.fetch(req).await {
            Ok((parts, bytes)) => match answer(parts.status, &bytes) {
                Ok(value) => return (batch.origins, Ok(value)),
                Err((false, message)) => {
                    return (
                        batch.origins,
                        Err(SendError {
                            retry: false,
                            message,
                        }),
                    );
                }
                Err((true, e)) => (
                    Ok(Posted {
                        status: parts.status.as_u16(),
                        retry_after: clientele_http::parse_retry_after(&parts.headers),
                    }),
                    e,
                ),
            },
            Err(e) => {
                let text = format!(
                    "cannot reach the admin API at {base}: {e}; is `clientele serve` running?"
                );
                (Err(e), text)
            }
        };
        match policy.next_delay(attempt, &result) {
            Some(wait) => tokio::time::sleep(wait).await,
            None => {
                let message = error;
                return (
                    batch.origins,
                    Err(SendError {
                        retry: true,
                        message,
                    }),
                );
            }
        }
        attempt += 1;
    }
}

/// What an answer to a batch means: the report, or an error with whether to try again.
fn answer(status: StatusCode, bytes: &[u8]) -> Result<Value, (bool, String)> {
    let value: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    let detail = value.get("detail").and_then(Value::as_str).unwrap_or("");
    match status {
        StatusCode::ACCEPTED | StatusCode::BAD_REQUEST => Ok(value),
        StatusCode::PAYLOAD_TOO_LARGE => Err((
            false,
            "a batch is larger than the server accepts; lower --batch".into(),
        )),
        StatusCode::UNAUTHORIZED => Err((
            false,
            "the admin API refused the token; set --token or CLIENTELE_ADMIN_TOKEN".into(),
        )),
        s if s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error() => Err((
            true,
            format!("the server is unavailable ({}): {detail}", s.as_u16()),
        )),
        other => Err((false, format!("{} {detail}", other.as_u16()))),
    }
}
