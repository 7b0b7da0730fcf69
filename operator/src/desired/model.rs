//! Delivery of a `uri` model: the `lynx-worker fetch` arguments, the cache key, the init
//! containers of the worker pods and the Job that fills a shared cache.
//!
//! Without `cache`, the init container `fetch-model` of every worker pod fetches into the pod's
//! model volume. With `cache`, the Job `<name>-model-<hash>` fetches once into
//! `<claim>/<key>`; the worker pods mount the claim read-only and wait (init container
//! `wait-model`, `lynx-worker fetch --wait`) until the fetch marker there matches the source.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvFromSource, EnvVar, HostPathVolumeSource,
    PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec, SecretEnvSource, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::deployment::{
    image_pull_secrets, mount, pod_security, pull_policy, restricted, MODEL_MOUNT,
};
use super::{labels, Context};
use crate::crd::{LynxDeploymentSpec, ModelLayout, ModelSpec, UriSource};

/// The init container that fetches the model into the pod's model volume (no cache).
pub const FETCH_CONTAINER: &str = "fetch-model";
/// The init container that waits for the Job to fill the cache.
pub const WAIT_CONTAINER: &str = "wait-model";
/// The container of the cache Job's pod.
pub const JOB_CONTAINER: &str = "fetch";
/// Where the cache Job mounts the cache claim.
pub const CACHE_ROOT: &str = "/cache";
/// Where the fetcher writes its report (`terminationMessagePath`'s default).
pub const TERMINATION_LOG: &str = "/dev/termination-log";
/// Retries of the cache Job's pod before the Job fails.
pub const JOB_BACKOFF_LIMIT: i32 = 3;
/// Label of the cache Job and its pods: the cache key (the directory under the claim).
pub const MODEL_KEY_LABEL: &str = "serving.lynx.dev/model-key";
/// The environment variable that carries the uri (`$(LYNX_MODEL_URI)` in the arguments).
const URI_ENV: &str = "LYNX_MODEL_URI";
/// Characters of a Job name at most: the Job controller copies it into a label value.
const JOB_NAME_MAX: usize = 63;

/// How the model of a spec reaches the worker pods.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Delivery<'a> {
    /// A `pvc` or `hostPath` source: mounted as it is.
    Mounted,
    /// A `uri` source fetched by each worker pod's init container.
    InitContainer(&'a UriSource),
    /// A `uri` source fetched by a Job into the shared cache claim, under `key`.
    Cache {
        /// The source.
        source: &'a UriSource,
        /// The cache claim.
        claim: &'a str,
        /// The directory under the claim, [`cache_key`].
        key: CacheKey,
    },
}

/// Eight hex digits naming one fetched model in a cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheKey(u32);

impl std::fmt::Display for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// How `model` reaches the worker pods.
pub fn delivery(model: &ModelSpec) -> Delivery<'_> {
    match &model.source.uri {
        None => Delivery::Mounted,
        Some(source) => match &source.cache {
            None => Delivery::InitContainer(source),
            Some(cache) => Delivery::Cache {
                source,
                claim: &cache.claim_name,
                key: cache_key(source, &model.path),
            },
        },
    }
}

