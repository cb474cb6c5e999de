//! `clientele import-consumers FILE`: consumers, their existing API keys and their limits from
//! Kong's declarative config (`kong.yaml`, `_format_version` 2.1 or 3.0) or from CSV.
//!
//! Keys go through `POST /v1/consumers/{id}/keys {key}`, which stores only their hash, so the
//! keys clients already hold keep working. Kong `rate-limiting` settings become plans: one plan
//! per distinct setting, printed as `[plans.*]` TOML for the config. A consumer whose plan the
//! server does not have yet gets the same numbers as its own limits, so they hold at once.
//! Re-running is safe: existing consumers and keys are reported, not duplicated.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use http::Method;
use serde_json::{Map, Value, json};

use crate::Remote;
use crate::cli::{connect, seg};

#[derive(Args, Debug)]
pub struct ImportConsumersArgs {
    /// `kong.yaml` (Kong declarative config) or a `.csv` with a header row: id (or username),
    /// name, plan, team, use_case, key (several separated by `;`), rate_per_second, burst,
    /// quota_per_day, quota_per_month.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Write the plans made from Kong's rate-limiting settings to this TOML file (printed when
    /// absent) for the server's config.
    #[arg(long, value_name = "PATH")]
    plans_out: Option<PathBuf>,
    /// Show what would be imported without calling the server.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    remote: Remote,
}

/// One consumer to create, with its keys and limits.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Imported {
    pub id: String,
    pub name: Option<String>,
    pub plan: Option<String>,
    pub team: Option<String>,
    pub use_case: Option<String>,
    pub keys: Vec<String>,
    pub limits: Option<Limits>,
    pub metadata: Map<String, Value>,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Limits {
    pub rate_per_second: Option<f64>,
    pub burst: Option<u32>,
    pub quota_per_day: Option<u64>,
    pub quota_per_month: Option<u64>,
}

impl Limits {
    fn json(&self) -> Value {
        let mut m = Map::new();
        if let Some(v) = self.rate_per_second {
            m.insert("rate_per_second".into(), json!(v));
        }
        if let Some(v) = self.burst {
            m.insert("burst".into(), json!(v));
        }
        if let Some(v) = self.quota_per_day {
            m.insert("quota_per_day".into(), json!(v));
        }
        if let Some(v) = self.quota_per_month {
            m.insert("quota_per_month".into(), json!(v));
        }
        Value::Object(m)
    }

    /// A plan name that says what the plan allows: `kong-5rps-b10-q10000d`.
    fn plan_name(&self) -> String {
        let mut name = String::from("kong");
        if let Some(r) = self.rate_per_second {
            name.push_str(&format!("-{}rps", format_num(r).replace('.', "_")));
        }
        if let Some(b) = self.burst {
            name.push_str(&format!("-b{b}"));
        }
        if let Some(q) = self.quota_per_day {
            name.push_str(&format!("-q{q}d"));
        }
        if let Some(q) = self.quota_per_month {
            name.push_str(&format!("-q{q}m"));
        }
        name
    }

    fn toml(&self, name: &str) -> String {
        let mut out = format!("[plans.{name}]\n");
        if let Some(r) = self.rate_per_second {
            out.push_str(&format!("rate_per_second = {}\n", format_num(r)));
        }
        if let Some(b) = self.burst {
            out.push_str(&format!("burst = {b}\n"));
        }
        if let Some(q) = self.quota_per_day {
            out.push_str(&format!("quota_per_day = {q}\n"));
        }
        if let Some(q) = self.quota_per_month {
            out.push_str(&format!("quota_per_month = {q}\n"));
        }
        out
    }
}

fn format_num(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').to_string()
    }
}

