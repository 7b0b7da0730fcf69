//! Autoscaling: which engine to use on this cluster, and the KEDA ScaledObject or HPA for it.
//!
//! Both autoscalers target the LynxDeployment itself through its scale subresource, so
//! `kubectl scale`, HPA and KEDA all write `spec.replicas` and the operator copies it to the
//! worker Deployment.

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, ExternalMetricSource, HPAScalingRules, HorizontalPodAutoscaler,
    HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerSpec, MetricIdentifier, MetricSpec,
    MetricTarget, PodsMetricSource,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::json;

use super::{labels, ClusterCapabilities, Context};
use crate::crd::{
    AutoscalingEngine, AutoscalingMetric, AutoscalingSpec, LynxDeploymentSpec, GROUP, VERSION,
};

/// The autoscaler kind in use; its string form goes to `status.autoscaler`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoscalerKind {
    /// A KEDA ScaledObject.
    Keda,
    /// An `autoscaling/v2` HPA reading a Pods metric (custom metrics API).
    HpaPods,
    /// An `autoscaling/v2` HPA reading an External metric (external metrics API).
    HpaExternal,
    /// No autoscaler.
    None,
}

impl AutoscalerKind {
    /// `keda`, `hpa` or `none`, as `status.autoscaler` and the AUTOSCALER column show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Keda => "keda",
            Self::HpaPods | Self::HpaExternal => "hpa",
            Self::None => "none",
        }
    }
}

/// Why the autoscaler was chosen; the string form is the reason of the AutoscalingReady /
/// AutoscalingUnavailable condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoscalerReason {
    /// No `autoscaling` section: replicas are fixed.
    NotConfigured,
    /// `engine: none`.
    Disabled,
    /// KEDA is installed (engine auto or keda).
    KedaAvailable,
    /// The custom metrics API is served (engine auto or hpa).
    CustomMetricsApi,
    /// Only the external metrics API is served (engine auto or hpa).
    ExternalMetricsApi,
    /// Engine auto, but neither KEDA nor a metrics API is served.
    NoMetricsApi,
    /// Engine keda, but KEDA is not installed.
    KedaNotInstalled,
    /// Engine hpa, but no custom or external metrics API is served.
    MetricsApiNotServed,
    /// A custom PromQL query needs KEDA, which is not installed (or engine hpa was forced).
    CustomMetricRequiresKeda,
}

impl AutoscalerReason {
    /// The CamelCase reason string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotConfigured => "NotConfigured",
            Self::Disabled => "Disabled",
            Self::KedaAvailable => "KedaAvailable",
            Self::CustomMetricsApi => "CustomMetricsApi",
            Self::ExternalMetricsApi => "ExternalMetricsApi",
            Self::NoMetricsApi => "NoMetricsApi",
            Self::KedaNotInstalled => "KedaNotInstalled",
            Self::MetricsApiNotServed => "MetricsApiNotServed",
            Self::CustomMetricRequiresKeda => "CustomMetricRequiresKeda",
        }
    }
}

/// The chosen autoscaler and the reason for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AutoscalerChoice {
    /// The autoscaler kind.
    pub kind: AutoscalerKind,
    /// Why.
    pub reason: AutoscalerReason,
}

impl AutoscalerChoice {
    /// Autoscaling was requested (engine other than none) but cannot be provided: the operator
    /// reports `AutoscalingUnavailable` with [`Self::reason`].
    pub fn unavailable(&self) -> bool {
        self.kind == AutoscalerKind::None
            && !matches!(
                self.reason,
                AutoscalerReason::NotConfigured | AutoscalerReason::Disabled
            )
    }
}