/// The cache key of a source: a stable hash (FNV-1a) of what decides the fetched files (uri,
/// endpoint, sha256, convert and, when converting, the model path), so every LynxDeployment
/// with the same source shares one copy and a changed source gets a new one.
pub fn cache_key(source: &UriSource, model_path: &str) -> CacheKey {
    let converted_path = if source.convert { model_path } else { "" };
    let fields = [
        source.uri.as_str(),
        source.endpoint.as_deref().unwrap_or(""),
        source.sha256.as_deref().unwrap_or(""),
        if source.convert { "convert" } else { "" },
        converted_path,
    ];
    CacheKey(fold(fnv1a(fields.join("\n").as_bytes())))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn fold(hash: u64) -> u32 {
    // Truncation intended: the two halves xor-folded.
    ((hash >> 32) ^ (hash & 0xffff_ffff)) as u32
}

/// The layout the workers serve: `converted` when the fetcher converts, else `spec.model.layout`.
pub(super) fn served_layout(model: &ModelSpec) -> ModelLayout {
    match &model.source.uri {
        Some(source) if source.convert => ModelLayout::Converted,
        _ => model.layout,
    }
}

/// The worker's `--model` directory: the fetched directory (`/models`, or `/models/<key>` in the
/// cache), then `spec.model.path` unless the fetcher converted the model into that directory.
pub(super) fn worker_model_dir(model: &ModelSpec) -> String {
    let root = match delivery(model) {
        Delivery::Cache { key, .. } => format!("{MODEL_MOUNT}/{key}"),
        _ => MODEL_MOUNT.to_owned(),
    };
    let converted = model.source.uri.as_ref().is_some_and(|s| s.convert);
    let path = model.path.trim_end_matches('/');
    if path.is_empty() || converted {
        root
    } else {
        format!("{root}/{path}")
    }
}

/// The worker pod's `model` volume: the source's claim or host path, the cache claim read-only,
/// or the init container's claim or emptyDir.
pub(super) fn model_volume(model: &ModelSpec) -> Volume {
    let mut volume = Volume {
        name: "model".to_owned(),
        ..Volume::default()
    };
    let claim = |name: &str, read_only: bool| PersistentVolumeClaimVolumeSource {
        claim_name: name.to_owned(),
        read_only: Some(read_only),
    };
    let source = &model.source;
    if let Some(pvc) = &source.pvc {
        volume.persistent_volume_claim = Some(claim(&pvc.claim_name, pvc.read_only));
    } else if let Some(host) = &source.host_path {
        volume.host_path = Some(HostPathVolumeSource {
            path: host.path.clone(),
            type_: Some("Directory".to_owned()),
        });
    } else if let Some(uri) = &source.uri {
        match (&uri.cache, &uri.claim_name) {
            (Some(cache), _) => {
                volume.persistent_volume_claim = Some(claim(&cache.claim_name, true))
            }
            (None, Some(name)) => volume.persistent_volume_claim = Some(claim(name, false)),
            (None, None) => {
                volume.empty_dir = Some(EmptyDirVolumeSource {
                    size_limit: uri.size_limit.clone(),
                    ..EmptyDirVolumeSource::default()
                });
            }
        }
    }
    volume
}

/// The init containers of a worker pod: `fetch-model`, `wait-model`, or none.
pub(super) fn init_containers(spec: &LynxDeploymentSpec) -> Option<Vec<Container>> {
    let container = match delivery(&spec.model) {
        Delivery::Mounted => return None,
        Delivery::InitContainer(source) => {
            let args = fetch_args(source, &spec.model.path, MODEL_MOUNT, false);
            let mut container = fetcher(spec, source, FETCH_CONTAINER, args);
            container.volume_mounts = Some(vec![
                mount("model", MODEL_MOUNT, false),
                mount("tmp", "/tmp", false),
            ]);
            container
        }
        Delivery::Cache { source, key, .. } => {
            let out = format!("{MODEL_MOUNT}/{key}");
            let args = fetch_args(source, &spec.model.path, &out, true);
            let mut container = fetcher(spec, source, WAIT_CONTAINER, args);
            // Waiting reads the marker only: no credentials, the cache read-only.
            container.env_from = None;
            container.volume_mounts = Some(vec![
                mount("model", MODEL_MOUNT, true),
                mount("tmp", "/tmp", false),
            ]);
            container
        }
    };
    Some(vec![container])
}

/// The cache Job of `ctx`'s spec, when its source has a cache: named
/// `<name>-model-<hash of its pod template>` (a changed template is a new Job; an unchanged one
/// is applied again as it is), owned by the LynxDeployment, labelled with the cache key.
pub(super) fn job(ctx: &Context<'_>) -> Option<Job> {
    let spec = &ctx.ld.spec;
    let Delivery::Cache { source, claim, key } = delivery(&spec.model) else {
        return None;
    };
    let out = format!("{CACHE_ROOT}/{key}");
    let mut container = fetcher(
        spec,
        source,
        JOB_CONTAINER,
        fetch_args(source, &spec.model.path, &out, false),
    );
    container.volume_mounts = Some(vec![
        mount("cache", CACHE_ROOT, false),
        mount("tmp", "/tmp", false),
    ]);
    let mut job_labels = BTreeMap::from([
        (labels::NAME.to_owned(), labels::MODEL_FETCH.to_owned()),
        (labels::INSTANCE.to_owned(), ctx.name.clone()),
        (MODEL_KEY_LABEL.to_owned(), key.to_string()),
    ]);
    let template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(job_labels.clone()),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            restart_policy: Some("Never".to_owned()),
            volumes: Some(vec![
                Volume {
                    name: "cache".to_owned(),
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name: claim.to_owned(),
                        read_only: Some(false),
                    }),
                    ..Volume::default()
                },
                Volume {
                    name: "tmp".to_owned(),
                    empty_dir: Some(EmptyDirVolumeSource::default()),
                    ..Volume::default()
                },
            ]),
            security_context: Some(pod_security()),
            automount_service_account_token: Some(false),
            image_pull_secrets: image_pull_secrets(&spec.worker),
            ..PodSpec::default()
        }),
    };
    let template_json = serde_json::to_vec(&template).unwrap_or_default();
    let name = job_name(&ctx.name, CacheKey(fold(fnv1a(&template_json))));
    job_labels.insert(labels::MANAGED_BY.to_owned(), labels::OPERATOR.to_owned());
    Some(Job {
        metadata: ctx.metadata_as(name, job_labels),
        spec: Some(JobSpec {
            backoff_limit: Some(JOB_BACKOFF_LIMIT),
            template,
            ..JobSpec::default()
        }),
        status: None,
    })
}

