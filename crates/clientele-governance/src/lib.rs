//! Governance: what a consumer does with its key, beyond how much it calls.
//!
//! [`FeatureStore`] keeps behavioural features per consumer-hour and consumer-day in
//! fixed-size sketches (distinct networks, user agents, sessions and end users; the shape of
//! item ids called; think time; the hour-of-day profile; concurrency), fed from every stored
//! event whatever its source. [`judge::evaluate`] turns them into `key_sharing`, `scraping`,
//! `reselling` and `policy_violation` findings, each consumer judged against its own history
//! and its plan's peers, plus the block verdicts for `action = "block"` policies.
//! [`persist`] saves the store's state and loads it at start-up, so that governance does not
//! replay raw events. [`risk::scores`] gives each consumer a 0-100 risk score with its factors.
//!
//! The crate depends on the core only: the detectors in `clientele-detect` and the API call it.

pub mod features;
pub mod hll;
pub mod iptable;
pub mod judge;
pub mod persist;
pub mod risk;

pub use features::{DaySummary, FeatureStore, HourFeatures};
