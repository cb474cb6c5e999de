//! The application layer: what happens to an event after the gateway or ingest hands it over,
//! written once.
//!
//! [`Pipeline::submit`] is the one path every source takes (the gateway's writer, `POST
//! /v1/events`, `clientele import` through it): store, then fold the newly stored events into
//! every [`EventObserver`] (the rollups, the contract usage table, and whatever is added next),
//! then offer them to the exporters. [`rollups::restore_persisted`] replays the same observers at
//! start-up (the rollups only for days not complete on disk), and [`rollups::maintain`] writes
//! closed rollup buckets and prunes; [`governance`] loads and saves the governance features
//! beside them. The API and the dashboard call this
//! crate; the binary only wires it. [`findings::FindingsService`] runs the detectors and stores
//! their findings; [`detection::run_periodic`] is the loop that runs it every interval, and [`alerts`] the webhook
//! dispatcher its news goes to. [`reports`] holds the portfolio and the outreach, pricing and
//! SLA reports.

pub mod alerts;
pub mod budgets;
pub mod detection;
pub mod findings;
pub mod governance;
pub mod pipeline;
pub mod reports;
pub mod rollups;
pub mod writer;

pub use pipeline::{EventObserver, Pipeline};

#[cfg(test)]
mod tests;
