//! The `LynxDeployment` custom resource (`serving.lynx.dev/v1alpha1`).
//!
//! The Rust types are the source of truth: `lynx-operator crd` prints the CustomResourceDefinition
//! generated from them (OpenAPI bounds from `#[schemars]`, CEL rules from `#[x_kube]`), and
//! `deploy/crd.yaml` is that output. Every CEL rule is mirrored by [`LynxDeployment::validate`]
//! (see [`crate::validate`]) so the operator refuses what the API server would refuse.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, EnvVar, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod autoscaling;
mod model;
mod router;
pub mod rules;
mod status;
#[cfg(test)]
mod tests;

pub use autoscaling::{AutoscalingEngine, AutoscalingMetric, AutoscalingSpec};
pub use model::{
    HostPathSource, ModelCacheSpec, ModelDtype, ModelLayout, ModelSource, ModelSpec, PvcSource,
    UriSource, LEGACY_FETCHER_IMAGE,
};
pub use router::{
    EndpointPickerFailureMode, InferencePoolSpec, RouterSpec, DEFAULT_ENDPOINT_PICKER_PORT,
};
pub use status::{condition, LynxDeploymentStatus, ModelStatus};

use crate::crd::rules::{
    NAME_MESSAGE, NAME_RULE, PDB_MESSAGE, PDB_RULE, ROUTER_TLS_MESSAGE, ROUTER_TLS_RULE,
};

/// The API group of every Lynx custom resource.
pub const GROUP: &str = "serving.lynx.dev";
/// The served (and stored) version of `LynxDeployment`.
pub const VERSION: &str = "v1alpha1";
/// The port the worker serves gRPC on, and the Service's default port.
pub const DEFAULT_GRPC_PORT: i32 = 50051;
/// The GPU extended resource requested when `worker.gpuResourceName` is not set.
pub const DEFAULT_GPU_RESOURCE: &str = "nvidia.com/gpu";

/// A served Lynx model: a set of GPU workers behind one gRPC Service, optionally autoscaled.
// Each `printcolumn(...)` repeats `name`/`type_` keys, which this lint mistakes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "serving.lynx.dev",
    version = "v1alpha1",
    kind = "LynxDeployment",
    namespaced,
    shortname = "lynx",
    category = "all",
    category = "lynx",
    status = "LynxDeploymentStatus",
    derive = "PartialEq",
    doc = "A served Lynx model: GPU workers behind one gRPC Service, optionally autoscaled.",
    validation = Rule::new(NAME_RULE).message(NAME_MESSAGE),
    annotation("serving.lynx.dev/minimum-kubernetes-version", "1.28"),
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Workers whose readiness probe passes"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".status.replicas",
        description = "Workers that exist"
    ),
    printcolumn(
        name = "Model",
        type_ = "string",
        json_path = ".spec.model.path",
        description = "Model directory inside the source"
    ),
    printcolumn(
        name = "Autoscaler",
        type_ = "string",
        json_path = ".status.autoscaler",
        description = "keda, hpa or none"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(ROUTER_TLS_RULE).message(ROUTER_TLS_MESSAGE))]
