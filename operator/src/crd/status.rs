//! The status of a `LynxDeployment` and its condition types.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Observed state, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LynxDeploymentStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Workers that exist (scale subresource).
    #[serde(default)]
    pub replicas: i32,
    /// Workers whose readiness probe passes.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the workers, in string form (scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// gRPC endpoint: `<service>.<namespace>.svc.cluster.local:<port>` (the router when there is
    /// one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The workers for client-side balancing through the headless Service:
    /// `dns:///<name>-workers.<namespace>.svc.cluster.local:<grpc port>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers_endpoint: Option<String>,
    /// The autoscaler in use: `keda`, `hpa` or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaler: Option<String>,
    /// The model the last successful fetch of a `uri` source delivered (absent for `pvc` and
    /// `hostPath` sources, and until the current source was fetched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelStatus>,
    /// Ready, Progressing, Degraded, ModelLoaded, ModelReady (`uri` sources only),
    /// AutoscalingReady / AutoscalingUnavailable, InferencePoolReady / InferencePoolUnavailable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// What `lynx-worker fetch` reported about the model of a `uri` source.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelStatus {
    /// The source that was fetched.
    pub uri: String,
    /// The revision a Hugging Face source resolved to, when the fetcher reported one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// `sha256:<64 hex>`: of the archive or file, or of the manifest of a prefix or repository
    /// (what `sha256` pins).
    pub digest: String,
    /// Bytes of the model on disk.
    pub bytes: i64,
    /// Seconds the fetch took (a check of an existing copy when nothing was downloaded).
    pub fetch_seconds: f64,
}

/// Condition types the operator writes into [`LynxDeploymentStatus::conditions`].
pub mod condition {
    /// All desired workers are ready.
    pub const READY: &str = "Ready";
    /// A rollout or scale is under way.
    pub const PROGRESSING: &str = "Progressing";
    /// Fewer workers are ready than desired, or a child could not be written.
    pub const DEGRADED: &str = "Degraded";
    /// At least one worker has loaded the model.
    pub const MODEL_LOADED: &str = "ModelLoaded";
    /// The model of a `uri` source was fetched (True), or is being fetched, or could not be
    /// (False; the reason says why: `Fetching`, `CredentialsMissing`, `NotFound`,
    /// `AccessDenied`, `ChecksumMismatch`, `DiskFull`, `Network`, `InvalidUri`, `FetchFailed`).
    /// Absent for `pvc` and `hostPath` sources.
    pub const MODEL_READY: &str = "ModelReady";
    /// The chosen autoscaler exists.
    pub const AUTOSCALING_READY: &str = "AutoscalingReady";
    /// Autoscaling was requested but no autoscaler could be created; the reason says why.
    pub const AUTOSCALING_UNAVAILABLE: &str = "AutoscalingUnavailable";
    /// `spec.inferencePool` is set and the InferencePool exists.
    pub const INFERENCE_POOL_READY: &str = "InferencePoolReady";
    /// `spec.inferencePool` is set but the cluster does not serve the InferencePool API.
    pub const INFERENCE_POOL_UNAVAILABLE: &str = "InferencePoolUnavailable";
}
