//! What stands in front of the workers: the headless Service, the router (Deployment, main
//! Service, PodMonitor, the KEDA query that wakes a fleet at zero) and the InferencePool.

use k8s_openapi::api::core::v1::Service;

use super::super::*;
use super::{assert_golden, desired_ok, render, sample, ALL, NONE};
use crate::crd::{EndpointPickerFailureMode, RouterSpec};
use crate::validate::ValidationError;

fn ports(service: &Service) -> Vec<(String, i32, String)> {
    let spec = service.spec.as_ref().expect("spec");
    spec.ports
        .iter()
        .flatten()
        .map(|p| {
            let target = match &p.target_port {
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s)) => {
                    s.clone()
                }
                other => format!("{other:?}"),
            };
            (p.name.clone().unwrap_or_default(), p.port, target)
        })
        .collect()
}

fn selector(service: &Service) -> BTreeMap<String, String> {
    service
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .expect("selector")
}

fn router_args(desired: &Desired) -> Vec<String> {
    let router = desired.router.as_ref().expect("router");
    let pod = router.spec.template.spec.as_ref().expect("pod");
    pod.containers[0].args.clone().expect("args")
}

#[test]
fn golden_router_with_keda_prometheus_operator_and_inference_pool() {
    let desired = desired(&sample("router"), &ALL).expect("valid");
    assert_golden("router", &render(&desired));
}

#[test]
fn a_headless_service_publishes_the_ready_workers() {
    for name in ["minimal", "router"] {
        let desired = desired_ok(&sample(name));
        let service = &desired.workers_service;
        let expected = format!("lynx-{name}-workers");
        assert_eq!(service.metadata.name.as_deref(), Some(expected.as_str()));
        let spec = service.spec.as_ref().expect("spec");
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(false));
        assert_eq!(selector(service), selector_labels(&format!("lynx-{name}")));
        assert_eq!(
            ports(service),
            [
                ("grpc".to_owned(), 50051, "grpc".to_owned()),
                ("http".to_owned(), 9090, "http".to_owned())
            ]
        );
    }
    assert_eq!(
        workers_endpoint(&sample("minimal")).as_deref(),
        Some("dns:///lynx-minimal-workers.serving.svc.cluster.local:50051")
    );
}

#[test]
fn the_router_deployment_runs_lynx_router_against_the_headless_service() {
    let ld = sample("router");
    let desired = desired_ok(&ld);
    let router = desired.router.as_ref().expect("router");
    assert_eq!(router.metadata.name.as_deref(), Some("lynx-router-router"));
    assert_eq!(router.spec.replicas, Some(2));
    let pod = router.spec.template.spec.as_ref().expect("pod");
    assert_eq!(pod.termination_grace_period_seconds, Some(120 + 10));
    let container = &pod.containers[0];
    assert_eq!(
        container.command.as_deref(),
        Some(&["lynx-router".to_owned()][..])
    );
    assert_eq!(
        container.image.as_deref(),
        Some("ghcr.io/lynx-serve/lynx-worker:0.1.0"),
        "the worker image ships lynx-router"
    );
    assert_eq!(
        router_args(&desired).join(" "),
        "--workers dns:///lynx-router-workers.serving.svc.cluster.local:50051 \
         --worker-http-port 9090 --grpc-addr 0.0.0.0:50051 --http-addr 0.0.0.0:9090 \
         --max-held-requests 512 --hold-timeout-seconds 600 --drain-timeout-seconds 120 \
         --auth-tokens-file /etc/lynx/auth/tokens"
    );
    let ports: Vec<_> = container
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.clone().unwrap_or_default(), p.container_port))
        .collect();
    assert_eq!(
        ports,
        [("grpc".to_owned(), 50051), ("http".to_owned(), 9090)]
    );
    let probe_path = |probe: &Option<k8s_openapi::api::core::v1::Probe>| {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.clone())
            .expect("http probe");
        (get.path.unwrap_or_default(), get.port)
    };
    let http = k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("http".to_owned());
    assert_eq!(
        probe_path(&container.readiness_probe),
        ("/readyz".to_owned(), http.clone())
    );
    assert_eq!(
        probe_path(&container.liveness_probe),
        ("/healthz".to_owned(), http)
    );
    let resources = container.resources.as_ref().expect("resources");
    assert!(
        resources
            .limits
            .iter()
            .chain(&resources.requests)
            .all(|map| map.keys().all(|key| key == "cpu" || key == "memory")),
        "no GPU: {resources:?}"
    );
    assert_eq!(
        resources.limits.as_ref().expect("limits")["memory"].0,
        "512Mi"
    );
    // The auth Secret is mounted where --auth-tokens-file points.
    let volume = &pod.volumes.as_ref().expect("volumes")[0];
    assert_eq!(
        volume
            .secret
            .as_ref()
            .and_then(|s| s.secret_name.as_deref()),
        Some("lynx-router-tokens")
    );
    let mounts = container.volume_mounts.as_ref().expect("mounts");
    assert_eq!(mounts[0].mount_path, "/etc/lynx/auth");
    assert_eq!(
        container
            .security_context
            .as_ref()
            .and_then(|s| s.read_only_root_filesystem),
        Some(true)
    );
}

