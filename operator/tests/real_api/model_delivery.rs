//! Model delivery on a real API server: the cache Job the operator creates, run for real.
//!
//! No kubelet runs here, so the test plays one for the Job's pod (created by the real Job
//! controller): it runs the pod's `fetch` container (`lynx-worker fetch` from the target
//! folder) with exactly its arguments and environment (`$(VAR)` expanded, the credentials
//! Secret's keys added), the cache claim mapped to an empty temporary folder and
//! `/dev/termination-log` to a file, against an HTTP server on loopback serving a tar of the
//! repository's tiny model; then it writes the pod's status as a kubelet would: phase
//! Succeeded or Failed, the container terminated with that file as its message.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Container, Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use lynx_operator::crd::{LynxDeployment, LynxDeploymentStatus};
use serde_json::json;

use crate::harness::{eventually, repo_file, yaml_docs, Cluster, Operator, TestNamespace};
use crate::kubelet::workspace_binary;

/// How long the operator (and the Job controller) may take to react.
const REACT: Duration = Duration::from_secs(60);

/// A plain HTTP/1.1 server on loopback: `GET /<name>` answers `files[name]`, anything else 404.
fn serve_files(files: BTreeMap<String, Vec<u8>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            loop {
                let mut header = String::new();
                match reader.read_line(&mut header) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if header == "\r\n" || header == "\n" => break,
                    Ok(_) => {}
                }
            }
            let mut parts = request_line.split_whitespace();
            let method = parts.next().unwrap_or_default().to_owned();
            let path = parts.next().unwrap_or_default().trim_start_matches('/');
            let path = path.split('?').next().unwrap_or_default();
            let (status, body) = match files.get(path) {
                Some(body) => ("200 OK", body.clone()),
                None => ("404 Not Found", b"not found".to_vec()),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            if method != "HEAD" {
                let _ = stream.write_all(&body);
            }
        }
    });
    addr
}

/// A tar of `tests/data/tiny/model` (its root folder `model/`), and its sha256.
fn tiny_model_tar(dir: &Path) -> (Vec<u8>, String) {
    let tar = dir.join("model.tar");
    let made = Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(repo_file("tests/data/tiny"))
        .arg("model")
        .status()
        .expect("run tar");
    assert!(made.success(), "tar");
    let sum = Command::new("sha256sum")
        .arg(&tar)
        .output()
        .expect("run sha256sum");
    let hex = String::from_utf8_lossy(&sum.stdout)
        .split_whitespace()
        .next()
        .expect("a digest")
        .to_owned();
    (std::fs::read(&tar).expect("read the tar"), hex)
}

/// A CPU LynxDeployment named `name` in `ns` whose model is `uri_source`.
async fn apply_uri(
    cluster: &Cluster,
    ns: &TestNamespace,
    name: &str,
    uri_source: serde_json::Value,
) -> Result<LynxDeployment, kube::Error> {
    let mut doc = yaml_docs("deploy/samples/minimal.yaml").remove(0);
    doc["metadata"]["namespace"] = ns.name.clone().into();
    doc["metadata"]["name"] = name.into();
    doc["spec"]["model"] = json!({"source": {"uri": uri_source}, "path": "model"});
    doc["spec"]["worker"]["gpus"] = 0.into();
    let stored = cluster.apply_json(doc).await?;
    Ok(serde_json::from_value(serde_json::to_value(stored).expect("json")).expect("an object"))
}

/// The one cache Job of `name`, once the operator created it.
async fn the_job(jobs: &Api<Job>, name: &str) -> Job {
    eventually("the cache Job", REACT, || async {
        let params = ListParams::default().labels(&format!("app.kubernetes.io/instance={name}"));
        jobs.list(&params).await.ok()?.items.into_iter().next()
    })
    .await
}

