//! The objects around the workers: the gRPC Service, the PodDisruptionBudget and the PodMonitor.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;

use super::{
    labels, router, workers_service_name, ClusterCapabilities, Context, GRPC_PORT, HTTP_PORT,
};
use crate::crd::ServiceType;

/// The main Service: one `grpc` port (`appProtocol: grpc`) to the workers' gRPC port; with a
/// router, it selects the router pods instead and adds an `http` port to the router's OpenAI
/// API.
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
    let mut ports = vec![service_port("grpc", spec.port)];
    let selector = if ctx.router().is_some() {
        ports.push(service_port("http", router::ROUTER_HTTP_PORT));
        router::selector(ctx)
    } else {
        ctx.selector()
    };
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(type_.to_owned()),
            selector: Some(selector),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The headless Service `<name>-workers`: one DNS record per ready worker, for gRPC clients that
/// balance over them (`dns:///` with `round_robin`) and for the router. Ports `grpc` and `http`
/// (OpenAI API, `/metrics`); not-ready workers are not published.
pub(super) fn workers_service(ctx: &Context<'_>) -> Service {
    Service {
        metadata: ctx.metadata_as(workers_service_name(&ctx.name), ctx.labels()),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            cluster_ip: Some("None".to_owned()),
            selector: Some(ctx.selector()),
            publish_not_ready_addresses: Some(false),
            ports: Some(vec![
                service_port("grpc", GRPC_PORT),
                service_port("http", HTTP_PORT),
            ]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// A TCP port `name` -> the pods' port of the same name (`appProtocol` = the name).
fn service_port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port,
        target_port: Some(IntOrString::String(name.to_owned())),
        protocol: Some("TCP".to_owned()),
        app_protocol: Some(name.to_owned()),
        ..ServicePort::default()
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
    pod_monitor_for(ctx, caps, ctx.metadata(), ctx.selector())
}

/// A PodMonitor with `metadata` scraping the pods of `selector` (see [`pod_monitor`]).
pub(super) fn pod_monitor_for(
    ctx: &Context<'_>,
    caps: &ClusterCapabilities,
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    selector: std::collections::BTreeMap<String, String>,
) -> Option<serde_json::Value> {
    let monitoring = &ctx.ld.spec.monitoring;
    if !(monitoring.enabled && caps.prometheus_operator) {
        return None;
    }
    let mut metadata = serde_json::to_value(metadata).unwrap_or(serde_json::Value::Null);
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
            "selector": { "matchLabels": selector },
            "podTargetLabels": [labels::INSTANCE],
            "podMetricsEndpoints": [{
                "port": "http",
                "path": "/metrics",
                "interval": monitoring.scrape_interval,
            }],
        },
    }))
}
