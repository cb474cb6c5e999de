//! Server-side SVG line charts: no script, no external library, readable axes.
//!
//! A chart is drawn in a fixed 760×240 coordinate space and scales with the page. Every chart
//! comes with a text summary (`<desc>`, read by screen readers) and its data as a table behind
//! a disclosure, so nothing is only visible as a picture.

use std::fmt::Write;

use crate::html::{esc, int, pct, utc};

const W: f64 = 760.0;
const H: f64 = 240.0;
const ML: f64 = 64.0;
const MR: f64 = 16.0;
const MT: f64 = 14.0;
const MB: f64 = 30.0;

/// What the y axis measures, which decides how its numbers read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Unit {
    Count,
    Ms,
    Share,
}

impl Unit {
    fn fmt(self, v: f64) -> String {
        match self {
            Unit::Count if v >= 10_000.0 => format!("{}k", trim(v / 1000.0)),
            Unit::Count => trim(v),
            Unit::Ms if v >= 1000.0 => format!("{} s", trim(v / 1000.0)),
            Unit::Ms => format!("{} ms", trim(v)),
            Unit::Share => pct(v),
        }
    }

    fn fmt_exact(self, v: f64) -> String {
        match self {
            Unit::Count => int(v.round().max(0.0) as u64),
            Unit::Ms => crate::html::ms(Some(v)),
            Unit::Share => pct(v),
        }
    }
}

/// Up to two decimals, without trailing zeros.
fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// One line of a chart. `values` has one entry per time step; `None` leaves a gap.
pub struct Line<'a> {
    pub label: &'a str,
    pub values: Vec<Option<f64>>,
    /// Colour class from the stylesheet: `c-blue`, `c-red`, `c-amber`, `c-purple`.
    pub class: &'static str,
}

pub struct Chart<'a> {
    /// Unique within the page (used for element ids).
    pub id: &'a str,
    pub title: &'a str,
    pub unit: Unit,
    /// Start of each step, epoch ms.
    pub ts: &'a [i64],
    pub step_ms: i64,
    pub lines: Vec<Line<'a>>,
    /// A dashed horizontal line, e.g. the limit at 100%.
    pub reference: Option<(f64, &'a str)>,
    /// Release markers: a vertical line at each time with its label (`shop v2.3`); those
    /// outside the chart's span are left out.
    pub markers: &'a [(i64, String)],
}

