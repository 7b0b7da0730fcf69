//! The worker Deployment: `lynx-worker serve` with GPUs, the model volume, probes, graceful drain
//! and a restricted-PSS security context.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, HTTPGetAction,
    LocalObjectReference, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::api::core::v1::{ExecAction, Lifecycle, LifecycleHandler};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use lynx_serve_flags::{Device, Dtype, Flag, Layout, Listeners, ModelArgs, ServeFlags};

use super::{model, Context};
use crate::crd::{CpuMemory, LynxDeploymentSpec, ModelDtype, ModelLayout, PullPolicy, WorkerSpec};

/// The worker's gRPC port inside the pod.
pub const GRPC_PORT: i32 = GRPC_LISTEN_PORT as i32;
/// The worker's HTTP port (`/healthz`, `/readyz`, `/metrics`) inside the pod.
pub const HTTP_PORT: i32 = HTTP_LISTEN_PORT as i32;
const GRPC_LISTEN_PORT: u16 = 50051;
const HTTP_LISTEN_PORT: u16 = 9090;
/// Where the model source is mounted in the worker.
pub const MODEL_MOUNT: &str = "/models";
/// Seconds `preStop` sleeps so endpoints drop the pod before the worker starts draining.
const PRESTOP_SLEEP_SECONDS: i64 = 5;
/// Grace beyond `preStop` + drain before the kubelet kills the worker.
const GRACE_MARGIN_SECONDS: i64 = 10;
const TLS_MOUNT: &str = "/etc/lynx/tls";
pub(super) const AUTH_MOUNT: &str = "/etc/lynx/auth";
/// Non-root uid/gid the worker and the fetcher run as.
pub(super) const RUN_AS: i64 = 65532;
/// The worker's cache (compiled kernels, generated models): an emptyDir, as the root file
/// system is read-only; `LYNX_CACHE_DIR` points there.
pub const CACHE_MOUNT: &str = "/var/cache/lynx";
/// Startup probe: period and failures, 30 minutes for the model to load.
const STARTUP_PERIOD_SECONDS: i32 = 10;
const STARTUP_FAILURES: i32 = 180;
/// Beyond the startup probe's budget before a rollout counts as stalled (`Progressing=False`).
const PROGRESS_MARGIN_SECONDS: i32 = 120;

