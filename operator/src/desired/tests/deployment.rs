//! The worker Deployment: pod security, probes and drain, the worker's arguments, resources and
//! placement, the model volume, the cache volume, and the rollout.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::super::*;
use super::{desired_ok, pod, sample, worker, ALL, NONE};

#[test]
fn pod_and_containers_meet_the_restricted_pod_security_standard() {
    let desired = desired(&sample("full"), &ALL).expect("valid");
    let pod = pod(&desired);
    let pod_sc = pod.security_context.as_ref().expect("pod security context");
    assert_eq!(pod_sc.run_as_non_root, Some(true));
    assert_eq!(
        pod_sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
        Some("RuntimeDefault")
    );
    let init = pod.init_containers.as_ref().expect("fetch init container");
    for container in pod.containers.iter().chain(init) {
        let sc = container
            .security_context
            .as_ref()
            .expect("container security context");
        assert_eq!(sc.run_as_non_root, Some(true), "{}", container.name);
        assert_eq!(
            sc.read_only_root_filesystem,
            Some(true),
            "{}",
            container.name
        );
        assert_eq!(
            sc.allow_privilege_escalation,
            Some(false),
            "{}",
            container.name
        );
        let drop = sc.capabilities.as_ref().and_then(|c| c.drop.clone());
        assert_eq!(drop, Some(vec!["ALL".to_owned()]), "{}", container.name);
        assert_eq!(
            sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
            Some("RuntimeDefault")
        );
    }
}

#[test]
fn probes_drain_and_scrape_annotations_follow_the_worker_contract() {
    let desired = desired(&sample("full"), &ALL).expect("valid");
    let worker = worker(&desired);
    let path = |probe: &Option<k8s_openapi::api::core::v1::Probe>| {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.clone())
            .expect("http probe");
        (get.path.unwrap_or_default(), get.port)
    };
    let http = IntOrString::String("http".to_owned());
    assert_eq!(
        path(&worker.startup_probe),
        ("/readyz".to_owned(), http.clone())
    );
    assert_eq!(
        path(&worker.readiness_probe),
        ("/readyz".to_owned(), http.clone())
    );
    assert_eq!(path(&worker.liveness_probe), ("/healthz".to_owned(), http));
    let ports: Vec<(Option<String>, i32)> = worker
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.clone(), p.container_port))
        .collect();
    assert_eq!(
        ports,
        [
            (Some("grpc".to_owned()), GRPC_PORT),
            (Some("http".to_owned()), HTTP_PORT)
        ]
    );
    // full.yaml: drainTimeoutSeconds 60, + preStop sleep 5 + margin 10.
    assert_eq!(pod(&desired).termination_grace_period_seconds, Some(75));
    let pre_stop = worker
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.exec.clone());
    assert_eq!(
        pre_stop.and_then(|e| e.command),
        Some(vec!["sleep".to_owned(), "5".to_owned()])
    );
    let annotations = desired
        .deployment
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.clone());
    let annotations = annotations.expect("scrape annotations");
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "9090");
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
}

#[test]
fn worker_args_carry_every_batching_and_limit_flag() {
    let desired = desired(&sample("full"), &ALL).expect("valid");
    let args = worker(&desired).args.clone().expect("args").join(" ");
    for expected in [
        "serve --model /models/lynx-7b --layout converted --dtype f16 --device cuda",
        "--grpc-addr 0.0.0.0:50051 --http-addr 0.0.0.0:9090",
        "--max-batch-size 32",
        "--max-batch-delay-ms 10",
        "--max-batch-total-tokens 65536",
        "--max-queue 256",
        "--max-image-bytes 10485760",
        "--max-image-pixels 16777216",
        "--max-images-per-request 8",
        "--max-video-frames 64",
        "--max-prompt-tokens 4096",
        "--max-new-tokens 1024",
        "--drain-timeout-seconds 60",
        "--tls-cert /etc/lynx/tls/tls.crt --tls-key /etc/lynx/tls/tls.key",
        "--auth-tokens-file /etc/lynx/auth/tokens",
    ] {
        assert!(args.contains(expected), "missing `{expected}` in `{args}`");
    }
    assert!(
        args.ends_with("--log-format json"),
        "extra args come last: {args}"
    );
    let minimal = desired_args(&sample("minimal"));
    let defaults = "--max-connection-age-seconds 300 --max-connection-age-grace-seconds 600";
    assert!(minimal.contains(defaults), "{minimal}");
    assert!(
        !minimal.replace(defaults, "").contains("--max-"),
        "unset limits keep the worker defaults: {minimal}"
    );
}

