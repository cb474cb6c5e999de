//! Which store holds the control plane (consumers, keys, quotas, spec history, findings and
//! alert deliveries): the embedded SQLite store, or PostgreSQL shared by every node
//! (`[storage] backend = "postgres"`, cargo feature `postgres`).

use std::sync::Arc;

use anyhow::{Result, bail};
use clientele_core::config::{StorageBackend, StorageConfig};
use clientele_store::{ControlStore, FindingStore, SqliteStore};

pub type ControlPlane = (Arc<dyn ControlStore>, Arc<dyn FindingStore>);

/// Opens the configured control plane. `sqlite` is this node's embedded store (it keeps the
/// rollup archive whatever the backend).
pub async fn open(storage: &StorageConfig, sqlite: &SqliteStore) -> Result<ControlPlane> {
    match storage.backend {
        StorageBackend::Sqlite => Ok((Arc::new(sqlite.clone()), Arc::new(sqlite.clone()))),
        // With ClickHouse for events, the control plane is PostgreSQL too.
        StorageBackend::Postgres | StorageBackend::Clickhouse => postgres(storage).await,
    }
}

/// `clientele migrate`: brings the configured database's schema up to date; returns what it
/// did, in one line.
pub async fn migrate(storage: &StorageConfig) -> Result<String> {
    match storage.backend {
        StorageBackend::Sqlite => Ok(format!(
            "backend = \"sqlite\": {} migrates itself when `clientele serve` opens it; nothing to do",
            storage.data_dir.join("clientele.db").display()
        )),
        _ => migrate_postgres(storage).await,
    }
}

#[cfg(feature = "postgres")]
async fn migrate_postgres(storage: &StorageConfig) -> Result<String> {
    let Some(url) = storage.postgres_url.as_deref() else {
        bail!(
            "storage.postgres_url: required with backend = \"{}\"",
            storage.backend.as_str()
        );
    };
    // Connecting migrates, under the same advisory lock as a node's start-up.
    let store = clientele_store::PostgresStore::connect(url)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let version = clientele_store::postgres::MIGRATIONS
        .last()
        .map_or(0, |m| m.0);
    Ok(format!(
        "PostgreSQL at {}: schema at version {version}",
        store.place()
    ))
}

#[cfg(not(feature = "postgres"))]
async fn migrate_postgres(storage: &StorageConfig) -> Result<String> {
    postgres(storage).await.map(|_| String::new())
}

#[cfg(feature = "postgres")]
async fn postgres(storage: &StorageConfig) -> Result<ControlPlane> {
    let Some(url) = storage.postgres_url.as_deref() else {
        // The config's validation refuses this; kept as an error, not a panic.
        bail!(
            "storage.postgres_url: required with backend = \"{}\"",
            storage.backend.as_str()
        );
    };
    // The node keeps a copy of the keys in its data dir, so a restart while the server is
    // away still serves them (see clientele_store's postgres::copy).
    let store = clientele_store::PostgresStore::open(url, Some(&storage.data_dir))
        .await
        .map_err(|e| anyhow::anyhow!("storage.backend = \"{}\": {e}", storage.backend.as_str()))?;
    tracing::info!(place = store.place(), "control plane on PostgreSQL");
    Ok((Arc::new(store.clone()), Arc::new(store)))
}

#[cfg(not(feature = "postgres"))]
async fn postgres(_storage: &StorageConfig) -> Result<ControlPlane> {
    bail!(
        "storage.backend = \"postgres\": this clientele was built without PostgreSQL support; build it with `cargo build --release --features postgres`, or use backend = \"sqlite\""
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn asking_for_postgres_is_an_error_not_a_panic_when_it_cannot_be_had() {
        let dir = std::env::temp_dir().join(format!(
            "clientele-control-plane-{}",
            clientele_core::event::random_id128()
        ));
        let sqlite = SqliteStore::open(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let storage = StorageConfig {
            backend: StorageBackend::Postgres,
            postgres_url: Some(format!("postgres://clientele@127.0.0.1:{port}/clientele")),
            ..StorageConfig::default()
        };
        let err = open(&storage, &sqlite).await.err().unwrap().to_string();
        let _ = std::fs::remove_dir_all(&dir);
        if cfg!(feature = "postgres") {
            assert!(err.contains("cannot reach PostgreSQL"), "{err}");
        } else {
            assert!(err.contains("--features postgres"), "{err}");
        }
    }
}
