//! Tests of the desired-state builder: golden files for the samples, assertions on the fields
//! that matter; the worker Deployment is in `deployment`, the autoscaling decisions in
//! `autoscaling`, the headless Service, the router and the InferencePool in `router`.

mod autoscaling;
mod deployment;
mod model;
mod router;

use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::*;
use crate::crd::{LynxDeploymentSpec, PodDisruptionBudgetSpec};

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A sample from `deploy/samples/`, with the identity the API server would give it.
pub(crate) fn sample(name: &str) -> LynxDeployment {
    let path = manifest_dir()
        .join("../deploy/samples")
        .join(format!("{name}.yaml"));
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    let mut ld: LynxDeployment =
        serde_yaml_ng::from_str(&text).unwrap_or_else(|err| panic!("{name}: {err}"));
    ld.metadata.namespace = Some("serving".to_owned());
    ld.metadata.uid = Some(format!("uid-{name}"));
    ld
}

pub(super) const ALL: ClusterCapabilities = ClusterCapabilities {
    keda: true,
    custom_metrics: true,
    external_metrics: true,
    prometheus_operator: true,
    inference_pool: true,
};
pub(super) const NONE: ClusterCapabilities = ClusterCapabilities {
    keda: false,
    custom_metrics: false,
    external_metrics: false,
    prometheus_operator: false,
    inference_pool: false,
};

/// All children as one multi-document YAML, `None` children left out.
fn render(desired: &Desired) -> String {
    let mut docs = vec![
        serde_yaml_ng::to_string(&desired.deployment),
        serde_yaml_ng::to_string(&desired.service),
        serde_yaml_ng::to_string(&desired.workers_service),
    ];
    if let Some(router) = &desired.router {
        docs.push(serde_yaml_ng::to_string(router));
    }
    if let Some(pdb) = &desired.pdb {
        docs.push(serde_yaml_ng::to_string(pdb));
    }
    if let Some(hpa) = &desired.hpa {
        docs.push(serde_yaml_ng::to_string(hpa));
    }
    if let Some(job) = &desired.model_job {
        docs.push(serde_yaml_ng::to_string(job));
    }
    let json_children = [
        &desired.scaled_object,
        &desired.pod_monitor,
        &desired.router_pod_monitor,
        &desired.inference_pool,
    ];
    for value in json_children.into_iter().flatten() {
        docs.push(serde_yaml_ng::to_string(value));
    }
    let docs: Vec<String> = docs
        .into_iter()
        .map(|doc| doc.expect("children serialize"))
        .collect();
    format!(
        "# autoscaler: {} ({})\n{}",
        desired.autoscaler.kind.as_str(),
        desired.autoscaler.reason.as_str(),
        docs.join("---\n")
    )
}

/// Compares `actual` with `operator/tests/golden/<name>.yaml`; `LYNX_UPDATE_GOLDEN=1` rewrites it.
fn assert_golden(name: &str, actual: &str) {
    let path = manifest_dir()
        .join("tests/golden")
        .join(format!("{name}.yaml"));
    if std::env::var_os("LYNX_UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::write(&path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        expected == actual,
        "{} differs from the desired state; review, then regenerate with \
         `LYNX_UPDATE_GOLDEN=1 cargo test -p lynx-operator`\n--- actual ---\n{actual}",
        path.display()
    );
}

fn pod(desired: &Desired) -> &PodSpec {
    desired
        .deployment
        .spec
        .template
        .spec
        .as_ref()
        .expect("pod spec")
}

fn worker(desired: &Desired) -> &Container {
    &pod(desired).containers[0]
}

#[test]
fn golden_minimal_on_a_bare_cluster() {
    let desired = desired(&sample("minimal"), &NONE).expect("valid");
    assert_golden("minimal", &render(&desired));
}

#[test]
fn golden_full_with_keda_and_prometheus_operator() {
    let desired = desired(&sample("full"), &ALL).expect("valid");
    assert_golden("full-keda", &render(&desired));
}

#[test]
fn golden_full_with_custom_metrics_api() {
    let caps = ClusterCapabilities {
        custom_metrics: true,
        ..NONE
    };
    let desired = desired(&sample("full"), &caps).expect("valid");
    assert_golden("full-hpa", &render(&desired));
}

#[test]
fn golden_s3_with_a_model_cache() {
    let desired = desired(&sample("s3-cache"), &NONE).expect("valid");
    assert_golden("s3-cache", &render(&desired));
}

#[test]
fn every_child_is_labelled_and_owned_by_the_lynx_deployment() {
    let desired = desired(&sample("full"), &ALL).expect("valid");
    let pdb = desired.pdb.as_ref().expect("pdb");
    let metas = [
        &desired.deployment.metadata,
        &desired.service.metadata,
        &pdb.metadata,
    ];
    let json_metas: Vec<ObjectMeta> = [&desired.scaled_object, &desired.pod_monitor]
        .into_iter()
        .map(|value| {
            serde_json::from_value(value.as_ref().expect("present")["metadata"].clone())
                .expect("meta")
        })
        .collect();
    for meta in metas.into_iter().chain(&json_metas) {
        assert_eq!(meta.name.as_deref(), Some("lynx-full"));
        assert_eq!(meta.namespace.as_deref(), Some("serving"));
        let owners = meta.owner_references.as_ref().expect("owner references");
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].kind, "LynxDeployment");
        assert_eq!(owners[0].api_version, "serving.lynx.dev/v1alpha1");
        assert_eq!(owners[0].uid, "uid-full");
        assert_eq!(owners[0].controller, Some(true));
        assert_eq!(owners[0].block_owner_deletion, Some(true));
        let labels = meta.labels.as_ref().expect("labels");
        assert_eq!(labels[labels::NAME], "lynx-worker");
        assert_eq!(labels[labels::INSTANCE], "lynx-full");
        assert_eq!(labels[labels::MANAGED_BY], "lynx-operator");
    }
}

