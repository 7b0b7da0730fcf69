//! The Gateway API inference extension: an `InferencePool` (`inference.networking.k8s.io/v1`)
//! over the workers' OpenAI HTTP port, pointing at the user's endpoint picker.

use serde_json::json;

use super::{ClusterCapabilities, Context, HTTP_PORT};
use crate::crd::{EndpointPickerFailureMode, LynxDeploymentSpec};

/// Annotations of the pool naming Lynx's worker gauges, so an endpoint picker can be configured
/// from the pool (`--total-queued-requests-metric`, `--kv-cache-usage-percentage-metric`,
/// `--total-running-requests-metric`).
pub const INFERENCE_POOL_ANNOTATIONS: [(&str, &str); 3] = [
    ("serving.lynx.dev/queue-metric", "lynx_queue_length"),
    ("serving.lynx.dev/kv-cache-metric", "lynx_kv_cache_usage"),
    ("serving.lynx.dev/running-metric", "lynx_running_sequences"),
];

/// Whether the InferencePool was asked for and whether the cluster can hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InferencePoolState {
    /// No `spec.inferencePool`.
    NotRequested,
    /// Asked for and served: the pool is applied.
    Applied,
    /// Asked for, but the cluster does not serve `inference.networking.k8s.io/v1`.
    NotServed,
}

impl InferencePoolState {
    /// The state for `spec` on a cluster serving `caps`.
    pub fn of(spec: &LynxDeploymentSpec, caps: &ClusterCapabilities) -> Self {
        match (&spec.inference_pool, caps.inference_pool) {
            (None, _) => Self::NotRequested,
            (Some(_), true) => Self::Applied,
            (Some(_), false) => Self::NotServed,
        }
    }
}

/// The InferencePool `<name>` when `spec.inferencePool` is set and the API is served: the
/// workers' selector, target port 9090 (the OpenAI API), the endpoint picker's Service, and the
/// metric-name annotations.
pub(super) fn inference_pool(
    ctx: &Context<'_>,
    caps: &ClusterCapabilities,
) -> Option<serde_json::Value> {
    let pool = ctx.ld.spec.inference_pool.as_ref()?;
    if !caps.inference_pool {
        return None;
    }
    let mut metadata = ctx.metadata();
    metadata.annotations = Some(
        INFERENCE_POOL_ANNOTATIONS
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect(),
    );
    let failure_mode = match pool.failure_mode {
        EndpointPickerFailureMode::FailOpen => "FailOpen",
        EndpointPickerFailureMode::FailClose => "FailClose",
    };
    Some(json!({
        "apiVersion": "inference.networking.k8s.io/v1",
        "kind": "InferencePool",
        "metadata": metadata,
        "spec": {
            "selector": { "matchLabels": ctx.selector() },
            "targetPorts": [{ "number": HTTP_PORT }],
            "endpointPickerRef": {
                "group": "",
                "kind": "Service",
                "name": pool.endpoint_picker_name,
                "portNumber": pool.endpoint_picker_port,
                "failureMode": failure_mode,
            },
        },
    }))
}