/// A "nice" tick spacing (1, 2, 2.5 or 5 × 10^k) giving about `target` intervals up to `max`.
fn nice_step(max: f64, target: f64) -> f64 {
    let raw = (max / target).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let nice = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 2.5 {
        2.5
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// Spacing of time labels: the smallest that gives at most six.
fn time_step(span_ms: i64) -> i64 {
    const M: i64 = 60_000;
    const STEPS: [i64; 15] = [
        M,
        5 * M,
        10 * M,
        15 * M,
        30 * M,
        60 * M,
        120 * M,
        180 * M,
        360 * M,
        720 * M,
        1440 * M,
        2 * 1440 * M,
        7 * 1440 * M,
        14 * 1440 * M,
        30 * 1440 * M,
    ];
    STEPS
        .iter()
        .copied()
        .find(|s| span_ms / s <= 6)
        .unwrap_or(30 * 1440 * M)
}

fn time_label(ms: i64, tick_ms: i64, span_ms: i64) -> String {
    let Some(t) = utc(ms) else {
        return String::new();
    };
    if tick_ms >= 86_400_000 {
        t.format("%b %d").to_string()
    } else if span_ms > 86_400_000 {
        t.format("%b %d %H:%M").to_string()
    } else {
        t.format("%H:%M").to_string()
    }
}

impl Chart<'_> {
    pub fn render(&self) -> String {
        let n = self.ts.len();
        let mut out = String::new();
        let cap_id = format!("{}-title", self.id);
        let desc_id = format!("{}-desc", self.id);
        let _ = write!(
            out,
            r#"<figure class="chart" id="{id}" data-chart="{data}"><figcaption id="{cap_id}">{title}</figcaption>"#,
            id = esc(self.id),
            title = esc(self.title),
            data = esc(&self.hover_data()),
        );
        if n == 0 {
            out.push_str(r#"<p class="empty">No data in this range.</p></figure>"#);
            return out;
        }
        let t0 = self.ts[0];
        let t1 = self.ts[n - 1] + self.step_ms;
        let span = (t1 - t0).max(1);
        let max_v = self
            .lines
            .iter()
            .flat_map(|l| l.values.iter().flatten().copied())
            .chain(self.reference.map(|(v, _)| v))
            .fold(0.0_f64, f64::max);
        let floor_max = if self.unit == Unit::Count { 4.0 } else { 0.0 };
        let step = nice_step(max_v.max(floor_max).max(f64::EPSILON), 4.0);
        let y_max = ((max_v / step).ceil() * step).max(step);
        let pw = W - ML - MR;
        let ph = H - MT - MB;
        let x = |t: i64| ML + (t - t0) as f64 / span as f64 * pw;
        let y = |v: f64| MT + ph - v / y_max * ph;

        let _ = write!(
            out,
            r#"<svg viewBox="0 0 {W} {H}" role="img" aria-labelledby="{cap_id} {desc_id}" focusable="false"><desc id="{desc_id}">{desc}</desc>"#,
            desc = esc(&self.summary())
        );
        // Horizontal grid and y labels.
        out.push_str(r#"<g class="grid">"#);
        let mut v = 0.0;
        while v <= y_max + step / 2.0 {
            let yy = y(v);
            let _ = write!(
                out,
                r#"<line x1="{ML}" x2="{x2}" y1="{yy:.1}" y2="{yy:.1}"/><text class="ylabel" x="{lx}" y="{ty:.1}" text-anchor="end">{label}</text>"#,
                x2 = W - MR,
                lx = ML - 6.0,
                ty = yy + 4.0,
                label = esc(&self.unit.fmt(v))
            );
            v += step;
        }
        // Time labels.
        let tick = time_step(span);
        let mut t = (t0 + tick - 1).div_euclid(tick) * tick;
        while t <= t1 {
            let xx = x(t);
            let _ = write!(
                out,
                r#"<line class="xtick" x1="{xx:.1}" x2="{xx:.1}" y1="{MT}" y2="{yb}"/><text class="xlabel" x="{xx:.1}" y="{ly}" text-anchor="middle">{label}</text>"#,
                yb = MT + ph,
                ly = H - 10.0,
                label = esc(&time_label(t, tick, span))
            );
            t += tick;
        }
        out.push_str("</g>");
        let _ = write!(
            out,
            r#"<line class="axis" x1="{ML}" x2="{x2}" y1="{yb}" y2="{yb}"/>"#,
            x2 = W - MR,
            yb = MT + ph
        );
        if let Some((rv, label)) = self.reference {
            let yy = y(rv);
            let _ = write!(
                out,
                r#"<line class="ref" x1="{ML}" x2="{x2}" y1="{yy:.1}" y2="{yy:.1}"/><text class="reflabel" x="{x2}" y="{ty:.1}" text-anchor="end">{label}</text>"#,
                x2 = W - MR,
                ty = yy - 4.0,
                label = esc(label)
            );
        }
        // Release markers, under the lines.
        let shown: Vec<&(i64, String)> = self
            .markers
            .iter()
            .filter(|(at, _)| (t0..t1).contains(at))
            .collect();
        for (at, label) in &shown {
            let xx = x(*at);
            let _ = write!(
                out,
                r#"<g class="marker"><line x1="{xx:.1}" x2="{xx:.1}" y1="{MT}" y2="{yb}"/><text class="markerlabel" x="{lx:.1}" y="{ty}">{label}</text></g>"#,
                yb = MT + ph,
                lx = xx + 3.0,
                ty = MT + 10.0,
                label = esc(label)
            );
        }
        // The lines, each point at the middle of its step; a missing value breaks the line.
        let mid = self.step_ms / 2;
        for line in &self.lines {
            let mut d = String::new();
            let mut dots = String::new();
            let mut pen_down = false;
            for (i, v) in line.values.iter().enumerate() {
                let Some(v) = v else {
                    pen_down = false;
                    continue;
                };
                let (px, py) = (x(self.ts[i] + mid), y(*v));
                let _ = write!(d, "{}{px:.1},{py:.1} ", if pen_down { "L" } else { "M" });
                let isolated = !pen_down && line.values.get(i + 1).is_none_or(Option::is_none);
                if isolated || n <= 60 {
                    let _ = write!(dots, r#"<circle cx="{px:.1}" cy="{py:.1}" r="2.5"/>"#);
                }
                pen_down = true;
            }
            let _ = write!(
                out,
                r#"<g class="line {class}"><path d="{d}" fill="none"/>{dots}</g>"#,
                class = line.class,
                d = d.trim_end()
            );
        }
        out.push_str("</svg>");
        // The legend (in HTML, so it wraps and reads as text).
        out.push_str(r#"<ul class="legend">"#);
        for line in &self.lines {
            let _ = write!(
                out,
                r#"<li><span class="swatch {}" aria-hidden="true"></span>{}</li>"#,
                line.class,
                esc(line.label)
            );
        }
        out.push_str("</ul>");
        if !shown.is_empty() {
            out.push_str(r#"<p class="markers">Releases: "#);
            for (i, (at, label)) in shown.iter().enumerate() {
                let _ = write!(
                    out,
                    "{}{} ({})",
                    if i > 0 { ", " } else { "" },
                    esc(label),
                    esc(&crate::html::when(*at))
                );
            }
            out.push_str("</p>");
        }
        self.data_table(&mut out);
        out.push_str("</figure>");
        out
    }

    /// The numbers behind the chart for app.js's hover read-out (the page works without it;
    /// the data table below each chart has the same numbers).
    fn hover_data(&self) -> String {
        let unit = match self.unit {
            Unit::Count => "count",
            Unit::Ms => "ms",
            Unit::Share => "share",
        };
        serde_json::json!({
            "unit": unit,
            "ts": self.ts,
            "step": self.step_ms,
            "left": ML / W,
            "width": (W - ML - MR) / W,
            "lines": self.lines.iter().map(|l| serde_json::json!({
                "label": l.label,
                "class": l.class,
                "values": l.values,
            })).collect::<Vec<_>>(),
        })
        .to_string()
    }

    /// One sentence per line: its peak and its latest value.
    fn summary(&self) -> String {
        let mut parts = Vec::new();
        for line in &self.lines {
            let peak = line
                .values
                .iter()
                .enumerate()
                .filter_map(|(i, v)| v.map(|v| (i, v)))
                .max_by(|a, b| a.1.total_cmp(&b.1));
            match peak {
                Some((i, v)) => parts.push(format!(
                    "{}: peak {} at {}",
                    line.label,
                    self.unit.fmt_exact(v),
                    crate::html::when(self.ts[i])
                )),
                None => parts.push(format!("{}: no data", line.label)),
            }
        }
        format!("{}. {}.", self.title, parts.join("; "))
    }

    fn data_table(&self, out: &mut String) {
        let _ = write!(
            out,
            r#"<details class="data"><summary>Data table<span class="visually-hidden"> for {}</span></summary><div class="scroll"><table><thead><tr><th scope="col">Time (UTC)</th>"#,
            esc(self.title)
        );
        for line in &self.lines {
            let _ = write!(
                out,
                r#"<th scope="col" class="num">{}</th>"#,
                esc(line.label)
            );
        }
        out.push_str("</tr></thead><tbody>");
        for (i, t) in self.ts.iter().enumerate() {
            let _ = write!(out, "<tr><td>{}</td>", crate::html::when(*t));
            for line in &self.lines {
                let cell = line
                    .values
                    .get(i)
                    .copied()
                    .flatten()
                    .map_or_else(|| "—".to_string(), |v| self.unit.fmt_exact(v));
                let _ = write!(out, r#"<td class="num">{cell}</td>"#);
            }
            out.push_str("</tr>");
        }
        out.push_str("</tbody></table></div></details>");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(100.0, 4.0), 25.0);
        assert_eq!(nice_step(7.0, 4.0), 2.0);
        assert_eq!(nice_step(1.0, 4.0), 0.25);
        assert_eq!(nice_step(3_000.0, 4.0), 1_000.0);
        assert_eq!(time_step(3_600_000), 10 * 60_000);
        assert_eq!(time_step(86_400_000), 6 * 3_600_000);
        assert_eq!(time_step(7 * 86_400_000), 2 * 86_400_000);
    }

    #[test]
    fn renders_axes_lines_gaps_and_a_summary() {
        let ts: Vec<i64> = (0..4).map(|i| 1_767_225_600_000 + i * 60_000).collect();
        let chart = Chart {
            id: "c",
            title: "Requests <all>",
            unit: Unit::Count,
            ts: &ts,
            step_ms: 60_000,
            lines: vec![Line {
                label: "requests",
                values: vec![Some(10.0), None, Some(30.0), Some(20.0)],
                class: "c-blue",
            }],
            reference: None,
            markers: &[
                (1_767_225_600_000 + 90_000, "shop <v2.3>".to_string()),
                (1_767_225_600_000 - 1, "before the chart".to_string()),
            ],
        };
        let svg = chart.render();
        assert!(svg.contains("Requests &lt;all&gt;"), "titles are escaped");
        // The release inside the span is drawn and listed in text; the one before is not.
        assert_eq!(svg.matches(r#"<g class="marker">"#).count(), 1, "{svg}");
        assert!(
            svg.contains("Releases: shop &lt;v2.3&gt; (2026-01-01 00:01:30 UTC)"),
            "{svg}"
        );
        assert!(!svg.contains("before the chart"));
        // Two segments: the gap after the first point starts a new one.
        let path = svg
            .split("<path d=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert_eq!(path.matches('M').count(), 2, "{path}");
        assert!(svg.contains("peak 30 at 2026-01-01 00:02:00 UTC"));
        assert!(svg.contains(">00:00<"), "time labels");
        assert!(svg.contains(">30<"), "y labels reach the peak");
        assert!(
            svg.contains("<td class=\"num\">—</td>"),
            "gaps show in the data table"
        );
    }

    #[test]
    fn empty_series_says_so() {
        let chart = Chart {
            id: "e",
            title: "Latency",
            unit: Unit::Ms,
            ts: &[],
            step_ms: 60_000,
            lines: vec![],
            reference: None,
            markers: &[],
        };
        assert!(chart.render().contains("No data in this range."));
    }
}
