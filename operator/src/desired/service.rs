//! The objects around the workers: the gRPC Service, the PodDisruptionBudget and the PodMonitor.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;

use super::{labels, ClusterCapabilities, Context};
use crate::crd::ServiceType;

/// The Service: one `grpc` port (`appProtocol: grpc`) to the workers' gRPC port.
pub(super) fn service(ctx: &Context<'_>) -> Service {
    let spec = &ctx.ld.spec.service;
    let mut metadata = ctx.metadata();
    if !spec.annotations.is_empty() {
        metadata.annotations = Some(spec.annotations.clone());
    }
    let type_ = match spec.type_ {
        ServiceType::ClusterIP => "ClusterIP",
        ServiceType::NodePort => "NodePort",
        ServiceType::LoadBalancer => "LoadBalancer",
    };
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(type_.to_owned()),
            selector: Some(ctx.selector()),
            ports: Some(vec![ServicePort {
                name: Some("grpc".to_owned()),
                port: spec.port,
                target_port: Some(IntOrString::String("grpc".to_owned())),
                protocol: Some("TCP".to_owned()),
                app_protocol: Some("grpc".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The PodDisruptionBudget when `podDisruptionBudget.enabled`; `minAvailable: 1` when neither
/// bound is set.
pub(super) fn pdb(ctx: &Context<'_>) -> Option<PodDisruptionBudget> {
    let spec = ctx
        .ld
        .spec
        .pod_disruption_budget
        .as_ref()
        .filter(|pdb| pdb.enabled)?;
    let min_available = match (&spec.min_available, &spec.max_unavailable) {
        (None, None) => Some(IntOrString::Int(1)),
        (min, _) => min.clone(),
    };
    Some(PodDisruptionBudget {
        metadata: ctx.metadata(),
        spec: Some(PodDisruptionBudgetSpec {
            selector: Some(LabelSelector {
                match_labels: Some(ctx.selector()),
                ..LabelSelector::default()
            }),
            min_available,
            max_unavailable: spec.max_unavailable.clone(),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    })
}

/// A `monitoring.coreos.com/v1` PodMonitor scraping `/metrics` on the `http` port, when monitoring
/// is enabled and the Prometheus operator is installed. It copies the instance label onto the
/// series (`app_kubernetes_io_instance`), which the autoscaling queries select on, and carries
/// `monitoring.podMonitorLabels` besides the operator's labels.
pub(super) fn pod_monitor(
    ctx: &Context<'_>,
    caps: &ClusterCapabilities,
) -> Option<serde_json::Value> {
    let monitoring = &ctx.ld.spec.monitoring;
    if !(monitoring.enabled && caps.prometheus_operator) {
        return None;
    }
    let mut metadata = ctx.metadata_json();
    // The user's labels never replace the operator's own (selection and ownership).
    if let Some(labels) = metadata.get_mut("labels").and_then(|l| l.as_object_mut()) {
        for (key, value) in &monitoring.pod_monitor_labels {
            labels
                .entry(key.clone())
                .or_insert_with(|| serde_json::Value::String(value.clone()));
        }
    }
    Some(json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": metadata,
        "spec": {
            "selector": { "matchLabels": ctx.selector() },
            "podTargetLabels": [labels::INSTANCE],
            "podMetricsEndpoints": [{
                "port": "http",
                "path": "/metrics",
                "interval": monitoring.scrape_interval,
            }],
        },
    }))
}