/// Picks the autoscaler for `spec` on a cluster serving `caps`.
///
/// # Guarantees
/// engine `auto`: KEDA if served, else an HPA on the custom metrics API (Pods metric), else on
/// the external metrics API (External metric), else none (`NoMetricsApi`). engine `keda`/`hpa`:
/// that one if served, else none with the reason. `custom` metrics need KEDA.
pub(super) fn choose(spec: &LynxDeploymentSpec, caps: &ClusterCapabilities) -> AutoscalerChoice {
    use AutoscalerKind as K;
    use AutoscalerReason as R;
    let pick = |kind, reason| AutoscalerChoice { kind, reason };
    let Some(autoscaling) = &spec.autoscaling else {
        return pick(K::None, R::NotConfigured);
    };
    let custom = autoscaling.metric == AutoscalingMetric::Custom;
    let hpa = || {
        if caps.custom_metrics {
            Some(pick(K::HpaPods, R::CustomMetricsApi))
        } else if caps.external_metrics {
            Some(pick(K::HpaExternal, R::ExternalMetricsApi))
        } else {
            None
        }
    };
    match autoscaling.engine {
        AutoscalingEngine::None => pick(K::None, R::Disabled),
        AutoscalingEngine::Keda | AutoscalingEngine::Auto if caps.keda => {
            pick(K::Keda, R::KedaAvailable)
        }
        AutoscalingEngine::Keda => pick(K::None, R::KedaNotInstalled),
        _ if custom => pick(K::None, R::CustomMetricRequiresKeda),
        AutoscalingEngine::Hpa => hpa().unwrap_or(pick(K::None, R::MetricsApiNotServed)),
        AutoscalingEngine::Auto => hpa().unwrap_or(pick(K::None, R::NoMetricsApi)),
    }
}

/// The worker gauge behind a built-in metric (`None` for custom).
pub fn metric_name(metric: AutoscalingMetric) -> Option<&'static str> {
    match metric {
        AutoscalingMetric::QueueLength => Some("lynx_queue_length"),
        AutoscalingMetric::Running => Some("lynx_running_sequences"),
        AutoscalingMetric::KvCacheUsage => Some("lynx_kv_cache_usage"),
        AutoscalingMetric::Custom => None,
    }
}

/// The per-worker target: `targetValue`, or the metric's default.
fn target(autoscaling: &AutoscalingSpec) -> f64 {
    autoscaling
        .target_value
        .unwrap_or(match autoscaling.metric {
            AutoscalingMetric::QueueLength => 4.0,
            AutoscalingMetric::Running => 8.0,
            AutoscalingMetric::KvCacheUsage => 0.8,
            AutoscalingMetric::Custom => 1.0,
        })
}

/// The router's gauge of the requests it holds because no worker is ready.
pub const ROUTER_PENDING_METRIC: &str = "lynx_router_pending_requests";
/// KEDA's `activationThreshold` with a router: the fleet wakes from zero when the load exceeds
/// it, so one held request (load >= 1) wakes it.
pub const ROUTER_ACTIVATION_THRESHOLD: &str = "0";

/// `sum(<metric>{namespace="<ns>",app_kubernetes_io_instance="<name>"})`: the series of `ctx`'s
/// pods (workers or router: the metric names differ).
fn instance_sum(ctx: &Context<'_>, metric: &str) -> String {
    format!(
        "sum({metric}{{namespace=\"{}\",app_kubernetes_io_instance=\"{}\"}})",
        ctx.namespace, ctx.name
    )
}

/// The PromQL total of the load over `ctx`'s workers; KEDA divides it by the replica count.
/// With a router, plus the requests the router holds (`lynx_router_pending_requests`), each side
/// `or vector(0)` so that absent series (no worker at zero, no router metrics yet) count as 0.
fn promql(ctx: &Context<'_>, autoscaling: &AutoscalingSpec) -> String {
    let workers = match (metric_name(autoscaling.metric), &autoscaling.query) {
        (Some(metric), _) => instance_sum(ctx, metric),
        (None, query) => query.clone().unwrap_or_default(),
    };
    if ctx.router().is_none() {
        return workers;
    }
    let workers = match metric_name(autoscaling.metric) {
        Some(_) => workers,
        // A custom query may keep labels: summed, it adds to the router's label-free sum.
        None => format!("sum({workers})"),
    };
    format!(
        "({workers} or vector(0)) + ({} or vector(0))",
        instance_sum(ctx, ROUTER_PENDING_METRIC)
    )
}

/// The reference to the LynxDeployment's scale subresource.
fn scale_target(ctx: &Context<'_>) -> CrossVersionObjectReference {
    CrossVersionObjectReference {
        api_version: Some(format!("{GROUP}/{VERSION}")),
        kind: "LynxDeployment".to_owned(),
        name: ctx.name.clone(),
    }
}