/// Builds the worker Deployment.
///
/// # Guarantees
/// `spec.replicas` equals the LynxDeployment's `spec.replicas` (the autoscaler scales the
/// LynxDeployment, never this Deployment); `terminationGracePeriodSeconds` covers the preStop
/// sleep plus `drainTimeoutSeconds` plus a margin.
pub(super) fn deployment(ctx: &Context<'_>) -> Deployment {
    let spec = &ctx.ld.spec;
    let mut annotations = BTreeMap::new();
    if spec.monitoring.enabled {
        annotations.insert("prometheus.io/scrape".to_owned(), "true".to_owned());
        annotations.insert("prometheus.io/port".to_owned(), HTTP_PORT.to_string());
        annotations.insert("prometheus.io/path".to_owned(), "/metrics".to_owned());
    }
    let pod = PodSpec {
        containers: vec![worker_container(spec)],
        init_containers: model::init_containers(spec),
        volumes: Some(volumes(spec)),
        security_context: Some(pod_security()),
        termination_grace_period_seconds: Some(
            PRESTOP_SLEEP_SECONDS + spec.drain_timeout_seconds + GRACE_MARGIN_SECONDS,
        ),
        automount_service_account_token: Some(false),
        image_pull_secrets: image_pull_secrets(&spec.worker),
        node_selector: non_empty_map(spec.worker.node_selector.clone()),
        tolerations: non_empty(spec.worker.tolerations.clone()),
        affinity: spec.worker.affinity.clone(),
        ..PodSpec::default()
    };
    Deployment {
        metadata: ctx.metadata(),
        spec: DeploymentSpec {
            replicas: Some(spec.replicas),
            selector: LabelSelector {
                match_labels: Some(ctx.selector()),
                ..LabelSelector::default()
            },
            strategy: Some(strategy(spec)),
            // A slow model load is not a stalled rollout: the deadline covers the startup probe.
            progress_deadline_seconds: Some(
                STARTUP_PERIOD_SECONDS * STARTUP_FAILURES + PROGRESS_MARGIN_SECONDS,
            ),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(ctx.labels()),
                    annotations: non_empty_map(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        },
        status: None,
    }
}

/// The rolling update: the user's bounds; without them, GPU workers replace one pod at a time
/// without a surge (`maxSurge: 0, maxUnavailable: 1`: a surge pod would wait for a free GPU
/// on a full pool and stall the rollout), CPU workers Kubernetes' defaults.
fn strategy(spec: &LynxDeploymentSpec) -> DeploymentStrategy {
    let rollout = &spec.rollout;
    let rolling_update = if rollout.max_surge.is_some() || rollout.max_unavailable.is_some() {
        Some(RollingUpdateDeployment {
            max_surge: rollout.max_surge.clone(),
            max_unavailable: rollout.max_unavailable.clone(),
        })
    } else if spec.worker.gpus > 0 {
        Some(RollingUpdateDeployment {
            max_surge: Some(IntOrString::Int(0)),
            max_unavailable: Some(IntOrString::Int(1)),
        })
    } else {
        None
    };
    DeploymentStrategy {
        type_: Some("RollingUpdate".to_owned()),
        rolling_update,
    }
}

/// `lynx-worker serve` arguments: model, compute device (`cuda` when the pod gets GPUs, else
/// `cpu`), listen addresses, then each batching/limit flag that is set, the drain timeout, the
/// maximum connection age and its grace (unless the age is 0), TLS/auth files, then the user's
/// extra args. What the spec sets is passed even at the worker's default.
pub(super) fn worker_args(spec: &LynxDeploymentSpec) -> Vec<String> {
    let mut keep = vec![
        Flag::Model,
        Flag::Layout,
        Flag::Dtype,
        Flag::Device,
        Flag::GrpcAddr,
        Flag::HttpAddr,
        Flag::DrainTimeoutSeconds,
    ];
    let mut flags = ServeFlags {
        model: ModelArgs {
            model: Some(model::worker_model_dir(&spec.model).into()),
            ..ModelArgs::default()
        },
        layout: match model::served_layout(&spec.model) {
            ModelLayout::Release => Layout::Release,
            ModelLayout::Converted => Layout::Converted,
        },
        dtype: match spec.model.dtype {
            ModelDtype::F32 => Dtype::F32,
            ModelDtype::F16 => Dtype::F16,
            ModelDtype::Bf16 => Dtype::Bf16,
        },
        device: if spec.worker.gpus > 0 {
            Device::Cuda(0)
        } else {
            Device::Cpu
        },
        listeners: Listeners {
            grpc_addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, GRPC_LISTEN_PORT)),
            http_addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, HTTP_LISTEN_PORT)),
        },
        ..ServeFlags::default()
    };
    let (b, l) = (&spec.batching, &spec.limits);
    let (fb, fl) = (&mut flags.batching, &mut flags.limits);
    let knobs: [(Flag, &mut u64, Option<i64>); 10] = [
        (Flag::MaxBatchSize, &mut fb.max_batch_size, b.max_batch_size),
        (
            Flag::MaxBatchDelayMs,
            &mut fb.max_batch_delay_ms,
            b.max_batch_delay_ms,
        ),
        (
            Flag::MaxBatchTotalTokens,
            &mut fb.max_batch_total_tokens,
            b.max_batch_total_tokens,
        ),
        (Flag::MaxQueue, &mut fb.max_queue, b.max_queue),
        (
            Flag::MaxImageBytes,
            &mut fl.max_image_bytes,
            l.max_image_bytes,
        ),
        (
            Flag::MaxImagePixels,
            &mut fl.max_image_pixels,
            l.max_image_pixels,
        ),
        (
            Flag::MaxImagesPerRequest,
            &mut fl.max_images_per_request,
            l.max_images_per_request,
        ),
        (
            Flag::MaxVideoFrames,
            &mut fl.max_video_frames,
            l.max_video_frames,
        ),
        (
            Flag::MaxPromptTokens,
            &mut fl.max_prompt_tokens,
            l.max_prompt_tokens,
        ),
        (Flag::MaxNewTokens, &mut fl.max_new_tokens, l.max_new_tokens),
    ];
    // Each knob the spec sets: its value, passed even at the worker's default.
    for (flag, field, value) in knobs {
        if let Some(value) = value {
            *field = count(value);
            keep.push(flag);
        }
    }
    let lifecycle = &mut flags.lifecycle;
    lifecycle.drain_timeout_seconds = count(spec.drain_timeout_seconds);
    // A maximum connection age of 0 is off: neither flag (the worker's default is off).
    let age = &spec.service;
    if age.max_connection_age_seconds > 0 {
        lifecycle.max_connection_age_seconds = count(age.max_connection_age_seconds);
        lifecycle.max_connection_age_grace_seconds = count(age.max_connection_age_grace_seconds);
        keep.push(Flag::MaxConnectionAgeGraceSeconds);
    }
    if spec.tls.is_some() {
        flags.security.tls_cert = Some(format!("{TLS_MOUNT}/tls.crt").into());
        flags.security.tls_key = Some(format!("{TLS_MOUNT}/tls.key").into());
    }
    if let Some(auth) = &spec.auth {
        flags.security.auth_tokens_file = Some(format!("{AUTH_MOUNT}/{}", auth.key).into());
    }
    let mut args = vec!["serve".to_owned()];
    args.extend(flags.to_args_keeping(&keep));
    args.extend(spec.worker.args.iter().cloned());
    args
}

