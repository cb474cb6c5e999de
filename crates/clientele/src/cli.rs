//! `clientele consumers ...` and `clientele keys ...`: the admin API from the terminal.

use anyhow::{Result, bail};
use clap::Subcommand;
use http::Method;
use serde_json::{Map, Value, json};

use crate::Remote;
use crate::client::AdminClient;

#[derive(Subcommand)]
pub enum ConsumersCmd {
    /// Create a consumer.
    Add {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        plan: Option<String>,
        #[arg(long)]
        team: Option<String>,
        #[arg(long)]
        use_case: Option<String>,
        /// Metadata entry KEY=VALUE; repeat for more.
        #[arg(long = "meta", value_name = "KEY=VALUE")]
        meta: Vec<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// List consumers.
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// Show one consumer and its keys.
    Show {
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Delete a consumer; its keys are revoked, its past events kept.
    Rm {
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand)]
pub enum KeysCmd {
    /// Create a key for a consumer. The key is printed once and never again.
    Create {
        consumer: String,
        #[arg(long)]
        name: Option<String>,
        /// Expiry, RFC 3339 or epoch milliseconds.
        #[arg(long)]
        expires_at: Option<String>,
        /// Import an existing key instead of generating one.
        #[arg(long, value_name = "KEY")]
        import: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// List a consumer's keys (prefixes only).
    List {
        consumer: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Revoke a key; the gateway refuses it within a second.
    Revoke {
        key_id: String,
        #[command(flatten)]
        remote: Remote,
    },
}

/// The admin token: from the flag or environment, else the file a server without a configured
/// token writes into ./clientele-data.
pub fn token(remote: &Remote) -> Result<String> {
    match &remote.token {
        Some(t) => Ok(t.clone()),
        None => match std::fs::read_to_string("clientele-data/admin-token") {
            Ok(t) => Ok(t.trim().to_string()),
            Err(_) => bail!(
                "no admin token: pass --token or set CLIENTELE_ADMIN_TOKEN (a server without a configured token writes one to <data_dir>/admin-token)"
            ),
        },
    }
}

pub(crate) fn connect(remote: &Remote) -> Result<AdminClient> {
    AdminClient::new(&remote.admin_url, &token(remote)?)
}

/// Path segments are percent-encoded so an id can never change which endpoint is called.
pub(crate) fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub async fn consumers(cmd: ConsumersCmd) -> Result<()> {
    match cmd {
        ConsumersCmd::Add {
            id,
            name,
            plan,
            team,
            use_case,
            meta,
            remote,
        } => {
            let mut metadata = Map::new();
            for entry in meta {
                let Some((k, v)) = entry.split_once('=') else {
                    bail!("--meta {entry:?} must look like KEY=VALUE");
                };
                metadata.insert(k.to_string(), Value::String(v.to_string()));
            }
            let body = json!({"id": id, "name": name, "plan": plan, "team": team, "use_case": use_case, "metadata": metadata});
            let created = connect(&remote)?
                .call(Method::POST, "/v1/consumers", Some(&body))
                .await?;
            output(&remote, &created, || {
                println!("created consumer {}", str_of(&created, "id"));
            });
        }
        ConsumersCmd::List { remote } => {
            let list = connect(&remote)?
                .call(Method::GET, "/v1/consumers", None)
                .await?;
            output(&remote, &list, || {
                let rows: Vec<Vec<String>> = array(&list, "consumers")
                    .iter()
                    .map(|c| {
                        ["id", "name", "plan", "team", "use_case", "created_at"]
                            .iter()
                            .map(|f| str_of(c, f))
                            .collect()
                    })
                    .collect();
                print_table(
                    &["ID", "NAME", "PLAN", "TEAM", "USE CASE", "CREATED"],
                    &rows,
                );
            });
        }
        ConsumersCmd::Show { id, remote } => {
            let client = connect(&remote)?;
            let consumer = client
                .call(Method::GET, &format!("/v1/consumers/{}", seg(&id)), None)
                .await?;
            let keys = client
                .call(
                    Method::GET,
                    &format!("/v1/consumers/{}/keys", seg(&id)),
                    None,
                )
                .await?;
            let both = json!({"consumer": consumer, "keys": keys.get("keys").cloned().unwrap_or(Value::Null)});
            output(&remote, &both, || {
                for f in ["id", "name", "plan", "team", "use_case", "created_at"] {
                    println!("{:<11} {}", format!("{f}:"), str_of(&consumer, f));
                }
                println!(
                    "{:<11} {}",
                    "metadata:",
                    consumer
                        .get("metadata")
                        .map(Value::to_string)
                        .unwrap_or_default()
                );
                println!();
                print_keys(&keys);
            });
        }
        ConsumersCmd::Rm { id, remote } => {
            connect(&remote)?
                .call(Method::DELETE, &format!("/v1/consumers/{}", seg(&id)), None)
                .await?;
            output(&remote, &json!({"deleted": id}), || {
                println!("deleted consumer {id}; its keys are revoked")
            });
        }
    }
    Ok(())
}

pub async fn keys(cmd: KeysCmd) -> Result<()> {
    match cmd {
        KeysCmd::Create {
            consumer,
            name,
            expires_at,
            import,
            remote,
        } => {
            let body = json!({"name": name, "expires_at": expires_at, "key": import});
            let created = connect(&remote)?
                .call(
                    Method::POST,
                    &format!("/v1/consumers/{}/keys", seg(&consumer)),
                    Some(&body),
                )
                .await?;
            output(&remote, &created, || {
                println!("key_id:  {}", str_of(&created, "key_id"));
                println!("key:     {}", str_of(&created, "key"));
                println!("prefix:  {}", str_of(&created, "prefix"));
                println!();
                println!(
                    "Store the key now: it is not shown again. The server keeps only its hash."
                );
            });
        }
        KeysCmd::List { consumer, remote } => {
            let keys = connect(&remote)?
                .call(
                    Method::GET,
                    &format!("/v1/consumers/{}/keys", seg(&consumer)),
                    None,
                )
                .await?;
            output(&remote, &keys, || print_keys(&keys));
        }
        KeysCmd::Revoke { key_id, remote } => {
            let key = connect(&remote)?
                .call(Method::DELETE, &format!("/v1/keys/{}", seg(&key_id)), None)
                .await?;
            output(&remote, &key, || {
                println!("revoked {key_id}; the gateway refuses it from now on")
            });
        }
    }
    Ok(())
}

fn print_keys(keys: &Value) {
    let rows: Vec<Vec<String>> = array(keys, "keys")
        .iter()
        .map(|k| {
            [
                "key_id",
                "prefix",
                "name",
                "status",
                "created_at",
                "expires_at",
            ]
            .iter()
            .map(|f| str_of(k, f))
            .collect()
        })
        .collect();
    print_table(
        &["KEY ID", "PREFIX", "NAME", "STATUS", "CREATED", "EXPIRES"],
        &rows,
    );
}

pub(crate) fn output(remote: &Remote, value: &Value, human: impl FnOnce()) {
    if remote.json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    } else {
        human();
    }
}

pub(crate) fn array<'a>(v: &'a Value, field: &str) -> &'a [Value] {
    v.get(field)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

pub(crate) fn str_of(v: &Value, field: &str) -> String {
    match v.get(field) {
        None | Some(Value::Null) => "-".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// Prints aligned columns, as `kubectl get` does.
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:<w$}", c, w = widths[i]))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    if rows.is_empty() {
        println!("(none)");
    }
}