pub(super) fn desired_ok(ld: &LynxDeployment) -> Desired {
    desired(ld, &NONE).expect("valid")
}

#[test]
fn service_is_grpc_with_the_configured_type_port_and_annotations() {
    let minimal = desired_ok(&sample("minimal"));
    let spec = minimal.service.spec.clone().expect("spec");
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    let port = &spec.ports.expect("ports")[0];
    assert_eq!(
        (
            port.name.as_deref(),
            port.port,
            port.app_protocol.as_deref()
        ),
        (Some("grpc"), 50051, Some("grpc"))
    );
    let full = desired_ok(&sample("full"));
    assert_eq!(
        full.service.spec.and_then(|s| s.type_).as_deref(),
        Some("LoadBalancer")
    );
    assert!(full
        .service
        .metadata
        .annotations
        .is_some_and(|a| a.contains_key("service.beta.kubernetes.io/aws-load-balancer-type")));
    assert_eq!(
        endpoint(&sample("full")).as_deref(),
        Some("lynx-full.serving.svc.cluster.local:443")
    );
    assert_eq!(
        selector_string(&sample("full")),
        "app.kubernetes.io/instance=lynx-full,app.kubernetes.io/name=lynx-worker"
    );
}

#[test]
fn pdb_follows_its_spec() {
    let mut ld = sample("full");
    let pdb = desired_ok(&ld).pdb.and_then(|p| p.spec).expect("pdb");
    assert_eq!(
        (pdb.min_available, pdb.max_unavailable),
        (None, Some(IntOrString::String("25%".to_owned())))
    );
    ld.spec.pod_disruption_budget = Some(PodDisruptionBudgetSpec {
        enabled: true,
        min_available: None,
        max_unavailable: None,
    });
    let pdb = desired_ok(&ld).pdb.and_then(|p| p.spec).expect("pdb");
    assert_eq!(pdb.min_available, Some(IntOrString::Int(1)));
    ld.spec.pod_disruption_budget = Some(PodDisruptionBudgetSpec {
        enabled: false,
        min_available: None,
        max_unavailable: None,
    });
    assert!(desired_ok(&ld).pdb.is_none());
    assert!(desired_ok(&sample("minimal")).pdb.is_none());
}

#[test]
fn pod_monitor_needs_monitoring_and_the_prometheus_operator() {
    let mut ld = sample("full");
    let monitor = desired(&ld, &ALL)
        .expect("valid")
        .pod_monitor
        .expect("pod monitor");
    assert_eq!(monitor["spec"]["podMetricsEndpoints"][0]["interval"], "30s");
    assert!(desired(
        &ld,
        &ClusterCapabilities {
            prometheus_operator: false,
            ..ALL
        }
    )
    .expect("valid")
    .pod_monitor
    .is_none());
    // A Prometheus that selects monitors by label finds it; the operator's labels stay.
    assert_eq!(
        monitor["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
    assert_eq!(
        monitor["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "lynx-operator"
    );
    ld.spec
        .monitoring
        .pod_monitor_labels
        .insert("app.kubernetes.io/managed-by".to_owned(), "helm".to_owned());
    let monitor = desired(&ld, &ALL)
        .expect("valid")
        .pod_monitor
        .expect("pod monitor");
    assert_eq!(
        monitor["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "lynx-operator"
    );
    ld.spec.monitoring.enabled = false;
    let desired = desired(&ld, &ALL).expect("valid");
    assert!(desired.pod_monitor.is_none());
    assert!(desired
        .deployment
        .spec
        .template
        .metadata
        .and_then(|m| m.annotations)
        .is_none());
}

#[test]
fn replicas_pass_through_to_the_deployment() {
    assert_eq!(
        desired_ok(&sample("full")).deployment.spec.replicas,
        Some(2)
    );
    assert_eq!(
        desired_ok(&sample("minimal")).deployment.spec.replicas,
        Some(1)
    );
}

#[test]
fn invalid_specs_and_missing_identity_are_errors() {
    let mut ld = sample("minimal");
    ld.spec.model.source.host_path = Some(crate::crd::HostPathSource {
        path: "/data".to_owned(),
    });
    assert!(matches!(desired(&ld, &NONE), Err(DesiredError::Invalid(_))));
    let mut ld = sample("minimal");
    ld.metadata.namespace = None;
    assert_eq!(desired(&ld, &NONE), Err(DesiredError::MissingNamespace));
    let mut ld = sample("minimal");
    ld.metadata.uid = None;
    assert_eq!(desired(&ld, &NONE), Err(DesiredError::MissingIdentity));
}

/// A spec type check: the samples cover the options the golden files claim to cover.
#[test]
fn full_sample_sets_every_top_level_option() {
    let spec: &LynxDeploymentSpec = &sample("full").spec;
    let value = serde_json::to_value(spec).expect("serialize");
    for key in [
        "model",
        "replicas",
        "worker",
        "batching",
        "limits",
        "drainTimeoutSeconds",
        "autoscaling",
        "service",
        "tls",
        "auth",
        "monitoring",
        "rollout",
        "podDisruptionBudget",
    ] {
        assert!(value.get(key).is_some(), "full.yaml lacks {key}");
    }
}
