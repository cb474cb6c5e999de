//! The domain core of Clientele: the types every other crate shares.
//!
//! It holds configuration (parsed and validated in one place), the per-request [`event::Event`],
//! consumers and API keys (generation, hashing and the in-memory [`keys::KeyIndex`] the gateway
//! reads on its hot path), route-template inference, the bounded [`pipeline::EventSink`] through
//! which events leave the hot path, and `application/problem+json` bodies. It depends on nothing
//! heavy: no HTTP stack, no storage engine.

pub mod alert;
pub mod config;
pub mod consumer;
pub mod detection_config;
pub mod event;
pub mod exports_config;
pub mod finding;
pub mod keys;
pub mod limits;
pub mod pipeline;
pub mod policy;
pub mod prices;
pub mod problem;
pub mod ratelog;
pub mod record;
pub mod ring;
pub mod route;
pub mod time;

// For the `warn_every!`/`error_every!` macros, so their callers need no tracing import.
#[doc(hidden)]
pub use tracing as __tracing;
