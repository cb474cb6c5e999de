//! The page frame (navigation, time-range picker, auto-refresh), query parameters and the
//! pieces pages are built from (tiles, sortable table headers).

use std::fmt::Write;

use axum::http::StatusCode;
use clientele_core::time::{format_ts, parse_ts};

use crate::UiError;
use crate::html::{datetime_local, esc, url_enc, when};

/// Query parameters in order, decoded. Repeated names keep their first value.
#[derive(Debug, Clone, Default)]
pub struct Params(pub Vec<(String, String)>);

impl Params {
    pub fn parse(raw: Option<&str>) -> Params {
        let mut out: Vec<(String, String)> = Vec::new();
        for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (k, v) = (decode(k), decode(v));
            if !out.iter().any(|(have, _)| *have == k) {
                out.push((k, v));
            }
        }
        Params(out)
    }

    /// The value of `name`, if present and not blank.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    }

    pub fn owned(&self, name: &str) -> Option<String> {
        self.get(name).map(str::to_string)
    }
}

/// `application/x-www-form-urlencoded` decoding; a malformed escape is kept as written.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The time-range presets: name, length, label.
pub const PRESETS: [(&str, i64, &str); 5] = [
    ("1h", 3_600_000, "Last hour"),
    ("6h", 6 * 3_600_000, "Last 6 hours"),
    ("24h", 24 * 3_600_000, "Last 24 hours"),
    ("7d", 7 * 86_400_000, "Last 7 days"),
    ("30d", 30 * 86_400_000, "Last 30 days"),
];
const REFRESH_CHOICES: [(u32, &str); 5] = [
    (0, "Off"),
    (15, "Every 15 s"),
    (30, "Every 30 s"),
    (60, "Every minute"),
    (300, "Every 5 minutes"),
];
/// Parameters that belong to the time range, kept on every link.
const RANGE_KEYS: [&str; 4] = ["range", "from", "to", "refresh"];

/// The window a page shows.
#[derive(Debug, Clone)]
pub struct Range {
    /// A preset name, or `None` for a custom window.
    pub preset: Option<&'static str>,
    pub from_ms: i64,
    pub to_ms: i64,
    /// Seconds between automatic reloads; 0 = off.
    pub refresh_s: u32,
}

impl Range {
    /// From `range` (a preset or `custom`), `from`, `to` (`datetime-local` values in UTC, RFC
    /// 3339 or epoch ms) and `refresh` (seconds). Default: the last 24 hours, refreshed every
    /// minute; a custom window is fixed, so it is not refreshed unless asked.
    pub fn from_params(p: &Params, now_ms: i64) -> Result<Range, UiError> {
        let custom = match p.get("range") {
            Some("custom") => true,
            Some(name) => {
                if !PRESETS.iter().any(|(n, _, _)| *n == name) {
                    return Err(UiError::bad_request(format!(
                        "range {name:?} is not one of 1h, 6h, 24h, 7d, 30d or custom"
                    )));
                }
                false
            }
            None => p.get("from").is_some(),
        };
        let (preset, from_ms, to_ms) = if custom {
            let from = p
                .get("from")
                .ok_or_else(|| UiError::bad_request("a custom range needs a start (from)"))?;
            let from_ms =
                parse_local(from).map_err(|e| UiError::bad_request(format!("from: {e}")))?;
            let to_ms = match p.get("to") {
                Some(t) => parse_local(t).map_err(|e| UiError::bad_request(format!("to: {e}")))?,
                None => now_ms,
            };
            if from_ms >= to_ms {
                return Err(UiError::bad_request(
                    "the start (from) must be before the end (to)",
                ));
            }
            (None, from_ms, to_ms)
        } else {
            let name = p.get("range").unwrap_or("24h");
            let (name, len, _) = PRESETS
                .iter()
                .copied()
                .find(|(n, _, _)| *n == name)
                .unwrap_or(PRESETS[2]);
            (Some(name), now_ms - len, now_ms)
        };
        let refresh_s = match p.get("refresh") {
            None if preset.is_some() => 60,
            None => 0,
            Some(v) => v
                .parse::<u32>()
                .ok()
                .filter(|s| REFRESH_CHOICES.iter().any(|(c, _)| c == s))
                .ok_or_else(|| {
                    UiError::bad_request(format!(
                        "refresh {v:?} must be one of 0, 15, 30, 60 or 300 (seconds)"
                    ))
                })?,
        };
        Ok(Range {
            preset,
            from_ms,
            to_ms,
            refresh_s,
        })
    }

    pub fn start_rfc3339(&self) -> String {
        format_ts(self.from_ms)
    }

    pub fn end_rfc3339(&self) -> String {
        format_ts(self.to_ms)
    }