/// The KEDA ScaledObject when KEDA was chosen: a prometheus trigger with the metric's PromQL,
/// scaling the LynxDeployment. With a router the query adds the router's held requests and the
/// trigger's `activationThreshold` is [`ROUTER_ACTIVATION_THRESHOLD`], so one request held at
/// zero workers wakes the fleet.
pub(super) fn scaled_object(
    ctx: &Context<'_>,
    choice: &AutoscalerChoice,
) -> Option<serde_json::Value> {
    let autoscaling = ctx
        .ld
        .spec
        .autoscaling
        .as_ref()
        .filter(|_| choice.kind == AutoscalerKind::Keda)?;
    let target_ref = scale_target(ctx);
    let mut trigger = json!({
        "serverAddress": autoscaling.prometheus_address,
        "query": promql(ctx, autoscaling),
        "threshold": target(autoscaling).to_string(),
    });
    if ctx.router().is_some() {
        trigger["activationThreshold"] = ROUTER_ACTIVATION_THRESHOLD.into();
    }
    Some(json!({
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": ctx.metadata_json(),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": target_ref.api_version,
                "kind": target_ref.kind,
                "name": target_ref.name,
            },
            "minReplicaCount": autoscaling.min_replicas,
            "maxReplicaCount": autoscaling.max_replicas,
            "advanced": {
                "horizontalPodAutoscalerConfig": {
                    "behavior": {
                        "scaleDown": { "stabilizationWindowSeconds": autoscaling.scale_down_stabilization_seconds },
                    },
                },
            },
            "triggers": [{
                "type": "prometheus",
                "metricType": "AverageValue",
                "metadata": trigger,
            }],
        },
    }))
}

/// The HPA when an HPA was chosen: a Pods metric (custom metrics API) or an External metric
/// selected by the instance label, averaged per worker. `minReplicas` is at least 1 (an HPA
/// cannot scale to zero).
pub(super) fn hpa(ctx: &Context<'_>, choice: &AutoscalerChoice) -> Option<HorizontalPodAutoscaler> {
    let external = match choice.kind {
        AutoscalerKind::HpaPods => false,
        AutoscalerKind::HpaExternal => true,
        AutoscalerKind::Keda | AutoscalerKind::None => return None,
    };
    let autoscaling = ctx.ld.spec.autoscaling.as_ref()?;
    let name = metric_name(autoscaling.metric)?;
    let target = MetricTarget {
        type_: "AverageValue".to_owned(),
        average_value: Some(Quantity(target(autoscaling).to_string())),
        ..MetricTarget::default()
    };
    let metric = if external {
        let selector = LabelSelector {
            match_labels: Some(
                [(labels::INSTANCE.replace(['.', '/'], "_"), ctx.name.clone())].into(),
            ),
            ..LabelSelector::default()
        };
        MetricSpec {
            type_: "External".to_owned(),
            external: Some(ExternalMetricSource {
                metric: MetricIdentifier {
                    name: name.to_owned(),
                    selector: Some(selector),
                },
                target,
            }),
            ..MetricSpec::default()
        }
    } else {
        MetricSpec {
            type_: "Pods".to_owned(),
            pods: Some(PodsMetricSource {
                metric: MetricIdentifier {
                    name: name.to_owned(),
                    selector: None,
                },
                target,
            }),
            ..MetricSpec::default()
        }
    };
    Some(HorizontalPodAutoscaler {
        metadata: ctx.metadata(),
        spec: HorizontalPodAutoscalerSpec {
            scale_target_ref: scale_target(ctx),
            min_replicas: Some(autoscaling.min_replicas.max(1)),
            max_replicas: autoscaling.max_replicas,
            metrics: Some(vec![metric]),
            behavior: Some(HorizontalPodAutoscalerBehavior {
                scale_down: Some(HPAScalingRules {
                    stabilization_window_seconds: Some(
                        autoscaling.scale_down_stabilization_seconds,
                    ),
                    ..HPAScalingRules::default()
                }),
                scale_up: None,
            }),
        },
        status: None,
    })
}