#[test]
fn the_maximum_connection_age_reaches_the_worker_unless_it_is_off() {
    let mut ld = sample("minimal");
    ld.spec.service.max_connection_age_seconds = 120;
    ld.spec.service.max_connection_age_grace_seconds = 1800;
    let args = desired_args(&ld);
    assert!(
        args.contains("--max-connection-age-seconds 120 --max-connection-age-grace-seconds 1800"),
        "{args}"
    );
    ld.spec.service.max_connection_age_seconds = 0;
    let args = desired_args(&ld);
    assert!(!args.contains("--max-connection-age"), "0 is off: {args}");
}

fn desired_args(ld: &LynxDeployment) -> String {
    let desired = desired(ld, &NONE).expect("valid");
    worker(&desired).args.clone().expect("args").join(" ")
}

#[test]
fn workers_with_gpus_compute_on_cuda_and_the_others_on_the_cpu() {
    let mut ld = sample("minimal");
    assert!(
        desired_args(&ld).contains("--device cuda"),
        "{}",
        desired_args(&ld)
    );
    ld.spec.worker.gpus = 0;
    assert!(
        desired_args(&ld).contains("--device cpu"),
        "{}",
        desired_args(&ld)
    );
}

#[test]
fn resources_gpus_and_placement_reach_the_pod() {
    let desired = desired(&sample("full"), &ALL).expect("valid");
    let resources = worker(&desired).resources.clone().expect("resources");
    let limits = resources.limits.expect("limits");
    assert_eq!(limits["nvidia.com/gpu"].0, "1");
    assert_eq!(limits["memory"].0, "64Gi");
    assert_eq!(resources.requests.expect("requests")["cpu"].0, "4");
    let pod = pod(&desired);
    assert!(pod
        .node_selector
        .as_ref()
        .is_some_and(|n| n.contains_key("nvidia.com/gpu.product")));
    assert_eq!(pod.tolerations.as_ref().map(Vec::len), Some(1));
    assert!(pod.affinity.is_some());
    assert_eq!(
        pod.image_pull_secrets.as_ref().map(|s| s[0].name.as_str()),
        Some("regcred")
    );
    assert_eq!(
        worker(&desired).image_pull_policy.as_deref(),
        Some("IfNotPresent")
    );
    let dshm = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "dshm")
        .expect("/dev/shm volume");
    assert_eq!(
        dshm.empty_dir.as_ref().and_then(|e| e.medium.as_deref()),
        Some("Memory")
    );
    let strategy = desired
        .deployment
        .spec
        .strategy
        .clone()
        .and_then(|s| s.rolling_update)
        .expect("rolling");
    assert_eq!(strategy.max_surge, Some(IntOrString::Int(1)));
    assert_eq!(strategy.max_unavailable, Some(IntOrString::Int(0)));
}

#[test]
fn model_sources_become_the_model_volume() {
    let mut ld = sample("minimal");
    let volume = |ld: &LynxDeployment| {
        let desired = desired(ld, &NONE).expect("valid");
        pod(&desired)
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "model")
            .cloned()
            .expect("model volume")
    };
    let pvc = volume(&ld).persistent_volume_claim.expect("pvc");
    assert_eq!(
        (pvc.claim_name.as_str(), pvc.read_only),
        ("lynx-models", Some(true))
    );
    ld.spec.model.source = crate::crd::ModelSource {
        host_path: Some(crate::crd::HostPathSource {
            path: "/data/models".to_owned(),
        }),
        ..Default::default()
    };
    assert_eq!(
        volume(&ld).host_path.map(|h| h.path),
        Some("/data/models".to_owned())
    );
    let full = sample("full");
    assert_eq!(
        volume(&full)
            .empty_dir
            .and_then(|e| e.size_limit)
            .map(|q| q.0),
        Some("40Gi".to_owned())
    );
    let mut cached = full.clone();
    if let Some(uri) = cached.spec.model.source.uri.as_mut() {
        uri.claim_name = Some("lynx-cache".to_owned());
    }
    assert_eq!(
        volume(&cached)
            .persistent_volume_claim
            .map(|p| p.claim_name),
        Some("lynx-cache".to_owned())
    );
    let desired = desired(&full, &NONE).expect("valid");
    let init = &pod(&desired).init_containers.as_ref().expect("init")[0];
    assert_eq!(init.name, FETCH_CONTAINER);
    assert_eq!(
        init.command.as_deref(),
        Some(&["lynx-worker".to_owned()][..])
    );
    assert!(pod(&desired_ok(&sample("minimal")))
        .init_containers
        .is_none());
}

