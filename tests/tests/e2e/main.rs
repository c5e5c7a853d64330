//! End-to-end tests: the real `plughost` binary on port 0, real plugin `.so` files, real HTTP.
//! Run `cargo build --workspace` first (scripts/test does), so that the plugins exist.

// A failed expectation in the harness is a failed test, which is what a panic reports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod auth;
mod bad_input;
mod callbacks;
mod connections;
mod errors;
mod isolation;
mod job_isolation;
mod job_store;
mod jobs;
mod lifecycle;
mod log_filters;
mod mongo_auth;
mod mongo_server;
mod names;
mod operator;
mod plugins;
mod publish;
mod readme;
mod reload;
mod resilience;
mod routing;
mod sandbox;
mod scaffold;
mod schedule_store;
mod schedules;
mod signing;
mod store_contract;
mod support;
mod tenant_caps;
mod web;
