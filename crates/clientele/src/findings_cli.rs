//! `clientele findings`: what the detectors noticed, from the terminal.

use anyhow::Result;
use clap::Args;
use http::Method;
use serde_json::Value;

use crate::Remote;
use crate::cli::{array, connect, output, print_table, seg, str_of};

#[derive(Args)]
pub struct FindingsArgs {
    /// Only findings seen at or after this time (RFC 3339 or epoch milliseconds).
    #[arg(long)]
    from: Option<String>,
    /// Only findings that started at or before this time.
    #[arg(long)]
    to: Option<String>,
    /// Only this kind, e.g. error_spike, volume_drop, api_errors.
    #[arg(long)]
    kind: Option<String>,
    /// Only findings about this consumer.
    #[arg(long)]
    consumer: Option<String>,
    /// Only findings about this API.
    #[arg(long)]
    api: Option<String>,
    /// At most this many, most recent first.
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Run every detector now (POST /v1/findings/evaluate) before listing, e.g. after an import.
    #[arg(long)]
    evaluate: bool,
    /// With --evaluate: how far back to look, e.g. 24h or 7d.
    #[arg(long, value_name = "DURATION", requires = "evaluate")]
    lookback: Option<String>,
    #[command(flatten)]
    remote: Remote,
}

pub async fn run(args: FindingsArgs) -> Result<()> {
    let client = connect(&args.remote)?;
    if args.evaluate {
        let path = match &args.lookback {
            Some(l) => format!("/v1/findings/evaluate?lookback={}", seg(l)),
            None => "/v1/findings/evaluate".to_string(),
        };
        let report = client.call(Method::POST, &path, None).await?;
        if !args.remote.json {
            println!(
                "evaluated in {} ms: {} new, {} updated",
                str_of(&report, "elapsed_ms"),
                str_of(&report, "new"),
                str_of(&report, "updated")
            );
        }
    }
    let mut query = vec![format!("limit={}", args.limit)];
    for (name, value) in [
        ("from", &args.from),
        ("to", &args.to),
        ("kind", &args.kind),
        ("consumer", &args.consumer),
        ("api", &args.api),
    ] {
        if let Some(v) = value {
            query.push(format!("{name}={}", seg(v)));
        }
    }
    let list = client
        .call(
            Method::GET,
            &format!("/v1/findings?{}", query.join("&")),
            None,
        )
        .await?;
    output(&args.remote, &list, || {
        let findings = array(&list, "findings");
        if findings.is_empty() {
            println!("no findings");
            return;
        }
        let rows: Vec<Vec<String>> = findings
            .iter()
            .map(|f| {
                vec![
                    short_time(&str_of(f, "last_seen")),
                    str_of(f, "severity"),
                    str_of(f, "kind"),
                    match f.get("consumer") {
                        Some(Value::String(c)) => c.clone(),
                        _ => "(api)".to_string(),
                    },
                    str_of(f, "route"),
                    str_of(f, "id"),
                ]
            })
            .collect();
        print_table(
            &["LAST SEEN", "SEVERITY", "KIND", "CONSUMER", "ROUTE", "ID"],
            &rows,
        );
        println!();
        for f in findings {
            println!("{}  {}", str_of(f, "id"), str_of(f, "summary"));
        }
    });
    Ok(())
}

/// `2026-11-24T14:05:00.000Z` → `2026-11-24 14:05`.
fn short_time(rfc3339: &str) -> String {
    rfc3339
        .get(..16)
        .map(|s| s.replace('T', " "))
        .unwrap_or_else(|| rfc3339.to_string())
}