#[test]
fn router_defaults_image_resources_and_no_auth() {
    let mut ld = sample("minimal");
    ld.spec.router = Some(RouterSpec::default());
    let desired = desired_ok(&ld);
    let args = router_args(&desired).join(" ");
    assert!(
        args.contains("--max-held-requests 256 --hold-timeout-seconds 120"),
        "{args}"
    );
    assert!(args.ends_with("--drain-timeout-seconds 30"), "{args}");
    let router = desired.router.as_ref().expect("router");
    assert_eq!(router.spec.replicas, Some(2));
    let pod = router.spec.template.spec.as_ref().expect("pod");
    assert!(pod.volumes.is_none());
    let requests = pod.containers[0]
        .resources
        .as_ref()
        .and_then(|r| r.requests.clone())
        .expect("requests");
    assert_eq!(
        (requests["cpu"].0.as_str(), requests["memory"].0.as_str()),
        ("500m", "256Mi")
    );
    ld.spec.router = Some(RouterSpec {
        image: Some("example.com/router:1".to_owned()),
        ..RouterSpec::default()
    });
    let desired = desired_ok(&ld);
    let pod = desired
        .router
        .as_ref()
        .expect("router")
        .spec
        .template
        .spec
        .clone();
    assert_eq!(
        pod.expect("pod").containers[0].image.as_deref(),
        Some("example.com/router:1")
    );
    ld.spec.router = Some(RouterSpec {
        enabled: false,
        ..RouterSpec::default()
    });
    assert!(
        desired_ok(&ld).router.is_none(),
        "enabled: false is no router"
    );
}

#[test]
fn router_and_worker_selectors_never_select_each_others_pods() {
    let desired = desired_ok(&sample("router"));
    let router = desired.router.as_ref().expect("router");
    let router_pod = router
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .expect("labels");
    let worker_pod = desired
        .deployment
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .expect("labels");
    let router_selector = router.spec.selector.match_labels.clone().expect("selector");
    let worker_selector = desired
        .deployment
        .spec
        .selector
        .match_labels
        .clone()
        .expect("selector");
    let matches = |selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>| {
        selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    };
    assert!(matches(&router_selector, &router_pod));
    assert!(matches(&worker_selector, &worker_pod));
    assert!(!matches(&router_selector, &worker_pod));
    assert!(!matches(&worker_selector, &router_pod));
    assert_eq!(router_pod[labels::COMPONENT], "router");
    assert_eq!(router_pod[labels::INSTANCE], "lynx-router");
}

#[test]
fn with_a_router_the_main_service_selects_it_and_serves_the_openai_api() {
    let desired = desired_ok(&sample("router"));
    let router = desired.router.as_ref().expect("router");
    assert_eq!(
        Some(selector(&desired.service)),
        router.spec.selector.match_labels.clone()
    );
    assert_eq!(
        ports(&desired.service),
        [
            ("grpc".to_owned(), 50051, "grpc".to_owned()),
            ("http".to_owned(), 9090, "http".to_owned())
        ]
    );
    assert_eq!(
        endpoint(&sample("router")).as_deref(),
        Some("lynx-router.serving.svc.cluster.local:50051")
    );
    // Without a router: the workers, one gRPC port, as before.
    let minimal = desired_ok(&sample("minimal"));
    assert_eq!(selector(&minimal.service), selector_labels("lynx-minimal"));
    assert_eq!(ports(&minimal.service).len(), 1);
    assert!(minimal.router.is_none());
}

#[test]
fn the_router_pod_monitor_follows_the_workers_one() {
    let built = desired(&sample("router"), &ALL).expect("valid");
    let monitor = built.router_pod_monitor.expect("router pod monitor");
    assert_eq!(monitor["metadata"]["name"], "lynx-router-router");
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
        "lynx-router"
    );
    assert_eq!(monitor["spec"]["podTargetLabels"][0], labels::INSTANCE);
    assert_eq!(monitor["spec"]["podMetricsEndpoints"][0]["port"], "http");
    let no_operator = ClusterCapabilities {
        prometheus_operator: false,
        ..ALL
    };
    assert!(desired_ok(&sample("router")).router_pod_monitor.is_none());
    assert!(desired(&sample("router"), &no_operator)
        .expect("valid")
        .router_pod_monitor
        .is_none());
    assert!(desired(&sample("full"), &ALL)
        .expect("valid")
        .router_pod_monitor
        .is_none());
}

