//! The gRPC contract of the Lynx worker (protobuf package `lynx.v1`).
//!
//! The service definition and its generated code land here with the serving work; every other crate
//! talks to the worker through this crate only.