pub async fn run(args: ImportConsumersArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let is_csv = args
        .file
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let mut consumers = if is_csv {
        from_csv(&text)?
    } else {
        from_kong(&text).with_context(|| format!("{}", args.file.display()))?
    };
    // Plans from the Kong limits: one per distinct setting.
    let mut plans: BTreeMap<String, Limits> = BTreeMap::new();
    if !is_csv {
        for c in &mut consumers {
            if let Some(l) = &c.limits {
                let name = l.plan_name();
                plans.insert(name.clone(), l.clone());
                c.plan.get_or_insert(name);
            }
        }
    }
    let plans_toml: String = plans
        .iter()
        .map(|(n, l)| l.toml(n))
        .collect::<Vec<_>>()
        .join("\n");
    if !plans.is_empty() {
        match &args.plans_out {
            Some(p) => std::fs::write(p, &plans_toml)
                .with_context(|| format!("cannot write {}", p.display()))?,
            None if !args.remote.json => {
                println!(
                    "# plans from Kong's rate-limiting settings; add them to the config:\n{plans_toml}"
                )
            }
            None => {}
        }
    }
    if args.dry_run {
        for c in &consumers {
            println!(
                "{}  plan {}  {} keys",
                c.id,
                c.plan.as_deref().unwrap_or("-"),
                c.keys.len()
            );
        }
        return Ok(());
    }

    let admin = connect(&args.remote)?;
    let (mut created, mut existed, mut keys_new, mut keys_existed, mut limits_instead) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut problems: Vec<String> = Vec::new();
    for c in &consumers {
        let mut body = json!({"id": c.id, "name": c.name, "plan": c.plan, "team": c.team,
            "use_case": c.use_case, "metadata": c.metadata});
        let mut result = admin.call(Method::POST, "/v1/consumers", Some(&body)).await;
        if let Err(e) = &result
            && e.to_string().starts_with("422")
            && c.plan.is_some()
            && c.limits.is_some()
        {
            // The plan is not in the server's config yet: hold the consumer to the same
            // numbers as its own limits meanwhile.
            body["plan"] = Value::Null;
            body["limits"] = c.limits.as_ref().map_or(Value::Null, Limits::json);
            result = admin.call(Method::POST, "/v1/consumers", Some(&body)).await;
            if result.is_ok() {
                limits_instead += 1;
            }
        }
        match result {
            Ok(_) => created += 1,
            Err(e) if e.to_string().starts_with("409") => existed += 1,
            Err(e) => {
                problems.push(format!("consumer {}: {e}", c.id));
                continue;
            }
        }
        for key in &c.keys {
            let path = format!("/v1/consumers/{}/keys", seg(&c.id));
            match admin
                .call(
                    Method::POST,
                    &path,
                    Some(&json!({"key": key, "name": "imported"})),
                )
                .await
            {
                Ok(_) => keys_new += 1,
                Err(e) if e.to_string().starts_with("409") => keys_existed += 1,
                // Never print the key itself: only which consumer's key and why.
                Err(e) => problems.push(format!("a key of {}: {e}", c.id)),
            }
        }
    }
    if args.remote.json {
        println!(
            "{}",
            json!({"consumers": consumers.len(), "created": created, "existed": existed, "keys_imported": keys_new,
                "keys_existed": keys_existed, "plans": plans.keys().collect::<Vec<_>>(), "limits_instead_of_plan": limits_instead,
                "problems": problems})
        );
    } else {
        println!(
            "consumers   {} ({created} created, {existed} existed)",
            consumers.len()
        );
        println!("keys        {keys_new} imported, {keys_existed} were already there");
        if limits_instead > 0 {
            println!(
                "limits      {limits_instead} consumers hold their Kong limits as their own: their plan is not in the config yet"
            );
        }
        for p in &problems {
            println!("  {p}");
        }
    }
    if !problems.is_empty() {
        bail!("{} items could not be imported", problems.len());
    }
    Ok(())
}

/// Kong's declarative config: `consumers` (with nested `keyauth_credentials` and `plugins`),
/// plus top-level `keyauth_credentials` and `plugins` that name their `consumer`.
pub fn from_kong(text: &str) -> Result<Vec<Imported>> {
    let doc: Value =
        yaml_serde::from_str(text).context("not YAML (or JSON) Kong declarative config")?;
    let Some(list) = doc.get("consumers").and_then(Value::as_array) else {
        bail!("no `consumers:` list; is this a Kong declarative config (kong.yaml)?");
    };
    let mut out: Vec<Imported> = Vec::new();
    // Kong references a consumer by username or id.
    let mut by_ref: BTreeMap<String, usize> = BTreeMap::new();
    for (i, c) in list.iter().enumerate() {
        let s = |k: &str| c.get(k).and_then(Value::as_str).map(str::to_string);
        let Some(id) = s("username").or_else(|| s("custom_id")) else {
            bail!("consumers[{i}] has neither username nor custom_id");
        };
        let mut metadata = Map::new();
        for k in ["id", "custom_id"] {
            if let Some(v) = s(k) {
                metadata.insert(format!("kong_{k}"), json!(v));
            }
        }
        if let Some(tags) = c.get("tags").and_then(Value::as_array) {
            metadata.insert("kong_tags".into(), json!(tags));
        }
        for r in [s("username"), s("id"), s("custom_id")]
            .into_iter()
            .flatten()
        {
            by_ref.insert(r, out.len());
        }
        let mut imported = Imported {
            id,
            metadata,
            ..Default::default()
        };
        for cred in c
            .get("keyauth_credentials")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(k) = cred.get("key").and_then(Value::as_str) {
                imported.keys.push(k.to_string());
            }
        }
        for p in c
            .get("plugins")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(l) = rate_limiting(p)? {
                imported.limits = Some(l);
            }
        }
        out.push(imported);
    }
    let refer = |v: &Value| -> Option<String> {
        match v.get("consumer")? {
            Value::String(s) => Some(s.clone()),
            o => o
                .get("username")
                .or_else(|| o.get("id"))
                .and_then(Value::as_str)
                .map(str::to_string),
        }
    };
    for cred in doc
        .get("keyauth_credentials")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let (Some(who), Some(key)) = (refer(cred), cred.get("key").and_then(Value::as_str)) else {
            continue;
        };
        let Some(&i) = by_ref.get(&who) else {
            bail!("keyauth_credentials names consumer {who:?}, which is not in consumers");
        };
        out[i].keys.push(key.to_string());
    }
    for p in doc
        .get("plugins")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(who) = refer(p) else { continue };
        if let (Some(&i), Some(l)) = (by_ref.get(&who), rate_limiting(p)?) {
            out[i].limits = Some(l);
        }
    }
    Ok(out)
}

