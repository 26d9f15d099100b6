//! Tollgate's Envoy filter. The modules below are plain Rust with no host calls
//! (tested natively and on wasm32); `glue` is the thin proxy-wasm layer that moves
//! bytes between Envoy and them.

pub mod attributes;
pub mod config;
pub mod identity;
pub mod json;
pub mod lease;
pub mod reply;
pub mod request;
pub mod route;
pub mod settle;
pub mod usage;

// wasm32-unknown-unknown builds only the pure core (for wasm-bindgen-test).
#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
mod glue;
