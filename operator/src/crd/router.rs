//! The `spec.router` and `spec.inferencePool` sections: what stands in front of the workers.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::CpuMemoryResources;

/// The port an endpoint picker serves its ext-proc gRPC on when `endpointPickerPort` is not set
/// (the gateway-api-inference-extension default).
pub const DEFAULT_ENDPOINT_PICKER_PORT: i32 = 9002;

/// The `lynx-router` Deployment in front of the workers. The main Service then selects the
/// router; the workers stay reachable through the headless Service `<name>-workers`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouterSpec {
    /// Create the router (default true when the section is present).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Router replicas.
    #[serde(default = "default_router_replicas")]
    #[schemars(range(min = 1))]
    pub replicas: i32,
    /// Router image; default: the worker image (`spec.worker.image`), which ships `lynx-router`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// Requests the router holds at most while no worker is ready (`--max-held-requests`).
    #[serde(default = "default_max_held_requests")]
    #[schemars(range(min = 0))]
    pub max_held_requests: i64,
    /// Seconds a held request waits for a ready worker before it fails
    /// (`--hold-timeout-seconds`); cover the model's load time to scale from zero.
    #[serde(default = "default_hold_timeout")]
    #[schemars(range(min = 0, max = 3600))]
    pub hold_timeout_seconds: i64,
    /// CPU and memory of the router container; default requests `cpu: 500m, memory: 256Mi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<CpuMemoryResources>,
}

impl Default for RouterSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            replicas: default_router_replicas(),
            image: None,
            max_held_requests: default_max_held_requests(),
            hold_timeout_seconds: default_hold_timeout(),
            resources: None,
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_router_replicas() -> i32 {
    2
}

fn default_max_held_requests() -> i64 {
    256
}

fn default_hold_timeout() -> i64 {
    120
}

/// An `InferencePool` over the workers, for a Gateway API inference gateway; its endpoint picker
/// is yours (see the README for running the standard one with Lynx's metric names).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InferencePoolSpec {
    /// Name of the endpoint picker's Service, in the LynxDeployment's namespace.
    #[schemars(length(min = 1, max = 63))]
    pub endpoint_picker_name: String,
    /// Port of the endpoint picker's Service.
    #[serde(default = "default_endpoint_picker_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub endpoint_picker_port: i32,
    /// What the gateway does when the endpoint picker does not answer.
    #[serde(default)]
    pub failure_mode: EndpointPickerFailureMode,
}

fn default_endpoint_picker_port() -> i32 {
    DEFAULT_ENDPOINT_PICKER_PORT
}

/// How the gateway handles an unresponsive endpoint picker (`InferencePool`'s `failureMode`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum EndpointPickerFailureMode {
    /// Forward the request to an endpoint of the gateway's choosing.
    FailOpen,
    /// Refuse the request.
    #[default]
    FailClose,
}