/// Kong's `rate-limiting` (and `rate-limiting-advanced`'s simple form) as Clientele limits:
/// the finest window gives the sustained rate; its count is the burst, since Kong's fixed
/// windows let a whole window's count through at once; `day`/`month` are quotas.
fn rate_limiting(plugin: &Value) -> Result<Option<Limits>> {
    if plugin.get("name").and_then(Value::as_str) != Some("rate-limiting") {
        return Ok(None);
    }
    if plugin.get("enabled") == Some(&Value::Bool(false)) {
        return Ok(None);
    }
    let config = plugin.get("config").cloned().unwrap_or(Value::Null);
    let n = |k: &str| config.get(k).and_then(Value::as_f64).filter(|v| *v > 0.0);
    let mut l = Limits::default();
    for (window, secs) in [("second", 1.0), ("minute", 60.0), ("hour", 3600.0)] {
        if let Some(count) = n(window) {
            l.rate_per_second = Some(count / secs);
            l.burst = Some(count.ceil().max(1.0) as u32);
            break;
        }
    }
    l.quota_per_day = n("day").map(|v| v as u64);
    l.quota_per_month = n("month").map(|v| v as u64);
    if l == Limits::default() {
        bail!("a rate-limiting plugin has none of second, minute, hour, day or month set");
    }
    Ok(Some(l))
}

/// A CSV with a header row. Fields may be quoted ("a, b"), with "" for a quote.
pub fn from_csv(text: &str) -> Result<Vec<Imported>> {
    let mut rows = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<String> = split_csv(rows.next().context("the CSV is empty")?)
        .into_iter()
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    let col = |names: &[&str]| header.iter().position(|h| names.contains(&h.as_str()));
    let id_col = col(&["id", "consumer", "username"])
        .context("the CSV header needs an id (or consumer, username) column")?;
    let mut out: Vec<Imported> = Vec::new();
    for (n, row) in rows.enumerate() {
        let line = n + 2;
        let fields = split_csv(row);
        let get = |names: &[&str]| {
            col(names)
                .and_then(|i| fields.get(i))
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        let id = fields
            .get(id_col)
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .with_context(|| format!("line {line}: no id"))?;
        let num = |names: &[&str]| -> Result<Option<f64>> {
            get(names)
                .map(|s| {
                    s.parse::<f64>()
                        .with_context(|| format!("line {line}: {} {s:?} is not a number", names[0]))
                })
                .transpose()
        };
        let limits = Limits {
            rate_per_second: num(&["rate_per_second"])?,
            burst: num(&["burst"])?.map(|v| v as u32),
            quota_per_day: num(&["quota_per_day"])?.map(|v| v as u64),
            quota_per_month: num(&["quota_per_month"])?.map(|v| v as u64),
        };
        let keys: Vec<String> = get(&["key", "keys", "api_key"])
            .map(|k| {
                k.split(';')
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        // Several rows for one consumer add keys.
        if let Some(existing) = out.iter_mut().find(|c| c.id == id) {
            existing.keys.extend(keys);
            continue;
        }
        out.push(Imported {
            id,
            name: get(&["name"]),
            plan: get(&["plan"]),
            team: get(&["team"]),
            use_case: get(&["use_case"]),
            keys,
            limits: (limits != Limits::default()).then_some(limits),
            metadata: Map::new(),
        });
    }
    Ok(out)
}

fn split_csv(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut field)),
            (c, _) => field.push(c),
        }
    }
    out.push(field);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kong_fixture_gives_consumers_keys_and_plans() {
        let text = include_str!("../tests/fixtures/kong.yaml");
        let c = from_kong(text).unwrap();
        let acme = c.iter().find(|c| c.id == "acme").unwrap();
        assert_eq!(acme.keys.len(), 2, "nested and top-level credentials");
        let l = acme.limits.as_ref().unwrap();
        assert_eq!(
            (l.rate_per_second, l.burst, l.quota_per_day),
            (Some(5.0), Some(5), Some(10000))
        );
        assert_eq!(l.plan_name(), "kong-5rps-b5-q10000d");
        let globex = c.iter().find(|c| c.id == "globex").unwrap();
        assert_eq!(
            globex.limits.as_ref().unwrap().rate_per_second,
            Some(2.0),
            "120 a minute"
        );
        assert_eq!(globex.metadata["kong_custom_id"], "globex-corp");
        assert!(c.iter().any(|c| c.id == "no-limits" && c.limits.is_none()));
    }

    #[test]
    fn csv_rows_quotes_and_repeated_ids() {
        let c =
            from_csv("id,name,plan,key\nacme,\"Acme, Inc\",pro,k1;k2\nacme,,,k3\nbeta,Beta,,\n")
                .unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].name.as_deref(), Some("Acme, Inc"));
        assert_eq!(c[0].keys, ["k1", "k2", "k3"]);
        assert!(
            from_csv("name\nx\n")
                .unwrap_err()
                .to_string()
                .contains("id")
        );
    }
}