/// `<name>-model-<hash>`, the name shortened so the whole fits a label value (63 characters).
pub fn job_name(name: &str, hash: CacheKey) -> String {
    let suffix = format!("-model-{hash}");
    let keep = JOB_NAME_MAX - suffix.len();
    let base = if name.len() > keep {
        name[..keep].trim_end_matches('-')
    } else {
        name
    };
    format!("{base}{suffix}")
}

/// The labels that select the cache Jobs of the LynxDeployment `name`.
pub fn job_selector(name: &str) -> String {
    format!(
        "{}={},{}={}",
        labels::NAME,
        labels::MODEL_FETCH,
        labels::INSTANCE,
        name
    )
}

/// A `lynx-worker fetch` container named `name` with `args`: the fetcher image, the uri in
/// [`URI_ENV`], the credentials Secret as its environment, the report in the termination message.
fn fetcher(
    spec: &LynxDeploymentSpec,
    source: &UriSource,
    name: &str,
    args: Vec<String>,
) -> Container {
    Container {
        name: name.to_owned(),
        image: Some(source.fetcher_image(&spec.worker.image).to_owned()),
        image_pull_policy: pull_policy(&spec.worker),
        command: Some(vec!["lynx-worker".to_owned()]),
        args: Some(args),
        env: Some(vec![EnvVar {
            name: URI_ENV.to_owned(),
            value: Some(source.uri.clone()),
            value_from: None,
        }]),
        env_from: source.credentials_secret.as_ref().map(|secret| {
            vec![EnvFromSource {
                secret_ref: Some(SecretEnvSource {
                    name: secret.clone(),
                    optional: Some(false),
                }),
                ..EnvFromSource::default()
            }]
        }),
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        security_context: Some(restricted()),
        ..Container::default()
    }
}

/// `fetch [--wait] --uri $(LYNX_MODEL_URI) --out OUT [--sha256 H] [--endpoint E] [--convert
/// [--model-path P]] --termination-log /dev/termination-log` (`--endpoint` only to download).
fn fetch_args(source: &UriSource, model_path: &str, out: &str, wait: bool) -> Vec<String> {
    let mut args = vec!["fetch".to_owned()];
    if wait {
        args.push("--wait".to_owned());
    }
    args.extend([
        "--uri".to_owned(),
        format!("$({URI_ENV})"),
        "--out".to_owned(),
        out.to_owned(),
    ]);
    if let Some(sha256) = &source.sha256 {
        args.extend(["--sha256".to_owned(), sha256.clone()]);
    }
    if let (Some(endpoint), false) = (&source.endpoint, wait) {
        args.extend(["--endpoint".to_owned(), endpoint.clone()]);
    }
    if source.convert {
        args.push("--convert".to_owned());
        let path = model_path.trim_end_matches('/');
        if !path.is_empty() {
            args.extend(["--model-path".to_owned(), path.to_owned()]);
        }
    }
    args.extend(["--termination-log".to_owned(), TERMINATION_LOG.to_owned()]);
    args
}
