//! Tollgate budget sidecar: per-tenant budgets, holds and commits for the Envoy
//! filter, plus the admin API, metrics and the `tollgate-sidecar` CLI.

pub mod admin;
pub mod alerts;
pub mod api;
pub mod audit;
pub mod aws;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dataplane_auth;
pub mod doctor;
pub mod emf;
pub mod error;
pub mod keys;
pub mod layers;
pub mod leases;
pub mod ledger;
pub mod metrics;
pub mod openapi;
pub mod pricing;
pub mod rate_limits;
pub mod rewrap;
pub mod seal;
pub mod seed;
pub mod self_service;
pub mod server;
pub mod service;
pub mod store;
pub mod sts;
pub mod ui;

pub use error::{Error, Result};