    /// The series step for charts: the finest that gives at most 200 points, so lines stay
    /// readable at chart width (1 h → 1m, 24 h → 15m, 7 d → 1h, 30 d → 6h).
    pub fn chart_step(&self) -> String {
        const STEPS: [(&str, i64); 7] = [
            ("1m", 60_000),
            ("5m", 300_000),
            ("15m", 900_000),
            ("1h", 3_600_000),
            ("6h", 21_600_000),
            ("1d", 86_400_000),
            ("7d", 604_800_000),
        ];
        let span = self.to_ms - self.from_ms;
        STEPS
            .iter()
            .find(|(_, ms)| span / ms <= 200)
            .map_or("7d", |(name, _)| name)
            .to_string()
    }

    pub fn label(&self) -> String {
        match self.preset {
            Some(name) => PRESETS
                .iter()
                .find(|(n, _, _)| *n == name)
                .map_or_else(String::new, |(_, _, l)| l.to_string()),
            None => format!("{} to {}", when(self.from_ms), when(self.to_ms)),
        }
    }
}

/// A `datetime-local` value (`2026-11-24T19:05`, taken as UTC), RFC 3339 or epoch ms.
fn parse_local(s: &str) -> Result<i64, String> {
    if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M") {
        return Ok(t.and_utc().timestamp_millis());
    }
    if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S") {
        return Ok(t.and_utc().timestamp_millis());
    }
    parse_ts(s).map_err(|_| format!("{s:?} is not a time; use 2026-11-24T19:05 (UTC)"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    Admin,
    Portal,
}

/// Everything the frame of a page needs.
pub struct Ctx {
    pub area: Area,
    /// The path of this page, e.g. `/consumers`.
    pub path: String,
    pub params: Params,
    pub range: Range,
    pub csrf: String,
    /// Who is signed in, for the header.
    pub who: String,
}

impl Ctx {
    /// A link to `path` that keeps the time range, and this page's other parameters when it is
    /// the same page, with `changes` applied (an empty value removes a parameter).
    pub fn href(&self, path: &str, changes: &[(&str, &str)]) -> String {
        let same_page = path == self.path;
        let mut kept: Vec<(String, String)> = self
            .params
            .0
            .iter()
            .filter(|(k, _)| same_page || RANGE_KEYS.contains(&k.as_str()))
            .filter(|(k, _)| !changes.iter().any(|(c, _)| c == k))
            .cloned()
            .collect();
        for (k, v) in changes {
            if !v.is_empty() {
                kept.push((k.to_string(), v.to_string()));
            }
        }
        if kept.is_empty() {
            return path.to_string();
        }
        let q: Vec<String> = kept
            .iter()
            .map(|(k, v)| format!("{}={}", url_enc(k), url_enc(v)))
            .collect();
        format!("{path}?{}", q.join("&"))
    }
}

/// A whole page: head, skip link, header with navigation and sign-out, the time-range
/// picker, then `body` inside `<main>`.
pub fn layout(ctx: &Ctx, title: &str, active: &str, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 4096);
    head(&mut out, title, ctx.range.refresh_s);
    let (home, nav, logout, area_label): (&str, Vec<(&str, &str)>, &str, &str) = match ctx.area {
        Area::Admin => (
            "/",
            vec![
                ("/", "Overview"),
                ("/consumers", "Consumers"),
                ("/routes", "Routes"),
                ("/findings", "Findings"),
                ("/governance", "Governance"),
                ("/deprecations", "Deprecations"),
                ("/portfolio", "Portfolio"),
                ("/reports/outreach", "Outreach"),
                ("/reports/pricing", "Pricing"),
                ("/reports/sla", "SLA"),
                ("/reports/agents", "Agents"),
                ("/ai", "AI"),
            ],
            "/logout",
            "Dashboard",
        ),
        Area::Portal => (
            "/portal",
            vec![("/portal", "Your usage")],
            "/portal/logout",
            "Developer portal",
        ),
    };
    let _ = write!(
        out,
        r##"<body data-refresh="{refresh}"><a class="skip" href="#main">Skip to content</a><header class="top"><a class="brand" href="{home_href}">Clientele <span>{area_label}</span></a><nav aria-label="Main"><ul>"##,
        refresh = ctx.range.refresh_s,
        home_href = esc(&ctx.href(home, &[])),
    );
    for (href, label) in nav {
        let current = if href == active {
            r#" aria-current="page""#
        } else {
            ""
        };
        let _ = write!(
            out,
            r#"<li><a href="{}"{current}>{label}</a></li>"#,
            esc(&ctx.href(href, &[]))
        );
    }
    let _ = write!(
        out,
        r#"</ul></nav><form class="signout" method="post" action="{logout}"><span class="who">Signed in as <strong>{who}</strong></span><input type="hidden" name="csrf" value="{csrf}"><button type="submit">Sign out</button></form></header>"#,
        who = esc(&ctx.who),
        csrf = esc(&ctx.csrf)
    );
    range_picker(&mut out, ctx);
    let _ = write!(
        out,
        r#"<main id="main" tabindex="-1"><h1>{}</h1>{body}</main><footer><p>Times are UTC. Showing {} ({} to {}).</p></footer></body></html>"#,
        esc(title),
        esc(&ctx.range.label()),
        when(ctx.range.from_ms),
        when(ctx.range.to_ms),
    );
    out
}

