//! The Lynx operator: reconciles `LynxDeployment` objects into worker Deployments, Services and
//! autoscalers.
//!
//! - [`crd`]: the custom resource type, the source of the CRD in `deploy/crd.yaml`.
//! - [`validate`]: the Rust mirror of the CRD's CEL rules.
//! - [`desired`]: pure spec + cluster capabilities -> desired child objects.
//! - [`discovery`]: which optional APIs (KEDA, metrics APIs, Prometheus operator) are served.
//! - [`reconcile`]: the apply layer (server-side apply, pruning, status, events, backoff).
//! - [`metrics`]: the Prometheus metrics of the reconcile loop.
//! - [`run`]: the `lynx-operator run` process (controller, leader election, HTTP endpoints).
//! - [`telemetry`]: JSON or pretty tracing logs.

pub mod crd;
pub mod desired;
pub mod discovery;
mod error;
pub mod metrics;
pub mod reconcile;
pub mod run;
pub mod telemetry;
pub mod validate;

pub use error::Error;

use kube::CustomResourceExt;

/// Renders the `LynxDeployment` CustomResourceDefinition as YAML, exactly as `deploy/crd.yaml`
/// holds it.
///
/// # Errors
/// Only if YAML serialization fails, which a well-formed CRD never triggers.
pub fn crd_yaml() -> Result<String, serde_yaml_ng::Error> {
    serde_yaml_ng::to_string(&crd::LynxDeployment::crd())
}
