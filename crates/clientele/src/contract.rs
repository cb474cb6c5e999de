//! Wiring for OpenAPI contracts: loading at start-up, the detector adapter, SIGHUP reloads.

use std::sync::Arc;

use anyhow::Result;
use clientele_contract::{Contracts, DeprecationOverride};
use clientele_core::config::Config;
use clientele_core::finding::Finding;
use clientele_detect::{Detector, EvalContext};

/// How far back a SIGHUP reload looks for consumers of removed or changed operations.
const IMPACT_DAYS: i64 = 30;

/// Loads every `[[apis]] openapi` spec; an error names the API, the file and the place.
pub fn load(config: &Config) -> Result<Contracts> {
    let mut specs = Vec::new();
    for api in &config.apis {
        if let Some(path) = &api.openapi {
            specs.push((api.name.clone(), path.clone()));
        }
    }
    let contracts = Contracts::load(&specs).map_err(|e| anyhow::anyhow!("apis.openapi: {e}"))?;
    let origin = if config.origin.is_empty() {
        "config"
    } else {
        config.origin.as_str()
    };
    for (i, api) in config.apis.iter().enumerate() {
        let Some(contract) = contracts.api(&api.name) else {
            continue;
        };
        let overrides = api
            .deprecations
            .iter()
            .map(|d| DeprecationOverride {
                operation: d.operation.trim().to_string(),
                // Already checked by `Config::validate`.
                sunset_ms: d.sunset_ms().and_then(Result::ok),
                replaced_by: d.replaced_by.as_ref().map(|r| r.trim().to_string()),
            })
            .collect();
        contract
            .set_deprecations(overrides)
            .map_err(|(j, field, reason)| {
                anyhow::anyhow!("{origin}: apis[{i}].deprecations[{j}].{field}: {reason}")
            })?;
    }
    Ok(contracts)
}

/// Drift and deprecation findings (`undocumented_endpoint`, `undocumented_status`,
/// `deprecated_usage`) from the contracts' usage table, as one more detector.
pub struct ContractDetector(pub Arc<Contracts>);

impl Detector for ContractDetector {
    fn name(&self) -> &'static str {
        "contract"
    }

    fn evaluate(&self, ctx: &EvalContext<'_>) -> Vec<Finding> {
        self.0.findings(ctx.now_ms, ctx.lookback_ms)
    }
}

/// Reloads every spec on SIGHUP. A bad spec keeps the last good one; the reason is logged and
/// shown at `GET /v1/apis/{name}/spec`.
pub async fn reload_on_sighup(
    contracts: Arc<Contracts>,
    control: Arc<dyn clientele_store::ControlStore>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    if contracts.is_empty() {
        return;
    }
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; specs reload only through the admin API");
            return;
        };
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                got = hup.recv() => if got.is_none() { return },
            }
            let c = contracts.clone();
            let Ok(results) = tokio::task::spawn_blocking(move || c.reload_all(IMPACT_DAYS)).await
            else {
                continue;
            };
            for result in results {
                match result {
                    Ok(r) => tracing::info!(
                        api = %r.api, changed = r.changed, hash = %r.hash,
                        removed = r.removed.len(), modified = r.modified.len(),
                        impacted_consumers = r.impacted_consumers.len(),
                        "spec reloaded"
                    ),
                    Err(e) => tracing::error!(error = %e, "spec reload failed"),
                }
            }
            for contract in contracts.apis() {
                clientele_api::contract::persist_spec_versions(&*control, contract).await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = control;
        let _ = shutdown.await;
    }
}