/// Runs `container` as a kubelet would: `$(VAR)` expanded from its env, its mounts mapped to
/// `volumes` (volume name -> folder), `/dev/termination-log` to `termination_log`, the `env`
/// (a Secret's keys) added; its exit code.
fn run_container(
    container: &Container,
    volumes: &BTreeMap<String, PathBuf>,
    env: &BTreeMap<String, String>,
    termination_log: &Path,
) -> i32 {
    assert_eq!(
        container.command.as_deref(),
        Some(&["lynx-worker".to_owned()][..])
    );
    let mut vars: BTreeMap<String, String> = env.clone();
    for var in container.env.iter().flatten() {
        vars.insert(var.name.clone(), var.value.clone().expect("plain values"));
    }
    let mut mounts: Vec<(String, PathBuf)> = container
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.mount_path.clone(), volumes[&m.name].clone()))
        .collect();
    mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
    let translate = |arg: &str| -> String {
        let mut value = arg.to_owned();
        for (name, var) in &vars {
            value = value.replace(&format!("$({name})"), var);
        }
        if value == "/dev/termination-log" {
            return termination_log.display().to_string();
        }
        for (path, dir) in &mounts {
            if let Some(rest) = value.strip_prefix(path.as_str()) {
                if rest.is_empty() || rest.starts_with('/') {
                    return format!("{}{rest}", dir.display());
                }
            }
        }
        value
    };
    let args: Vec<String> = container
        .args
        .iter()
        .flatten()
        .map(|a| translate(a))
        .collect();
    let home = termination_log.with_file_name("nonexistent-home");
    let mut child = Command::new(workspace_binary("lynx-worker"))
        .args(&args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &home)
        .env("TMPDIR", translate("/tmp"))
        .envs(&vars)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start lynx-worker fetch");
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status.code().unwrap_or(-1);
        }
        if start.elapsed() > Duration::from_secs(120) {
            child.kill().ok();
            panic!("{} {args:?} did not finish", container.name);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes the status of the Job's pod as a kubelet would after its container exited with
/// `exit_code` and `message`.
async fn finish_job_pod(pods: &Api<Pod>, job: &str, exit_code: i32, message: &str) {
    let pod = eventually("the Job's pod", REACT, || async {
        let params = ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}"));
        pods.list(&params).await.ok()?.items.into_iter().next()
    })
    .await;
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let (phase, reason) = if exit_code == 0 {
        ("Succeeded", "Completed")
    } else {
        ("Failed", "Error")
    };
    let status = json!({"status": {
        "phase": phase,
        "containerStatuses": [{
            "name": "fetch", "ready": false, "restartCount": 0,
            "image": "lynx-worker", "imageID": "",
            "state": {"terminated": {
                "exitCode": exit_code, "reason": reason, "message": message,
                "startedAt": now, "finishedAt": now,
            }},
        }],
    }});
    pods.patch_status(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .expect("write the pod's status");
}

/// The status once ModelReady has `reason`.
async fn model_ready(lynx: &Api<LynxDeployment>, name: &str, reason: &str) -> LynxDeploymentStatus {
    eventually(&format!("ModelReady {reason}"), REACT, || async {
        let status = lynx.get_status(name).await.ok()?.status?;
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "ModelReady" && c.reason == reason)
            .then_some(status)
    })
    .await
}

/// A Warning event with `reason` about `name`.
async fn warning(events: &Api<Event>, name: &str, reason: &str) -> Event {
    eventually(&format!("a Warning {reason}"), REACT, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some(reason)
                && e.type_.as_deref() == Some("Warning")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
        })
    })
    .await
}