pub struct LynxDeploymentSpec {
    /// Where the model weights come from and how to read them.
    pub model: ModelSpec,
    /// Desired number of workers. Written by `kubectl scale`, the HPA or KEDA through the scale
    /// subresource when autoscaling is on.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0))]
    pub replicas: i32,
    /// The worker container: image, GPUs, resources and placement.
    pub worker: WorkerSpec,
    /// Continuous-batching knobs passed to the worker as flags.
    #[serde(default)]
    pub batching: BatchingSpec,
    /// Request limits passed to the worker as flags.
    #[serde(default)]
    pub limits: LimitsSpec,
    /// Seconds a terminating worker keeps finishing in-flight requests before it exits.
    #[serde(default = "default_drain_timeout")]
    #[schemars(range(min = 0, max = 3600))]
    pub drain_timeout_seconds: i64,
    /// Autoscaling of `replicas`; absent means a fixed replica count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
    /// The gRPC Service in front of the workers (or of the router, when there is one).
    #[serde(default)]
    pub service: ServiceSpec,
    /// A router in front of the workers: balances requests (not connections) over the workers and
    /// holds requests while none is ready, so a fleet at zero wakes up. Absent: no router.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<RouterSpec>,
    /// An `InferencePool` (`inference.networking.k8s.io/v1`) over the workers for a Gateway API
    /// inference gateway, when the cluster serves that API. Absent: no pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_pool: Option<InferencePoolSpec>,
    /// TLS for the worker's gRPC port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// Bearer-token authentication of gRPC clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,
    /// Prometheus scraping of the worker's `/metrics`.
    #[serde(default)]
    pub monitoring: MonitoringSpec,
    /// Rolling-update strategy of the worker Deployment.
    #[serde(default)]
    pub rollout: RolloutSpec,
    /// A PodDisruptionBudget for the workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_disruption_budget: Option<PodDisruptionBudgetSpec>,
}

fn default_replicas() -> i32 {
    1
}

fn default_drain_timeout() -> i64 {
    30
}

/// The worker container and its placement.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerSpec {
    /// Worker image, e.g. `ghcr.io/lynx-serve/lynx-worker:0.1.0`.
    #[schemars(length(min = 1))]
    pub image: String,
    /// Pull policy of the worker image (Kubernetes' default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// Names of `kubernetes.io/dockerconfigjson` Secrets for pulling the image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<String>,
    /// GPUs per worker: 1 (the worker runs the model on one GPU), or 0 to run on CPU (tests and
    /// small models).
    #[serde(default = "default_gpus")]
    #[schemars(range(min = 0, max = 1))]
    pub gpus: i32,
    /// Extended resource name of a GPU.
    #[serde(default = "default_gpu_resource")]
    pub gpu_resource_name: String,
    /// CPU and memory requests and limits.
    #[serde(default)]
    pub resources: CpuMemoryResources,
    /// Size limit of the in-memory `/dev/shm` volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<Quantity>,
    /// Node labels a worker's node must have.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the workers tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Node and pod (anti-)affinity of the workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Extra environment variables of the worker container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Extra arguments appended to `lynx-worker serve ...`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
}

fn default_gpus() -> i32 {
    1
}

fn default_gpu_resource() -> String {
    DEFAULT_GPU_RESOURCE.to_owned()
}

/// Image pull policy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    /// Pull on every start.
    Always,
    /// Pull when the node lacks the image.
    IfNotPresent,
    /// Never pull.
    Never,
}

/// CPU and memory requests and limits of the worker container.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CpuMemoryResources {
    /// Requests (scheduling guarantees).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<CpuMemory>,
    /// Limits (enforced caps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<CpuMemory>,
}

/// An amount of CPU and memory.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CpuMemory {
    /// CPU, e.g. `4` or `500m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// Memory, e.g. `32Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
}

/// Continuous batching; each field becomes the worker flag of the same name (kebab-case).
/// Absent fields keep the worker's defaults.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchingSpec {
    /// Sequences decoded together at most (`--max-batch-size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_batch_size: Option<i64>,
    /// Milliseconds a new request may wait for a batch to fill (`--max-batch-delay-ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_batch_delay_ms: Option<i64>,
    /// Prompt plus generated tokens in one batch at most (`--max-batch-total-tokens`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_batch_total_tokens: Option<i64>,
    /// Requests waiting for admission at most before new ones are refused (`--max-queue`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_queue: Option<i64>,
}

