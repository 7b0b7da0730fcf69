//! `lynx-router`: one address in front of many Lynx workers.
//!
//! Pure policy (which worker gets a request) is kept apart from the serving code that forwards
//! requests, so that the fleet simulation runs the very policy the router uses.
pub mod policy;
pub mod sim;