#[tokio::test]
async fn a_cache_job_fetches_over_http_and_the_workers_wait_finds_the_model() {
    let Some(cluster) = Cluster::connect().await else {
        return;
    };
    let ns = cluster.namespace("model").await;
    let _operator = Operator::start(&cluster, &format!("lynx-operator-{}", ns.name)).await;
    let dir = tempfile::tempdir().expect("temp");
    let (tar, hex) = tiny_model_tar(dir.path());
    let addr = serve_files(BTreeMap::from([("model.tar".to_owned(), tar.clone())]));
    let uri = format!("http://{addr}/model.tar");
    let name = "fetched";
    apply_uri(
        &cluster,
        &ns,
        name,
        json!({"uri": uri, "sha256": hex, "cache": {"claimName": "model-cache"}}),
    )
    .await
    .expect("apply");

    let jobs: Api<Job> = Api::namespaced(cluster.admin.clone(), &ns.name);
    let job = the_job(&jobs, name).await;
    let job_name = job.name_any();
    assert!(job_name.starts_with("fetched-model-"), "{job_name}");
    let pod_spec = job.spec.clone().and_then(|s| s.template.spec).expect("pod");
    let container = pod_spec.containers[0].clone();
    let args = container.args.clone().expect("args");
    assert_eq!(&args[..3], ["fetch", "--uri", "$(LYNX_MODEL_URI)"]);
    assert!(args.windows(2).any(|w| w[0] == "--sha256" && w[1] == hex));

    // The kubelet's part: run it with the cache claim as an empty folder.
    let cache = dir.path().join("cache");
    let tmp = dir.path().join("tmp");
    std::fs::create_dir_all(&cache).expect("cache");
    std::fs::create_dir_all(&tmp).expect("tmp");
    let volumes = BTreeMap::from([
        ("cache".to_owned(), cache.clone()),
        ("tmp".to_owned(), tmp.clone()),
    ]);
    let log = dir.path().join("termination-log");
    let code = run_container(&container, &volumes, &BTreeMap::new(), &log);
    let message = std::fs::read_to_string(&log).expect("the fetcher's report");
    assert_eq!(code, 0, "{message}");
    let pods: Api<Pod> = Api::namespaced(cluster.admin.clone(), &ns.name);
    finish_job_pod(&pods, &job_name, code, &message).await;

    let lynx: Api<LynxDeployment> = Api::namespaced(cluster.admin.clone(), &ns.name);
    let status = model_ready(&lynx, name, "Fetched").await;
    let digest = format!("sha256:{hex}");
    let model = status.model.clone().expect("status.model");
    assert_eq!(
        (model.uri.as_str(), model.digest.as_str()),
        (uri.as_str(), digest.as_str())
    );
    assert!(model.bytes > 0);
    let condition = status
        .conditions
        .iter()
        .find(|c| c.type_ == "ModelReady")
        .expect("ModelReady");
    assert_eq!(condition.status, "True");
    assert!(
        condition.message.starts_with(&digest),
        "{}",
        condition.message
    );
    assert!(condition.message.contains(&uri), "{}", condition.message);

    // The workers' init container finds the model the Job wrote, read from the same claim.
    let deployments: Api<Deployment> = Api::namespaced(cluster.admin.clone(), &ns.name);
    let deployment = deployments.get(name).await.expect("the worker Deployment");
    let pod = deployment.spec.template.spec.expect("pod");
    let wait = pod.init_containers.clone().expect("init")[0].clone();
    assert_eq!(wait.name, "wait-model");
    let model_volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "model")
        .and_then(|v| v.persistent_volume_claim.clone())
        .expect("the cache claim");
    assert_eq!(
        (model_volume.claim_name.as_str(), model_volume.read_only),
        ("model-cache", Some(true))
    );
    let volumes = BTreeMap::from([("model".to_owned(), cache), ("tmp".to_owned(), tmp)]);
    let wait_log = dir.path().join("wait-termination-log");
    let code = run_container(&wait, &volumes, &BTreeMap::new(), &wait_log);
    assert_eq!(code, 0, "{:?}", std::fs::read_to_string(&wait_log));
    ns.delete().await;
}

