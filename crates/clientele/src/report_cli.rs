//! `clientele report NAME`: the portfolio and the outreach, pricing, SLA and deprecation reports from a
//! running server's admin API, as a table, JSON (`--json`) or CSV (`--csv`, the server's own
//! CSV answer).

use anyhow::Result;
use clap::{Args, ValueEnum};
use http::Method;
use serde_json::Value;

use crate::Remote;
use crate::cli::{array, connect, output, print_table, seg, str_of};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ReportName {
    /// Active, new, churned, reactivated and stagnating consumers; health per API.
    Portfolio,
    /// Whom to contact now, why, and a draft message.
    Outreach,
    /// Consumers whose plan does not fit their usage, with a recommended plan.
    Pricing,
    /// Observed latency and availability per consumer, a proposed SLO, burn rates.
    Sla,
    /// Deprecated operations, their callers' migration pace and a proposed sunset.
    Deprecation,
    /// Sessions that repeat the same call, and what would save the round trips.
    Agents,
}

#[derive(Args)]
pub struct ReportArgs {
    /// Which report.
    #[arg(value_enum)]
    name: ReportName,
    /// portfolio: the month, YYYY-MM (default: the current month).
    #[arg(long)]
    month: Option<String>,
    /// outreach, pricing, sla, deprecation, agents: the end of the window (RFC 3339 or epoch ms; default now).
    #[arg(long)]
    to: Option<String>,
    /// outreach, pricing, sla: at most this many items.
    #[arg(long)]
    limit: Option<u32>,
    /// Print the server's CSV instead of a table.
    #[arg(long, conflicts_with = "json")]
    csv: bool,
    #[command(flatten)]
    remote: Remote,
}

pub async fn run(args: ReportArgs) -> Result<()> {
    let client = connect(&args.remote)?;
    let mut query = Vec::new();
    if let Some(m) = &args.month {
        query.push(format!("month={}", seg(m)));
    }
    if let Some(t) = &args.to {
        query.push(format!("to={}", seg(t)));
    }
    if let Some(l) = args.limit {
        query.push(format!("limit={l}"));
    }
    if args.csv {
        query.push("format=csv".to_string());
    }
    let path = match args.name {
        ReportName::Portfolio => "/v1/portfolio",
        ReportName::Outreach => "/v1/reports/outreach",
        ReportName::Pricing => "/v1/reports/pricing",
        ReportName::Sla => "/v1/reports/sla",
        ReportName::Deprecation => "/v1/reports/deprecation",
        ReportName::Agents => "/v1/reports/agents",
    };
    let url = if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", query.join("&"))
    };
    let report = client.call(Method::GET, &url, None).await?;
    if args.csv {
        // The client hands a non-JSON answer over as a string.
        match &report {
            Value::String(text) => print!("{text}"),
            other => println!("{other}"),
        }
        return Ok(());
    }
    output(&args.remote, &report, || match args.name {
        ReportName::Portfolio => print_portfolio(&report),
        ReportName::Outreach => print_outreach(&report),
        ReportName::Pricing => print_pricing(&report),
        ReportName::Sla => print_sla(&report),
        ReportName::Deprecation => print_deprecation(&report),
        ReportName::Agents => print_agents(&report),
    });
    Ok(())
}

