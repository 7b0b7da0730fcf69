//! End-to-end tests of `lynx-worker serve`: a real server in-process on loopback ports with the
//! fixture model, driven by a tonic client and plain HTTP.
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../common.rs"]
mod common;
mod harness;

mod balancing;
mod batching;
mod client;
mod front_door;
mod lifecycle;
mod limits;
mod openai;
mod openai_sdk;
mod router;
mod scheduling;
mod security;