#[tokio::test]
async fn a_missing_file_fails_the_fetch_with_not_found_and_a_warning() {
    let Some(cluster) = Cluster::connect().await else {
        return;
    };
    let ns = cluster.namespace("model-404").await;
    let _operator = Operator::start(&cluster, &format!("lynx-operator-{}", ns.name)).await;
    let addr = serve_files(BTreeMap::new());
    let name = "missing";
    apply_uri(
        &cluster,
        &ns,
        name,
        json!({"uri": format!("http://{addr}/missing.tar"), "cache": {"claimName": "model-cache"}}),
    )
    .await
    .expect("apply");
    let jobs: Api<Job> = Api::namespaced(cluster.admin.clone(), &ns.name);
    let job = the_job(&jobs, name).await;
    let container = job
        .spec
        .clone()
        .and_then(|s| s.template.spec)
        .expect("pod")
        .containers[0]
        .clone();
    let dir = tempfile::tempdir().expect("temp");
    let volumes: BTreeMap<String, PathBuf> = ["cache", "tmp"]
        .iter()
        .map(|v| {
            let path = dir.path().join(v);
            std::fs::create_dir_all(&path).expect("folder");
            ((*v).to_owned(), path)
        })
        .collect();
    let log = dir.path().join("termination-log");
    let code = run_container(&container, &volumes, &BTreeMap::new(), &log);
    assert_ne!(code, 0);
    let message = std::fs::read_to_string(&log).expect("the fetcher's report");
    assert!(message.contains("NotFound"), "{message}");
    let pods: Api<Pod> = Api::namespaced(cluster.admin.clone(), &ns.name);
    finish_job_pod(&pods, &job.name_any(), code, &message).await;

    let lynx: Api<LynxDeployment> = Api::namespaced(cluster.admin.clone(), &ns.name);
    let status = model_ready(&lynx, name, "NotFound").await;
    assert!(status.model.is_none());
    let events: Api<Event> = Api::namespaced(cluster.admin.clone(), &ns.name);
    let event = warning(&events, name, "NotFound").await;
    assert!(event.note.unwrap_or_default().contains("retries"));
    ns.delete().await;
}

#[tokio::test]
async fn a_missing_credentials_secret_holds_the_job_until_it_exists() {
    let Some(cluster) = Cluster::connect().await else {
        return;
    };
    let ns = cluster.namespace("model-creds").await;
    let _operator = Operator::start(&cluster, &format!("lynx-operator-{}", ns.name)).await;
    let name = "private";
    apply_uri(
        &cluster,
        &ns,
        name,
        json!({"uri": "s3://lynx-models/lynx-7b.tar", "credentialsSecret": "s3-credentials",
               "cache": {"claimName": "model-cache"}}),
    )
    .await
    .expect("apply");
    let lynx: Api<LynxDeployment> = Api::namespaced(cluster.admin.clone(), &ns.name);
    let status = model_ready(&lynx, name, "CredentialsMissing").await;
    let condition = status
        .conditions
        .iter()
        .find(|c| c.type_ == "ModelReady")
        .expect("ModelReady");
    assert!(
        condition.message.contains("s3-credentials"),
        "{}",
        condition.message
    );
    let events: Api<Event> = Api::namespaced(cluster.admin.clone(), &ns.name);
    warning(&events, name, "CredentialsMissing").await;
    let jobs: Api<Job> = Api::namespaced(cluster.admin.clone(), &ns.name);
    assert!(jobs
        .list(&ListParams::default())
        .await
        .expect("jobs")
        .items
        .is_empty());

    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "s3-credentials"},
        "stringData": {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "key"},
    }))
    .expect("a Secret");
    Api::<Secret>::namespaced(cluster.admin.clone(), &ns.name)
        .create(&PostParams::default(), &secret)
        .await
        .expect("create the Secret");
    let job = the_job(&jobs, name).await;
    let container = job
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod")
        .containers[0]
        .clone();
    let secret_ref = container.env_from.expect("envFrom")[0]
        .secret_ref
        .clone()
        .expect("the Secret");
    assert_eq!(secret_ref.name, "s3-credentials");
    model_ready(&lynx, name, "Fetching").await;
    ns.delete().await;
}

