//! `lynx-router`: one address in front of many Lynx workers.
//!
//! Pure policy (which worker gets a request) is kept apart from the serving code that forwards
//! requests, so that the fleet simulation runs the very policy the router uses.
pub mod auth;
pub mod cli;
pub mod fleet;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod policy;
pub mod route;
pub mod server;
pub mod sim;
