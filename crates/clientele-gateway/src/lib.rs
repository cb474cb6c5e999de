//! Clientele's data plane: a streaming reverse proxy that attributes every request to the
//! consumer who made it.
//!
//! Each request goes through the same phases (see [`proxy::Gateway::handle`]): identify the
//! consumer by API key, route by the longest path prefix, forward with pooled keep-alive
//! connections while bodies stream both ways, and emit one [`clientele_core::event::Event`] when
//! the response has been fully sent (or abandoned). The event is offered to an
//! [`clientele_core::pipeline::EventSink`] that never blocks.
//!
//! Architecture invariant: this crate depends on the domain core only. It never imports the
//! store or the API; it reads keys from a [`clientele_core::keys::KeyIndex`] and hands events to
//! a sink it is given.

pub mod agents;
mod body;
pub mod conn;
mod headers;
pub mod limiter;
pub mod llm;
pub mod llm_request;
pub mod path;
pub mod proxy;
pub mod server;
pub mod session_budget;
pub mod tls_fp;
mod upgrade;

pub use proxy::{Gateway, GatewayOptions};
pub use server::{ServeSettings, TlsFiles, TlsFingerprint, load_tls, serve};