#[tokio::test]
async fn malformed_uris_and_s3_without_credentials_are_refused_at_apply_time() {
    let Some(cluster) = Cluster::connect().await else {
        return;
    };
    let ns = cluster.namespace("model-cel").await;
    for (source, message) in [
        (json!({"uri": "s3://"}), "an s3:// uri is s3://BUCKET"),
        (
            json!({"uri": "s3://models/x"}),
            "s3:// and gs:// sources need credentialsSecret",
        ),
        (json!({"uri": "gs://m/x"}), "a gs:// uri is gs://BUCKET"),
        (
            json!({"uri": "hf://lynx-7b"}),
            "an hf:// uri is hf://ORG/REPO",
        ),
        (
            json!({"uri": "hf://org/repo@bad..rev"}),
            "an hf:// uri is hf://ORG/REPO",
        ),
        (
            json!({"uri": "https://"}),
            "an http(s):// uri is http(s)://HOST",
        ),
        (
            json!({"uri": "ftp://host/model.tar"}),
            "uri must start with s3://",
        ),
        (
            json!({"uri": "https://h/m.tar", "sha256": "ABC"}),
            "spec.model.source.uri.sha256",
        ),
        (
            json!({"uri": "https://h/m.tar", "cache": {"claimName": "c"}, "claimName": "d"}),
            "set at most one of cache",
        ),
    ] {
        match apply_uri(&cluster, &ns, "refused", source.clone()).await {
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{source}: {status:?}");
                assert!(
                    status.message.contains(message),
                    "{source}: {}",
                    status.message
                );
            }
            other => panic!("{source}: accepted or failed otherwise: {other:?}"),
        }
    }
    ns.delete().await;
}

#[tokio::test]
async fn without_a_cache_the_workers_init_container_report_makes_the_model_ready() {
    let Some(cluster) = Cluster::connect().await else {
        return;
    };
    let ns = cluster.namespace("model-init").await;
    let _operator = Operator::start(&cluster, &format!("lynx-operator-{}", ns.name)).await;
    let dir = tempfile::tempdir().expect("temp");
    let (tar, hex) = tiny_model_tar(dir.path());
    let addr = serve_files(BTreeMap::from([("model.tar".to_owned(), tar)]));
    let name = "per-pod";
    apply_uri(
        &cluster,
        &ns,
        name,
        json!({"uri": format!("http://{addr}/model.tar")}),
    )
    .await
    .expect("apply");
    let lynx: Api<LynxDeployment> = Api::namespaced(cluster.admin.clone(), &ns.name);
    model_ready(&lynx, name, "Fetching").await;

    // A worker pod created by the ReplicaSet controller; its init container run for real into
    // the pod's model volume.
    let pods: Api<Pod> = Api::namespaced(cluster.admin.clone(), &ns.name);
    let pod = eventually("a worker pod", REACT, || async {
        let params = ListParams::default().labels(&format!("app.kubernetes.io/instance={name}"));
        pods.list(&params).await.ok()?.items.into_iter().next()
    })
    .await;
    let spec = pod.spec.clone().expect("pod spec");
    let fetch = spec.init_containers.clone().expect("init")[0].clone();
    assert_eq!(fetch.name, "fetch-model");
    let volumes: BTreeMap<String, PathBuf> = ["model", "tmp"]
        .iter()
        .map(|v| {
            let path = dir.path().join(v);
            std::fs::create_dir_all(&path).expect("folder");
            ((*v).to_owned(), path)
        })
        .collect();
    let log = dir.path().join("termination-log");
    let code = run_container(&fetch, &volumes, &BTreeMap::new(), &log);
    let message = std::fs::read_to_string(&log).expect("the fetcher's report");
    assert_eq!(code, 0, "{message}");
    assert!(
        dir.path().join("model/model/LYNX.yaml").is_file(),
        "the model under --model"
    );
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let status = json!({"status": {"initContainerStatuses": [{
        "name": "fetch-model", "ready": true, "restartCount": 0,
        "image": "lynx-worker", "imageID": "",
        "state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": message,
                                 "startedAt": now, "finishedAt": now}},
    }]}});
    pods.patch_status(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .expect("write the pod's status");
    let status = model_ready(&lynx, name, "Fetched").await;
    let model = status.model.expect("status.model");
    assert_eq!(model.digest, format!("sha256:{hex}"));
    ns.delete().await;
}
