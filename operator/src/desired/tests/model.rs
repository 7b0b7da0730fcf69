//! Delivery of a `uri` model: the fetch init container, the cache Job, the wait init container,
//! the worker's model directory and layout, the cache key.

use k8s_openapi::api::batch::v1::Job;

use super::super::*;
use super::{desired_ok, pod, sample, worker};
use crate::crd::{ModelCacheSpec, ModelLayout, UriSource, LEGACY_FETCHER_IMAGE};

fn with_source(edit: impl FnOnce(&mut UriSource)) -> LynxDeployment {
    let mut ld = sample("s3-cache");
    if let Some(source) = ld.spec.model.source.uri.as_mut() {
        edit(source);
    }
    ld
}

fn job(ld: &LynxDeployment) -> Job {
    desired_ok(ld).model_job.expect("a cache Job")
}

fn job_container(job: &Job) -> k8s_openapi::api::core::v1::Container {
    let spec = job.spec.clone().expect("job spec");
    spec.template.spec.expect("pod").containers[0].clone()
}

fn arg_after<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let at = args.iter().position(|a| a == flag)?;
    args.get(at + 1).map(String::as_str)
}

#[test]
fn without_a_cache_each_worker_pod_fetches_with_lynx_worker() {
    let ld = sample("full");
    let desired = desired_ok(&ld);
    assert!(desired.model_job.is_none());
    let init = &pod(&desired).init_containers.clone().expect("init")[0];
    assert_eq!(init.name, FETCH_CONTAINER);
    assert_eq!(init.image.as_deref(), Some(ld.spec.worker.image.as_str()));
    let args = init.args.clone().expect("args");
    assert_eq!(
        args,
        [
            "fetch",
            "--uri",
            "$(LYNX_MODEL_URI)",
            "--out",
            "/models",
            "--termination-log",
            "/dev/termination-log"
        ]
    );
    let env = init.env.clone().expect("env");
    assert_eq!(env[0].name, "LYNX_MODEL_URI");
    assert_eq!(
        env[0].value.as_deref(),
        Some("https://models.example.com/lynx-7b-converted.tar.gz")
    );
    assert_eq!(
        init.termination_message_policy.as_deref(),
        Some("FallbackToLogsOnError")
    );
    let mounts = init.volume_mounts.clone().expect("mounts");
    assert!(mounts
        .iter()
        .any(|m| m.name == "model" && m.mount_path == "/models" && m.read_only.is_none()));
    // The worker serves the fetched directory at the model path, in the spec's layout.
    let worker_args = worker(&desired).args.clone().expect("args");
    assert_eq!(arg_after(&worker_args, "--model"), Some("/models/lynx-7b"));
    assert_eq!(arg_after(&worker_args, "--layout"), Some("converted"));
}

#[test]
fn with_a_cache_a_job_fetches_and_the_workers_wait_for_it_read_only() {
    let ld = sample("s3-cache");
    let source = ld.spec.model.source.uri.clone().expect("uri");
    let key = cache_key(&source, "lynx-7b").to_string();
    let desired = desired_ok(&ld);
    let job = desired.model_job.clone().expect("a cache Job");
    let name = job.metadata.name.clone().expect("name");
    assert!(name.starts_with("lynx-s3-model-") && name.len() == "lynx-s3-model-".len() + 8);
    let labels = job.metadata.labels.clone().expect("labels");
    assert_eq!(labels[labels::NAME], labels::MODEL_FETCH);
    assert_eq!(labels[labels::MANAGED_BY], labels::OPERATOR);
    assert_eq!(labels[MODEL_KEY_LABEL], key);
    let owner = &job.metadata.owner_references.clone().expect("owner")[0];
    assert_eq!(
        (owner.uid.as_str(), owner.controller),
        ("uid-s3-cache", Some(true))
    );
    let spec = job.spec.clone().expect("spec");
    assert_eq!(spec.backoff_limit, Some(JOB_BACKOFF_LIMIT));
    assert_eq!(spec.ttl_seconds_after_finished, None);
    let pod_spec = spec.template.spec.clone().expect("pod");
    assert_eq!(pod_spec.restart_policy.as_deref(), Some("Never"));
    assert_eq!(
        pod_spec.security_context.and_then(|s| s.run_as_non_root),
        Some(true)
    );
    // The Job's pods are never taken for workers.
    let pod_labels = spec
        .template
        .metadata
        .and_then(|m| m.labels)
        .expect("labels");
    assert_ne!(pod_labels[labels::NAME], labels::WORKER);
    let cache = pod_spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "cache")
        .and_then(|v| v.persistent_volume_claim.clone())
        .expect("the cache claim");
    assert_eq!(
        (cache.claim_name.as_str(), cache.read_only),
        ("lynx-model-cache", Some(false))
    );
    let fetch = job_container(&job);
    assert_eq!(fetch.name, JOB_CONTAINER);
    assert_eq!(
        fetch.args.clone().expect("args"),
        [
            "fetch",
            "--uri",
            "$(LYNX_MODEL_URI)",
            "--out",
            &format!("/cache/{key}"),
            "--sha256",
            source.sha256.as_deref().expect("sha256"),
            "--convert",
            "--model-path",
            "lynx-7b",
            "--termination-log",
            "/dev/termination-log",
        ]
    );
    let env_from = fetch.env_from.clone().expect("credentials");
    let secret = env_from[0].secret_ref.clone().expect("a Secret");
    assert_eq!(secret.name, "lynx-s3-credentials");
    assert_eq!(
        fetch
            .security_context
            .and_then(|s| s.read_only_root_filesystem),
        Some(true)
    );

    // The workers: the cache claim read-only, a wait, the converted model at the key.
    let worker_pod = pod(&desired);
    let model = worker_pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "model")
        .and_then(|v| v.persistent_volume_claim.clone())
        .expect("the cache claim");
    assert_eq!(
        (model.claim_name.as_str(), model.read_only),
        ("lynx-model-cache", Some(true))
    );
    let wait = &worker_pod.init_containers.clone().expect("init")[0];
    assert_eq!(wait.name, WAIT_CONTAINER);
    let args = wait.args.clone().expect("args");
    assert_eq!(&args[..2], ["fetch", "--wait"]);
    assert_eq!(
        arg_after(&args, "--out"),
        Some(format!("/models/{key}").as_str())
    );
    assert!(wait.env_from.is_none(), "waiting needs no credentials");
    assert!(wait
        .volume_mounts
        .iter()
        .flatten()
        .any(|m| m.name == "model" && m.read_only == Some(true)));
    let worker_args = worker(&desired).args.clone().expect("args");
    assert_eq!(
        arg_after(&worker_args, "--model"),
        Some(format!("/models/{key}").as_str())
    );
    assert_eq!(arg_after(&worker_args, "--layout"), Some("converted"));
}