/// Per-request limits; each field becomes the worker flag of the same name (kebab-case).
/// Absent fields keep the worker's defaults.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LimitsSpec {
    /// Encoded bytes of one image at most (`--max-image-bytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_image_bytes: Option<i64>,
    /// Decoded pixels of one image at most (`--max-image-pixels`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_image_pixels: Option<i64>,
    /// Images in one request at most (`--max-images-per-request`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_images_per_request: Option<i64>,
    /// Frames of one video at most (`--max-video-frames`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_video_frames: Option<i64>,
    /// Prompt tokens at most (`--max-prompt-tokens`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_prompt_tokens: Option<i64>,
    /// Generated tokens per request at most (`--max-new-tokens`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_new_tokens: Option<i64>,
}

/// The Service in front of the workers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Service type.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// gRPC port of the Service.
    #[serde(default = "default_grpc_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Annotations of the Service (load-balancer settings).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Seconds after which a worker asks a client to reconnect (HTTP/2 GOAWAY), so long-lived
    /// connections spread over new workers (`--max-connection-age-seconds`); 0 turns it off.
    #[serde(default = "default_max_connection_age")]
    #[schemars(range(min = 0))]
    pub max_connection_age_seconds: i64,
    /// Seconds the requests of a connection asked to reconnect may still run
    /// (`--max-connection-age-grace-seconds`); longer than the longest generation.
    #[serde(default = "default_max_connection_age_grace")]
    #[schemars(range(min = 0))]
    pub max_connection_age_grace_seconds: i64,
}

impl Default for ServiceSpec {
    fn default() -> Self {
        Self {
            type_: ServiceType::default(),
            port: DEFAULT_GRPC_PORT,
            annotations: BTreeMap::new(),
            max_connection_age_seconds: default_max_connection_age(),
            max_connection_age_grace_seconds: default_max_connection_age_grace(),
        }
    }
}

fn default_grpc_port() -> i32 {
    DEFAULT_GRPC_PORT
}

fn default_max_connection_age() -> i64 {
    300
}

fn default_max_connection_age_grace() -> i64 {
    600
}

/// Kubernetes Service type.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    /// Cluster-internal virtual IP.
    #[default]
    ClusterIP,
    /// A port on every node.
    NodePort,
    /// A cloud load balancer.
    LoadBalancer,
}

/// TLS of the worker's gRPC port.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// A `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`) in the same namespace.
    #[schemars(length(min = 1))]
    pub secret_name: String,
}

/// Bearer-token authentication of gRPC clients.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// Secret holding the accepted tokens, one per line.
    #[schemars(length(min = 1))]
    pub secret_name: String,
    /// Key of the tokens file inside the Secret.
    #[serde(default = "default_auth_key")]
    pub key: String,
}

fn default_auth_key() -> String {
    "tokens".to_owned()
}

/// Prometheus scraping of the workers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringSpec {
    /// Add scrape annotations, and a PodMonitor when the Prometheus operator is installed.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Scrape interval of the PodMonitor, e.g. `15s`.
    #[serde(default = "default_scrape_interval")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub scrape_interval: String,
    /// Extra labels of the PodMonitor, for a Prometheus that selects monitors by label
    /// (kube-prometheus-stack: `release: <its release name>`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_monitor_labels: BTreeMap<String, String>,
}

impl Default for MonitoringSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            scrape_interval: default_scrape_interval(),
            pod_monitor_labels: BTreeMap::new(),
        }
    }
}

fn default_scrape_interval() -> String {
    "15s".to_owned()
}

/// Rolling-update settings of the worker Deployment (Kubernetes' defaults when absent).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// Extra workers during an update (count or percentage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_surge: Option<IntOrString>,
    /// Workers that may be unavailable during an update (count or percentage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
}

/// A PodDisruptionBudget for the workers; at most one of the two bounds.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(PDB_RULE).message(PDB_MESSAGE))]
pub struct PodDisruptionBudgetSpec {
    /// Create the budget.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Workers that must stay available (count or percentage); default 1 when neither is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_available: Option<IntOrString>,
    /// Workers that may be evicted at once (count or percentage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
}

fn default_true() -> bool {
    true
}