#[test]
fn keda_wakes_a_fleet_at_zero_on_the_routers_held_requests() {
    let built = desired(&sample("router"), &ALL).expect("valid");
    let object = built.scaled_object.expect("scaled object");
    assert_eq!(object["spec"]["minReplicaCount"], 0);
    let trigger = &object["spec"]["triggers"][0]["metadata"];
    assert_eq!(
        trigger["query"],
        "(sum(lynx_queue_length{namespace=\"serving\",app_kubernetes_io_instance=\"lynx-router\"}) \
         or vector(0)) + (sum(lynx_router_pending_requests{namespace=\"serving\",\
         app_kubernetes_io_instance=\"lynx-router\"}) or vector(0))"
    );
    // One held request (a load of 1) is above the activation threshold.
    let activation: f64 = trigger["activationThreshold"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .expect("activationThreshold");
    assert!(activation < 1.0);
    // Without a router: the workers' query alone, no activation threshold (as before).
    let full = desired(&sample("full"), &ALL)
        .expect("valid")
        .scaled_object
        .expect("keda");
    let trigger = &full["spec"]["triggers"][0]["metadata"];
    assert!(trigger.get("activationThreshold").is_none());
    assert!(!trigger["query"]
        .as_str()
        .unwrap_or_default()
        .contains("lynx_router"));
    // A custom query is summed before the router's held requests are added.
    let mut ld = sample("router");
    if let Some(autoscaling) = ld.spec.autoscaling.as_mut() {
        autoscaling.metric = crate::crd::AutoscalingMetric::Custom;
        autoscaling.query = Some("rate(lynx_requests_total[1m])".to_owned());
    }
    let custom = desired(&ld, &ALL)
        .expect("valid")
        .scaled_object
        .expect("keda");
    let query = custom["spec"]["triggers"][0]["metadata"]["query"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        query.starts_with("(sum(rate(lynx_requests_total[1m])) or vector(0)) + (sum(lynx_router_pending_requests{"),
        "{query}"
    );
}

#[test]
fn the_inference_pool_needs_the_spec_section_and_the_served_api() {
    let ld = sample("router");
    let pool = desired(&ld, &ALL)
        .expect("valid")
        .inference_pool
        .expect("pool");
    assert_eq!(pool["apiVersion"], "inference.networking.k8s.io/v1");
    assert_eq!(pool["kind"], "InferencePool");
    assert_eq!(pool["metadata"]["name"], "lynx-router");
    let spec = &pool["spec"];
    assert_eq!(
        spec["selector"]["matchLabels"],
        serde_json::to_value(selector_labels("lynx-router")).expect("json")
    );
    assert_eq!(spec["targetPorts"], serde_json::json!([{"number": 9090}]));
    let picker = &spec["endpointPickerRef"];
    assert_eq!(picker["name"], "lynx-router-epp");
    assert_eq!(picker["kind"], "Service");
    assert_eq!(picker["portNumber"], 9002);
    assert_eq!(picker["failureMode"], "FailClose");
    for (key, metric) in INFERENCE_POOL_ANNOTATIONS {
        assert_eq!(pool["metadata"]["annotations"][key], metric);
    }
    assert_eq!(
        pool["metadata"]["annotations"]["serving.lynx.dev/queue-metric"],
        "lynx_queue_length"
    );
    assert_eq!(
        desired(&ld, &ALL).expect("valid").inference_pool_state,
        InferencePoolState::Applied
    );
    // Asked for, not served: no pool, and the state says why.
    let unserved = ClusterCapabilities {
        inference_pool: false,
        ..ALL
    };
    let desired_unserved = desired(&ld, &unserved).expect("valid");
    assert!(desired_unserved.inference_pool.is_none());
    assert_eq!(
        desired_unserved.inference_pool_state,
        InferencePoolState::NotServed
    );
    // Served, not asked for: no pool.
    let full = desired(&sample("full"), &ALL).expect("valid");
    assert!(full.inference_pool.is_none());
    assert_eq!(full.inference_pool_state, InferencePoolState::NotRequested);
    // FailOpen reaches the pool.
    let mut ld = sample("router");
    if let Some(pool) = ld.spec.inference_pool.as_mut() {
        pool.failure_mode = EndpointPickerFailureMode::FailOpen;
    }
    let pool = desired(&ld, &ALL)
        .expect("valid")
        .inference_pool
        .expect("pool");
    assert_eq!(pool["spec"]["endpointPickerRef"]["failureMode"], "FailOpen");
}

#[test]
fn a_router_with_tls_is_refused_unless_disabled() {
    let mut ld = sample("full");
    ld.spec.router = Some(RouterSpec::default());
    assert_eq!(ld.validate(), Err(ValidationError::RouterWithTls));
    assert_eq!(
        desired(&ld, &NONE),
        Err(DesiredError::Invalid(ValidationError::RouterWithTls))
    );
    let message = ValidationError::RouterWithTls.to_string();
    assert!(
        message.contains("spec.router") && message.contains("spec.tls"),
        "{message}"
    );
    ld.spec.router = Some(RouterSpec {
        enabled: false,
        ..RouterSpec::default()
    });
    assert_eq!(ld.validate(), Ok(()));
}