/// The root file system is read-only: the worker's cache (compiled kernels, generated models)
/// goes to a writable emptyDir named by `LYNX_CACHE_DIR`, unless the user sets it.
#[test]
fn the_worker_cache_is_a_writable_volume_named_by_lynx_cache_dir() {
    let mut ld = sample("minimal");
    let desired_now = desired(&ld, &NONE).expect("valid");
    let container = worker(&desired_now);
    let env = container.env.clone().unwrap_or_default();
    let cache = env
        .iter()
        .find(|e| e.name == "LYNX_CACHE_DIR")
        .and_then(|e| e.value.clone());
    assert_eq!(cache.as_deref(), Some(deployment::CACHE_MOUNT));
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == deployment::CACHE_MOUNT)
        .expect("a mount at the cache path");
    assert_ne!(mount.read_only, Some(true));
    let volume = pod(&desired_now)
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .expect("the cache volume");
    assert!(volume.empty_dir.is_some());

    ld.spec.worker.env.push(k8s_openapi::api::core::v1::EnvVar {
        name: "LYNX_CACHE_DIR".to_owned(),
        value: Some("/models/.cache".to_owned()),
        value_from: None,
    });
    let desired_user = desired(&ld, &NONE).expect("valid");
    let env = worker(&desired_user).env.clone().unwrap_or_default();
    let caches: Vec<_> = env.iter().filter(|e| e.name == "LYNX_CACHE_DIR").collect();
    assert_eq!(
        caches.len(),
        1,
        "no duplicate keys for server-side apply: {env:?}"
    );
    assert_eq!(caches[0].value.as_deref(), Some("/models/.cache"));
}

/// A slow model load is not a stalled rollout: the Deployment's progress deadline covers the
/// startup probe's whole budget.
#[test]
fn the_rollout_deadline_covers_the_startup_probe() {
    let desired = desired(&sample("minimal"), &NONE).expect("valid");
    let probe = worker(&desired)
        .startup_probe
        .clone()
        .expect("startup probe");
    let budget = probe.initial_delay_seconds.unwrap_or(0)
        + probe.period_seconds.unwrap_or(10) * probe.failure_threshold.unwrap_or(3);
    let deadline = desired
        .deployment
        .spec
        .progress_deadline_seconds
        .expect("progressDeadlineSeconds");
    assert!(
        deadline > budget,
        "deadline {deadline} s, startup budget {budget} s"
    );
}

/// On a full GPU pool a surge pod never schedules: GPU workers roll one at a time without a
/// surge unless the spec sets the bounds; CPU workers keep Kubernetes' defaults.
#[test]
fn gpu_workers_roll_without_a_surge_unless_the_spec_says_otherwise() {
    let rolling = |ld: &LynxDeployment| {
        desired(ld, &NONE)
            .expect("valid")
            .deployment
            .spec
            .strategy
            .and_then(|s| s.rolling_update)
    };
    let mut ld = sample("minimal");
    let gpu = rolling(&ld).expect("explicit bounds for GPU workers");
    assert_eq!(gpu.max_surge, Some(IntOrString::Int(0)));
    assert_eq!(gpu.max_unavailable, Some(IntOrString::Int(1)));
    ld.spec.rollout.max_surge = Some(IntOrString::String("50%".to_owned()));
    let user = rolling(&ld).expect("the user's bounds");
    assert_eq!(user.max_surge, Some(IntOrString::String("50%".to_owned())));
    assert_eq!(user.max_unavailable, None);
    ld.spec.rollout.max_surge = None;
    ld.spec.worker.gpus = 0;
    assert_eq!(rolling(&ld), None, "CPU workers: Kubernetes' defaults");
}
