//! End-to-end tests: the real `clientele` binary, a real upstream on loopback, real HTTP.
//! One test binary for all of them, to keep link time down.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod analytics;
mod budgets;
#[cfg(all(feature = "postgres", feature = "clickhouse"))]
mod clickhouse;
mod consumers_import;
mod contract;
mod durability;
mod exports;
mod findings;
mod follow;
mod gateway;
mod governance;
mod hardening;
mod https;
mod limits;
mod llm;
mod otlp_ingest;
#[cfg(feature = "postgres")]
mod postgres;
mod reports;
mod support;
mod ui;
mod websocket;