fn print_portfolio(p: &Value) {
    let c = &p["consumers"];
    println!(
        "{}: {} active consumers ({} the month before): {} new, {} churned, {} reactivated, {} stagnating",
        str_of(p, "month"),
        str_of(c, "active"),
        str_of(c, "active_prev"),
        str_of(c, "new"),
        str_of(c, "churned"),
        str_of(c, "reactivated"),
        str_of(c, "stagnating"),
    );
    for (label, key) in [
        ("new", "new"),
        ("churned", "churned"),
        ("reactivated", "reactivated"),
        ("stagnating", "stagnating"),
    ] {
        let names: Vec<String> = array(&p["lists"], key)
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        if !names.is_empty() {
            println!("  {label}: {}", names.join(", "));
        }
    }
    println!();
    let rows: Vec<Vec<String>> = array(p, "apis")
        .iter()
        .map(|a| {
            vec![
                str_of(a, "api"),
                format!(
                    "{} ({})",
                    str_of(a, "active_consumers"),
                    str_of(a, "active_consumers_prev")
                ),
                str_of(a, "error_rate"),
                str_of(a, "p95_ms"),
                format!(
                    "{} ({})",
                    str_of(a, "satisfaction"),
                    str_of(a, "satisfaction_prev")
                ),
            ]
        })
        .collect();
    print_table(
        &[
            "API",
            "CONSUMERS (PREV)",
            "ERROR RATE",
            "P95 MS",
            "SATISFACTION (PREV)",
        ],
        &rows,
    );
    if let Some(t) = p.get("top_plan").filter(|t| !t.is_null()) {
        println!(
            "\nplan {}: experience {} (satisfaction {} against {})",
            str_of(t, "plan"),
            str_of(t, "experience"),
            str_of(t, "satisfaction"),
            str_of(t, "satisfaction_prev")
        );
    }
}

fn print_outreach(r: &Value) {
    let items = array(r, "items");
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|i| {
            vec![
                str_of(i, "consumer"),
                str_of(i, "plan"),
                str_of(i, "reason"),
                str_of(i, "score"),
                str_of(i, "since"),
            ]
        })
        .collect();
    print_table(&["CONSUMER", "PLAN", "REASON", "SCORE", "SINCE"], &rows);
    for i in items {
        println!("\n{}: {}", str_of(i, "consumer"), str_of(i, "message"));
    }
}

fn print_pricing(r: &Value) {
    let rows: Vec<Vec<String>> = array(r, "items")
        .iter()
        .map(|i| {
            vec![
                str_of(i, "consumer"),
                str_of(i, "plan"),
                str_of(i, "recommended_plan"),
                str_of(i, "reason"),
            ]
        })
        .collect();
    print_table(&["CONSUMER", "PLAN", "RECOMMENDED", "REASON"], &rows);
}

fn print_sla(r: &Value) {
    let rows: Vec<Vec<String>> = array(r, "items")
        .iter()
        .map(|i| {
            let burn: Vec<String> = array(i, "burn")
                .iter()
                .map(|b| {
                    format!(
                        "{}={}{}",
                        str_of(b, "window"),
                        str_of(b, "burn_rate"),
                        if b["alerting"] == Value::Bool(true) {
                            "!"
                        } else {
                            ""
                        }
                    )
                })
                .collect();
            vec![
                str_of(i, "consumer"),
                str_of(i, "p50_ms"),
                str_of(i, "p95_ms"),
                str_of(i, "p99_ms"),
                str_of(i, "availability"),
                format!(
                    "p95 <= {} ms, {}",
                    str_of(&i["proposed"], "latency_p95_ms"),
                    str_of(&i["proposed"], "availability")
                ),
                burn.join(" "),
            ]
        })
        .collect();
    print_table(
        &[
            "CONSUMER",
            "P50 MS",
            "P95 MS",
            "P99 MS",
            "AVAILABILITY",
            "PROPOSED SLO",
            "BURN",
        ],
        &rows,
    );
}

fn print_deprecation(r: &Value) {
    let items = array(r, "items");
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|i| {
            vec![
                str_of(i, "api"),
                str_of(i, "route"),
                str_of(i, "replaced_by"),
                str_of(i, "sunset"),
                str_of(i, "proposed_sunset"),
                str_of(i, "reason"),
            ]
        })
        .collect();
    print_table(
        &["API", "ROUTE", "REPLACED BY", "SUNSET", "PROPOSED", "WHY"],
        &rows,
    );
}

fn print_agents(r: &Value) {
    let mut rows = Vec::new();
    for i in array(r, "items") {
        for c in array(i, "calls") {
            rows.push(vec![
                str_of(i, "consumer"),
                str_of(i, "looping_sessions"),
                str_of(c, "call"),
                str_of(c, "calls"),
                str_of(c, "saved_round_trips"),
            ]);
        }
    }
    print_table(
        &[
            "CONSUMER",
            "LOOPING SESSIONS",
            "CALL",
            "CALLS",
            "SAVED ROUND TRIPS",
        ],
        &rows,
    );
}