/// A count or duration of the spec as the worker's flag value; the CRD's schema keeps them
/// non-negative, so a negative one (refused by validation) becomes 0.
fn count(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn worker_container(spec: &LynxDeploymentSpec) -> Container {
    let worker = &spec.worker;
    let mut limits = quantities(worker.resources.limits.as_ref());
    let mut requests = quantities(worker.resources.requests.as_ref());
    if worker.gpus > 0 {
        let gpus = Quantity(worker.gpus.to_string());
        limits.insert(worker.gpu_resource_name.clone(), gpus.clone());
        requests.insert(worker.gpu_resource_name.clone(), gpus);
    }
    let mut mounts = vec![
        mount("model", MODEL_MOUNT, true),
        mount("dshm", "/dev/shm", false),
        mount("tmp", "/tmp", false),
        mount("cache", CACHE_MOUNT, false),
    ];
    // The cache volume, unless the user points the cache elsewhere (env is a map keyed by name
    // for server-side apply: no duplicates).
    let mut env = Vec::new();
    if !worker.env.iter().any(|e| e.name == "LYNX_CACHE_DIR") {
        env.push(EnvVar {
            name: "LYNX_CACHE_DIR".to_owned(),
            value: Some(CACHE_MOUNT.to_owned()),
            value_from: None,
        });
    }
    env.extend(worker.env.iter().cloned());
    if spec.tls.is_some() {
        mounts.push(mount("tls", TLS_MOUNT, true));
    }
    if spec.auth.is_some() {
        mounts.push(mount("auth", AUTH_MOUNT, true));
    }
    Container {
        name: "worker".to_owned(),
        image: Some(worker.image.clone()),
        image_pull_policy: pull_policy(worker),
        command: Some(vec!["lynx-worker".to_owned()]),
        args: Some(worker_args(spec)),
        env: Some(env),
        ports: Some(vec![port("grpc", GRPC_PORT), port("http", HTTP_PORT)]),
        resources: Some(ResourceRequirements {
            limits: non_empty_map(limits),
            requests: non_empty_map(requests),
            ..ResourceRequirements::default()
        }),
        volume_mounts: Some(mounts),
        // Model loading can take minutes: the startup probe allows 30 min before liveness counts.
        startup_probe: Some(http_probe(
            "/readyz",
            STARTUP_PERIOD_SECONDS,
            STARTUP_FAILURES,
        )),
        readiness_probe: Some(http_probe("/readyz", 5, 3)),
        liveness_probe: Some(http_probe("/healthz", 10, 3)),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(vec!["sleep".to_owned(), PRESTOP_SLEEP_SECONDS.to_string()]),
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        security_context: Some(restricted()),
        ..Container::default()
    }
}

fn volumes(spec: &LynxDeploymentSpec) -> Vec<Volume> {
    let mut volumes = vec![
        model::model_volume(&spec.model),
        Volume {
            name: "dshm".to_owned(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".to_owned()),
                size_limit: spec.worker.shm_size.clone(),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "tmp".to_owned(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
        Volume {
            name: "cache".to_owned(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    ];
    if let Some(tls) = &spec.tls {
        volumes.push(secret_volume("tls", &tls.secret_name));
    }
    if let Some(auth) = &spec.auth {
        volumes.push(secret_volume("auth", &auth.secret_name));
    }
    volumes
}

/// The pull policy of the worker image (also the fetcher's).
pub(super) fn pull_policy(worker: &WorkerSpec) -> Option<String> {
    worker.image_pull_policy.map(|policy| {
        match policy {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
        .to_owned()
    })
}

pub(super) fn secret_volume(name: &str, secret: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_owned()),
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// The container security context of the `restricted` Pod Security Standard.
pub(super) fn restricted() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        seccomp_profile: Some(runtime_default()),
        ..SecurityContext::default()
    }
}

/// The worker's `imagePullSecrets`, for every pod the operator creates (`None` when empty).
pub(super) fn image_pull_secrets(worker: &WorkerSpec) -> Option<Vec<LocalObjectReference>> {
    non_empty(
        worker
            .image_pull_secrets
            .iter()
            .map(|name| LocalObjectReference { name: name.clone() })
            .collect(),
    )
}

/// The pod security context of every pod the operator creates: non-root as `RUN_AS`, the
/// runtime's default seccomp profile.
pub(super) fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS),
        run_as_group: Some(RUN_AS),
        fs_group: Some(RUN_AS),
        seccomp_profile: Some(runtime_default()),
        ..PodSecurityContext::default()
    }
}

pub(super) fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".to_owned(),
        localhost_profile: None,
    }
}

pub(super) fn http_probe(path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("http".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        failure_threshold: Some(failure_threshold),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

pub(super) fn port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: port,
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    }
}

pub(super) fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

pub(super) fn quantities(amounts: Option<&CpuMemory>) -> BTreeMap<String, Quantity> {
    let mut map = BTreeMap::new();
    if let Some(amounts) = amounts {
        if let Some(cpu) = &amounts.cpu {
            map.insert("cpu".to_owned(), cpu.clone());
        }
        if let Some(memory) = &amounts.memory {
            map.insert("memory".to_owned(), memory.clone());
        }
    }
    map
}

pub(super) fn non_empty<T>(items: Vec<T>) -> Option<Vec<T>> {
    (!items.is_empty()).then_some(items)
}

pub(super) fn non_empty_map<K, V>(map: BTreeMap<K, V>) -> Option<BTreeMap<K, V>> {
    (!map.is_empty()).then_some(map)
}
