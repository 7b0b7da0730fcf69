//! The router in front of the workers: the `lynx-router` Deployment `<name>-router` and its
//! PodMonitor. The main Service selects it when it exists (`service.rs`).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use super::deployment::{
    http_probe, image_pull_secrets, mount, non_empty_map, pod_security, port, quantities,
    restricted, secret_volume, AUTH_MOUNT, HTTP_PORT,
};
use super::{labels, router_name, service, workers_target, ClusterCapabilities, Context};
use crate::crd::{PullPolicy, RouterSpec};

/// The router's gRPC port inside the pod (`lynx.v1.Lynx`, forwarded to a worker).
pub const ROUTER_GRPC_PORT: i32 = 50051;
/// The router's HTTP port inside the pod: the OpenAI API, `/metrics`, `/healthz`, `/readyz`.
pub const ROUTER_HTTP_PORT: i32 = 9090;
/// Grace beyond the drain before the kubelet kills the router.
const GRACE_MARGIN_SECONDS: i64 = 10;

/// The labels that select `ctx`'s router pods: `name: lynx-router`, the instance, `component:
/// router` (disjoint from the workers' selector, whose `name` is `lynx-worker`).
pub(super) fn selector(ctx: &Context<'_>) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::NAME.to_owned(), labels::ROUTER.to_owned()),
        (labels::INSTANCE.to_owned(), ctx.name.clone()),
        (
            labels::COMPONENT.to_owned(),
            labels::ROUTER_COMPONENT.to_owned(),
        ),
    ])
}

/// The router's selector labels plus `managed-by`: the labels of its Deployment, pods and
/// PodMonitor.
fn router_labels(ctx: &Context<'_>) -> BTreeMap<String, String> {
    let mut labels = selector(ctx);
    labels.insert(labels::MANAGED_BY.to_owned(), labels::OPERATOR.to_owned());
    labels
}

/// `lynx-router` arguments: the workers' headless Service, the workers' HTTP port, listen
/// addresses, the hold limits, the drain timeout and, with `spec.auth`, the tokens file.
pub(super) fn router_args(ctx: &Context<'_>, router: &RouterSpec) -> Vec<String> {
    let spec = &ctx.ld.spec;
    let mut args = vec![
        "--workers".to_owned(),
        workers_target(&ctx.name, &ctx.namespace),
        "--worker-http-port".to_owned(),
        HTTP_PORT.to_string(),
        "--grpc-addr".to_owned(),
        format!("0.0.0.0:{ROUTER_GRPC_PORT}"),
        "--http-addr".to_owned(),
        format!("0.0.0.0:{ROUTER_HTTP_PORT}"),
        "--max-held-requests".to_owned(),
        router.max_held_requests.to_string(),
        "--hold-timeout-seconds".to_owned(),
        router.hold_timeout_seconds.to_string(),
        "--drain-timeout-seconds".to_owned(),
        spec.drain_timeout_seconds.to_string(),
    ];
    if let Some(auth) = &spec.auth {
        args.extend([
            "--auth-tokens-file".to_owned(),
            format!("{AUTH_MOUNT}/{}", auth.key),
        ]);
    }
    args
}

/// The router Deployment when `spec.router` is enabled.
///
/// # Guarantees
/// No GPU; the image is `router.image` or the worker image; its pods carry [`selector`] (never
/// the workers' selector); `terminationGracePeriodSeconds` = drain timeout + 10; restricted
/// Pod Security like the workers; scrape annotations when monitoring is on.
pub(super) fn deployment(ctx: &Context<'_>) -> Option<Deployment> {
    let router = ctx.router()?;
    let spec = &ctx.ld.spec;
    let mut annotations = BTreeMap::new();
    if spec.monitoring.enabled {
        annotations.insert("prometheus.io/scrape".to_owned(), "true".to_owned());
        annotations.insert(
            "prometheus.io/port".to_owned(),
            ROUTER_HTTP_PORT.to_string(),
        );
        annotations.insert("prometheus.io/path".to_owned(), "/metrics".to_owned());
    }
    let pod = PodSpec {
        containers: vec![container(ctx, router)],
        volumes: spec
            .auth
            .as_ref()
            .map(|auth| vec![secret_volume("auth", &auth.secret_name)]),
        security_context: Some(pod_security()),
        termination_grace_period_seconds: Some(spec.drain_timeout_seconds + GRACE_MARGIN_SECONDS),
        automount_service_account_token: Some(false),
        image_pull_secrets: image_pull_secrets(&spec.worker),
        ..PodSpec::default()
    };
    Some(Deployment {
        metadata: ctx.metadata_as(router_name(&ctx.name), router_labels(ctx)),
        spec: DeploymentSpec {
            replicas: Some(router.replicas),
            selector: LabelSelector {
                match_labels: Some(selector(ctx)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(router_labels(ctx)),
                    annotations: non_empty_map(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        },
        status: None,
    })
}

fn container(ctx: &Context<'_>, router: &RouterSpec) -> Container {
    let spec = &ctx.ld.spec;
    let (requests, limits) = match &router.resources {
        Some(resources) => (
            quantities(resources.requests.as_ref()),
            quantities(resources.limits.as_ref()),
        ),
        None => (
            BTreeMap::from([
                ("cpu".to_owned(), Quantity("500m".to_owned())),
                ("memory".to_owned(), Quantity("256Mi".to_owned())),
            ]),
            BTreeMap::new(),
        ),
    };
    Container {
        name: "router".to_owned(),
        image: Some(
            router
                .image
                .clone()
                .unwrap_or_else(|| spec.worker.image.clone()),
        ),
        image_pull_policy: spec.worker.image_pull_policy.map(|policy| {
            match policy {
                PullPolicy::Always => "Always",
                PullPolicy::IfNotPresent => "IfNotPresent",
                PullPolicy::Never => "Never",
            }
            .to_owned()
        }),
        command: Some(vec!["lynx-router".to_owned()]),
        args: Some(router_args(ctx, router)),
        ports: Some(vec![
            port("grpc", ROUTER_GRPC_PORT),
            port("http", ROUTER_HTTP_PORT),
        ]),
        resources: Some(ResourceRequirements {
            limits: non_empty_map(limits),
            requests: non_empty_map(requests),
            ..ResourceRequirements::default()
        }),
        volume_mounts: spec
            .auth
            .as_ref()
            .map(|_| vec![mount("auth", AUTH_MOUNT, true)]),
        readiness_probe: Some(http_probe("/readyz", 5, 3)),
        liveness_probe: Some(http_probe("/healthz", 10, 3)),
        security_context: Some(restricted()),
        ..Container::default()
    }
}

/// The router's PodMonitor `<name>-router` (like the workers': `/metrics` on `http`, the
/// instance label copied onto the series), with a router, monitoring on and the Prometheus
/// operator installed.
pub(super) fn pod_monitor(
    ctx: &Context<'_>,
    caps: &ClusterCapabilities,
) -> Option<serde_json::Value> {
    ctx.router()?;
    let metadata = ctx.metadata_as(router_name(&ctx.name), router_labels(ctx));
    service::pod_monitor_for(ctx, caps, metadata, selector(ctx))
}
