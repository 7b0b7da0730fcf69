//! The `spec.autoscaling` section: engine, replica bounds, metric and target.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::crd::rules::{CUSTOM_QUERY_MESSAGE, CUSTOM_QUERY_RULE, REPLICAS_MESSAGE, REPLICAS_RULE};

/// Autoscaling of `spec.replicas` through the scale subresource.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(REPLICAS_RULE).message(REPLICAS_MESSAGE))]
#[x_kube(validation = Rule::new(CUSTOM_QUERY_RULE).message(CUSTOM_QUERY_MESSAGE))]
pub struct AutoscalingSpec {
    /// Which autoscaler to create; `auto` prefers KEDA, then an HPA.
    #[serde(default)]
    pub engine: AutoscalingEngine,
    /// Fewest workers (0 scales to zero; KEDA only, an HPA keeps 1).
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 0))]
    pub min_replicas: i32,
    /// Most workers.
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
    /// The per-worker load signal.
    #[serde(default)]
    pub metric: AutoscalingMetric,
    /// PromQL query whose value is the total load over all workers (`metric: custom` only; KEDA
    /// only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Target load per worker; default 4 (queueLength), 8 (running), 0.8 (kvCacheUsage), 1
    /// (custom).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub target_value: Option<f64>,
    /// Seconds the load must stay low before workers are removed.
    #[serde(default = "default_stabilization")]
    #[schemars(range(min = 0, max = 3600))]
    pub scale_down_stabilization_seconds: i32,
    /// Prometheus base URL that KEDA queries.
    #[serde(default = "default_prometheus")]
    pub prometheus_address: String,
}

fn default_min_replicas() -> i32 {
    1
}

fn default_stabilization() -> i32 {
    300
}

fn default_prometheus() -> String {
    "http://prometheus-operated.monitoring.svc:9090".to_owned()
}

/// Which autoscaler the operator creates.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AutoscalingEngine {
    /// KEDA when installed, else an HPA when a metrics API is served, else none.
    #[default]
    Auto,
    /// A KEDA ScaledObject, or none when KEDA is not installed.
    Keda,
    /// An `autoscaling/v2` HorizontalPodAutoscaler, or none without a metrics API.
    Hpa,
    /// No autoscaler (replicas stay as set).
    None,
}

/// The load signal of autoscaling.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AutoscalingMetric {
    /// Requests waiting for admission (`lynx_queue_length`).
    #[default]
    QueueLength,
    /// Sequences being decoded (`lynx_running_sequences`).
    Running,
    /// Fraction of the KV cache in use (`lynx_kv_cache_usage`).
    KvCacheUsage,
    /// The PromQL `query`.
    Custom,
}