#[test]
fn the_cache_key_follows_the_source_and_the_job_name_its_template() {
    let base = sample("s3-cache");
    let source = base.spec.model.source.uri.clone().expect("uri");
    let key = cache_key(&source, "lynx-7b");
    assert_eq!(key.to_string().len(), 8);
    assert_eq!(key, cache_key(&source.clone(), "lynx-7b"), "stable");
    let changed = |edit: &dyn Fn(&mut UriSource)| {
        let mut other = source.clone();
        edit(&mut other);
        cache_key(&other, "lynx-7b")
    };
    assert_ne!(changed(&|s| s.uri.push_str(".v2")), key);
    assert_ne!(changed(&|s| s.sha256 = None), key);
    assert_ne!(changed(&|s| s.convert = false), key);
    assert_ne!(
        changed(&|s| s.endpoint = Some("http://minio:9000".into())),
        key
    );
    assert_ne!(cache_key(&source, "other"), key, "the converted path");
    // Neither the credentials nor the image move the files, only the Job.
    assert_eq!(
        changed(&|s| s.credentials_secret = Some("other".into())),
        key
    );
    let base_job = job(&base).metadata.name;
    let new_secret = job(&with_source(|s| {
        s.credentials_secret = Some("other".into())
    }));
    assert_ne!(new_secret.metadata.name, base_job);
    assert_eq!(
        new_secret.metadata.labels.expect("labels")[MODEL_KEY_LABEL],
        key.to_string()
    );
    let new_uri = job(&with_source(|s| s.uri = "s3://lynx-models/v2.tar".into()));
    assert_ne!(new_uri.metadata.name, base_job);
}

#[test]
fn job_names_fit_a_label_value() {
    let name = job_name(
        &"a".repeat(63),
        cache_key(&with_source(|_| {}).spec.model.source.uri.expect("uri"), ""),
    );
    assert_eq!(name.len(), 63);
    assert!(name.ends_with(&name[name.len() - 8..]) && name.contains("-model-"));
    let dashed = format!("{}-{}", "a".repeat(47), "b".repeat(15));
    let name = job_name(&dashed, CacheKey::default());
    assert!(!name.contains("--"), "{name}");
}

#[test]
fn the_fetcher_image_defaults_to_the_worker_image_and_the_old_curl_default_is_ignored() {
    let ld = with_source(|s| s.fetcher_image = Some("registry.example/fetch:1".into()));
    assert_eq!(
        job_container(&job(&ld)).image.as_deref(),
        Some("registry.example/fetch:1")
    );
    for image in [None, Some(LEGACY_FETCHER_IMAGE.to_owned())] {
        let ld = with_source(|s| s.fetcher_image = image.clone());
        assert_eq!(
            job_container(&job(&ld)).image.as_deref(),
            Some(ld.spec.worker.image.as_str())
        );
    }
}

#[test]
fn without_convert_the_worker_serves_the_path_inside_the_fetched_directory_as_released() {
    let ld = with_source(|s| s.convert = false);
    let key = cache_key(ld.spec.model.source.uri.as_ref().expect("uri"), "lynx-7b");
    let args = worker(&desired_ok(&ld)).args.clone().expect("args");
    assert_eq!(
        arg_after(&args, "--model"),
        Some(format!("/models/{key}/lynx-7b").as_str())
    );
    assert_eq!(arg_after(&args, "--layout"), Some("release"));
    let fetch = job_container(&job(&ld)).args.expect("args");
    assert!(!fetch
        .iter()
        .any(|a| a == "--convert" || a == "--model-path"));
}

#[test]
fn a_source_without_cache_or_uri_has_no_job() {
    assert!(desired_ok(&sample("minimal")).model_job.is_none());
    let mut ld = sample("s3-cache");
    if let Some(source) = ld.spec.model.source.uri.as_mut() {
        source.cache = None::<ModelCacheSpec>;
    }
    let desired = desired_ok(&ld);
    assert!(desired.model_job.is_none());
    let init = &pod(&desired).init_containers.clone().expect("init")[0];
    assert_eq!(init.name, FETCH_CONTAINER);
    assert!(init.env_from.is_some(), "the fetch needs the credentials");
    assert_eq!(ld.spec.model.layout, ModelLayout::Release);
}
