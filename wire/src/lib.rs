//! Wire formats shared by the Tollgate filter (wasm32), the budget sidecar and the
//! Bedrock emulator: the sidecar's data-plane API and AWS event-stream framing.
//!
//! Everything here is plain Rust with no host calls, so it builds for wasm32 and is
//! tested natively.

pub mod api;
pub mod eventstream;
#[cfg(feature = "openapi")]
pub mod openapi;
pub mod rates;
#[cfg(feature = "sigv4")]
pub mod sigv4;