fn head(out: &mut String, title: &str, refresh_s: u32) {
    let _ = write!(
        out,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>{} · Clientele</title><link rel="stylesheet" href="/ui/style.css?v={v}"><script src="/ui/app.js?v={v}" defer></script>"#,
        esc(title),
        v = crate::assets::version(),
    );
    if refresh_s > 0 {
        // Without script, the browser reloads by itself; with it, app.js does (and pauses
        // while someone is typing or the tab is hidden).
        let _ = write!(
            out,
            r#"<noscript><meta http-equiv="refresh" content="{refresh_s}"></noscript>"#
        );
    }
    out.push_str("</head>");
}

fn range_picker(out: &mut String, ctx: &Ctx) {
    let r = &ctx.range;
    let _ = write!(
        out,
        r#"<form class="range" method="get" action="{}" aria-label="Time range and refresh">"#,
        esc(&ctx.path)
    );
    // The page's own parameters (filters, sorting) survive a change of range.
    for (k, v) in &ctx.params.0 {
        if !RANGE_KEYS.contains(&k.as_str()) {
            let _ = write!(
                out,
                r#"<input type="hidden" name="{}" value="{}">"#,
                esc(k),
                esc(v)
            );
        }
    }
    out.push_str(r#"<span class="field"><label for="f-range">Time range</label><select id="f-range" name="range" data-autosubmit>"#);
    for (name, _, label) in PRESETS {
        let sel = if r.preset == Some(name) {
            " selected"
        } else {
            ""
        };
        let _ = write!(out, r#"<option value="{name}"{sel}>{label}</option>"#);
    }
    let sel = if r.preset.is_none() { " selected" } else { "" };
    let _ = write!(
        out,
        r#"<option value="custom"{sel}>Custom…</option></select></span><span class="custom"><span class="field"><label for="f-from">From (UTC)</label><input id="f-from" type="datetime-local" name="from" value="{}"></span><span class="field"><label for="f-to">To (UTC)</label><input id="f-to" type="datetime-local" name="to" value="{}"></span></span><span class="field"><label for="f-refresh">Auto-refresh</label><select id="f-refresh" name="refresh" data-autosubmit>"#,
        datetime_local(r.from_ms),
        datetime_local(r.to_ms),
    );
    for (s, label) in REFRESH_CHOICES {
        let sel = if r.refresh_s == s { " selected" } else { "" };
        let _ = write!(out, r#"<option value="{s}"{sel}>{label}</option>"#);
    }
    out.push_str(r#"</select></span><button type="submit">Apply</button><span class="refresh-status" role="status" aria-live="polite"></span></form>"#);
}

/// A page for errors and for pages shown before sign-in: no navigation.
pub fn bare(title: &str, body: &str) -> String {
    let mut out = String::new();
    head(&mut out, title, 0);
    let _ = write!(
        out,
        r#"<body class="bare"><main id="main" tabindex="-1"><p class="brand">Clientele</p>{body}</main></body></html>"#
    );
    out
}

pub fn error_page(status: StatusCode, title: &str, detail: &str) -> String {
    bare(
        title,
        &format!(
            r#"<h1>{} <span class="status">{}</span></h1><p role="alert">{}</p><p><a href="/">Operator dashboard</a> · <a href="/portal">Developer portal</a></p>"#,
            esc(title),
            status.as_u16(),
            esc(detail)
        ),
    )
}

/// Headline numbers: `(label, value, id)`; the id lets tests find a figure.
pub fn tiles(items: &[(&str, String, &str)]) -> String {
    let mut out = String::from(r#"<dl class="tiles">"#);
    for (label, value, id) in items {
        let _ = write!(
            out,
            r#"<div class="tile"><dt>{}</dt><dd data-metric="{}">{}</dd></div>"#,
            esc(label),
            esc(id),
            esc(value)
        );
    }
    out.push_str("</dl>");
    out
}

/// A column header that sorts by `key` when followed. Sorting is a link, so it works without
/// script and the state is in the address (shareable, back button).
pub fn sort_th(ctx: &Ctx, label: &str, key: &str, sort: &str, desc: bool, numeric: bool) -> String {
    let active = key == sort;
    let next_dir = if active && desc { "asc" } else { "desc" };
    let aria = if active {
        if desc {
            r#" aria-sort="descending""#
        } else {
            r#" aria-sort="ascending""#
        }
    } else {
        ""
    };
    let arrow = if active {
        if desc { " ▼" } else { " ▲" }
    } else {
        ""
    };
    let class = if numeric { r#" class="num""# } else { "" };
    format!(
        r#"<th scope="col"{class}{aria}><a href="{href}">{label}<span aria-hidden="true">{arrow}</span><span class="visually-hidden">, sort {dir}</span></a></th>"#,
        href = esc(&ctx.href(&ctx.path, &[("sort", key), ("dir", next_dir)])),
        label = esc(label),
        dir = if next_dir == "desc" {
            "descending"
        } else {
            "ascending"
        }
    )
}

/// `sort` and `dir` from the parameters, checked against the page's sortable columns.
pub fn sort_params(p: &Params, allowed: &[&str], default: &str) -> Result<(String, bool), UiError> {
    let sort = p.get("sort").unwrap_or(default);
    if !allowed.contains(&sort) {
        return Err(UiError::bad_request(format!(
            "sort {sort:?} is not one of {}",
            allowed.join(", ")
        )));
    }
    let desc = match p.get("dir") {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(other) => {
            return Err(UiError::bad_request(format!(
                "dir {other:?} must be asc or desc"
            )));
        }
    };
    Ok((sort.to_string(), desc))
}

/// A bar for a share between 0 and 1, with its value as text for everyone.
pub fn meter(share: f64, label: &str) -> String {
    let pct = (share.clamp(0.0, 1.0) * 100.0).round() as u32;
    let class = if share >= 0.9 {
        "high"
    } else if share >= 0.7 {
        "mid"
    } else {
        "low"
    };
    format!(
        r#"<span class="meter {class}" role="img" aria-label="{label}"><span class="fill w{bucket}"></span></span>"#,
        label = esc(label),
        // Rounded up, so that any use at all shows.
        bucket = pct.div_ceil(5) * 5
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_decode_and_keep_the_first_value() {
        let p = Params::parse(Some("a=1&b=x+y%2Fz&a=2&c=%ZZ&d"));
        assert_eq!(p.get("a"), Some("1"));
        assert_eq!(p.get("b"), Some("x y/z"));
        assert_eq!(p.get("c"), Some("%ZZ"));
        assert_eq!(p.get("d"), None, "blank values count as absent");
        assert_eq!(Params::parse(Some("x=%")).get("x"), Some("%"));
        assert_eq!(Params::parse(Some("x=%4")).get("x"), Some("%4"));
    }

    #[test]
    fn ranges_from_presets_and_custom_windows() {
        let now = 1_767_225_600_000;
        let r = Range::from_params(&Params::default(), now).unwrap();
        assert_eq!(
            (r.preset, r.to_ms - r.from_ms, r.refresh_s),
            (Some("24h"), 86_400_000, 60)
        );
        let r = Range::from_params(&Params::parse(Some("range=1h&refresh=0")), now).unwrap();
        assert_eq!(
            (r.preset, r.to_ms - r.from_ms, r.refresh_s),
            (Some("1h"), 3_600_000, 0)
        );
        let step = |q: &str| {
            Range::from_params(&Params::parse(Some(q)), now)
                .unwrap()
                .chart_step()
        };
        assert_eq!(
            ["range=1h", "range=6h", "range=24h", "range=7d", "range=30d"].map(step),
            ["1m", "5m", "15m", "1h", "6h"]
        );
        let r = Range::from_params(
            &Params::parse(Some(
                "range=custom&from=2026-01-01T00:00&to=2026-01-01T02:30",
            )),
            now,
        )
        .unwrap();
        assert_eq!(
            (r.preset, r.from_ms, r.to_ms - r.from_ms, r.refresh_s),
            (None, now, 9_000_000, 0)
        );
        for bad in [
            "range=2y",
            "range=custom",
            "range=custom&from=yesterday",
            "range=custom&from=2026-01-02T00:00&to=2026-01-01T00:00",
            "refresh=7",
        ] {
            let e = Range::from_params(&Params::parse(Some(bad)), now).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn links_keep_the_range_and_this_pages_parameters() {
        let params = Params::parse(Some("range=7d&plan=pro&sort=p99"));
        let ctx = Ctx {
            area: Area::Admin,
            path: "/consumers".into(),
            range: Range::from_params(&params, 0).unwrap(),
            params,
            csrf: String::new(),
            who: String::new(),
        };
        assert_eq!(ctx.href("/routes", &[]), "/routes?range=7d");
        assert_eq!(
            ctx.href("/consumers", &[("sort", "requests"), ("plan", "")]),
            "/consumers?range=7d&sort=requests"
        );
        assert_eq!(
            ctx.href("/consumers/a b", &[]),
            "/consumers/a b?range=7d",
            "the caller encodes path segments"
        );
    }
}
