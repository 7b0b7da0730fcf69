//! A kubelet stand-in: the worker pod template the operator created, started for real.
//!
//! No kubelet runs here, so the test plays one: it takes the pod template of the worker
//! Deployment, starts its `lynx-worker` container with exactly its command, args and env, the
//! volumes mapped to temporary folders (the PVC to the repository's tiny model) and the container
//! ports to free loopback ports, waits for the startup and readiness probes' paths, and sends a
//! multimodal request through the Service's port mapping. `HOME` names a folder that does not
//! exist, as in the worker image, and must still not exist afterwards: nothing may be written
//! outside the pod's volumes (the root file system is read-only in the pod).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, PodSpec, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Api, ResourceExt};

use crate::harness::{eventually, repo_file, yaml_docs, Cluster, Operator};

/// A binary of the workspace, built beside this test (`target/<profile>/<name>`).
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "{} is not built: build the workspace (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// A free loopback port.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

/// One started container of a pod template.
struct StandIn {
    child: Child,
    /// Container port (by name) -> loopback port.
    ports: BTreeMap<String, (i32, u16)>,
    _volumes: tempfile::TempDir,
}

impl StandIn {
    /// Starts `container` of `pod` as a kubelet would: volumes as folders (`claims` maps a
    /// PersistentVolumeClaim name to its content), ports on loopback, `home` as `HOME`.
    fn start(
        pod: &PodSpec,
        container: &Container,
        claims: &BTreeMap<&str, PathBuf>,
        home: &Path,
    ) -> Self {
        let volumes_dir = tempfile::tempdir().expect("volumes");
        let mut volume_dirs = BTreeMap::new();
        for volume in pod.volumes.iter().flatten() {
            let dir = if let Some(claim) = &volume.persistent_volume_claim {
                claims
                    .get(claim.claim_name.as_str())
                    .unwrap_or_else(|| panic!("no content for claim {}", claim.claim_name))
                    .clone()
            } else if volume.empty_dir.is_some() {
                let dir = volumes_dir.path().join(&volume.name);
                std::fs::create_dir_all(&dir).expect("emptyDir");
                dir
            } else {
                panic!("the stand-in maps PVC and emptyDir volumes only: {volume:?}");
            };
            volume_dirs.insert(volume.name.clone(), dir);
        }
        // Container path -> host path, longest mount path first.
        let mut mounts: Vec<(String, PathBuf)> = container
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| {
                let dir = volume_dirs
                    .get(&m.name)
                    .unwrap_or_else(|| panic!("mount of an unknown volume {}", m.name));
                (m.mount_path.clone(), dir.clone())
            })
            .collect();
        mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
        let ports: BTreeMap<String, (i32, u16)> = container
            .ports
            .iter()
            .flatten()
            .map(|p| {
                (
                    p.name.clone().expect("named port"),
                    (p.container_port, free_port()),
                )
            })
            .collect();
        let translate = |value: &str| -> String {
            for (container_port, host_port) in ports.values() {
                if value == format!("0.0.0.0:{container_port}") {
                    return format!("127.0.0.1:{host_port}");
                }
            }
            for (path, dir) in &mounts {
                if let Some(rest) = value.strip_prefix(path.as_str()) {
                    if rest.is_empty() || rest.starts_with('/') {
                        return format!("{}{rest}", dir.display());
                    }
                }
            }
            value.to_owned()
        };
        let command = container.command.clone().expect("an explicit command");
        assert_eq!(command, ["lynx-worker"], "the worker image's binary");
        let args: Vec<String> = container
            .args
            .iter()
            .flatten()
            .map(|a| translate(a))
            .collect();
        let mut cmd = Command::new(workspace_binary("lynx-worker"));
        cmd.args(&args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", home)
            .env("TMPDIR", translate("/tmp"))
            .current_dir(volumes_dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for var in container.env.iter().flatten() {
            let value = var.value.as_deref().expect("plain env values");
            cmd.env(&var.name, translate(value));
        }
        let child = cmd.spawn().expect("start lynx-worker");
        Self {
            child,
            ports,
            _volumes: volumes_dir,
        }
    }

    /// The loopback address of the container port `target` (a name or a number).
    fn address_of(&self, target: &IntOrString) -> SocketAddr {
        let host_port = match target {
            IntOrString::String(name) => self.ports[name].1,
            IntOrString::Int(port) => {
                self.ports
                    .values()
                    .find(|(container, _)| container == port)
                    .expect("a declared container port")
                    .1
            }
        };
        SocketAddr::from(([127, 0, 0, 1], host_port))
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// The HTTP status of `GET path` at `addr` (what an HTTP probe checks).
fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).ok()?;
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test]
async fn the_operators_pod_template_starts_a_worker_that_answers_through_the_service() {
    let Some(cluster) = Cluster::connect().await else {
        return;
    };
    let ns = cluster.namespace("kubelet").await;
    let _operator = Operator::start(&cluster, &format!("lynx-operator-{}", ns.name)).await;
    // The minimal sample on CPU, reading the tiny model from its PVC.
    let mut doc = yaml_docs("deploy/samples/minimal.yaml").remove(0);
    doc["metadata"]["namespace"] = ns.name.clone().into();
    doc["spec"]["model"]["path"] = "model".into();
    doc["spec"]["worker"]["gpus"] = 0.into();
    let stored = cluster.apply_json(doc).await.expect("apply");
    let name = stored.name_any();
    let claim = stored.data["spec"]["model"]["source"]["pvc"]["claimName"]
        .as_str()
        .expect("the sample's claim")
        .to_owned();

    let deployments: Api<Deployment> = Api::namespaced(cluster.admin.clone(), &ns.name);
    let services: Api<Service> = Api::namespaced(cluster.admin.clone(), &ns.name);
    let (deployment, service) = eventually(
        "the Deployment and the Service",
        Duration::from_secs(30),
        || async {
            Some((
                deployments.get_opt(&name).await.ok().flatten()?,
                services.get_opt(&name).await.ok().flatten()?,
            ))
        },
    )
    .await;
    let pod = deployment.spec.template.spec.expect("a pod template");
    let container = pod
        .containers
        .iter()
        .find(|c| c.name == "worker")
        .expect("the worker container")
        .clone();

    let home_root = tempfile::tempdir().expect("temp");
    let home = home_root.path().join("nonexistent");
    let claims = BTreeMap::from([(claim.as_str(), repo_file("tests/data/tiny"))]);
    let worker = StandIn::start(&pod, &container, &claims, &home);

    // The probes, as the kubelet runs them.
    for probe in [&container.startup_probe, &container.readiness_probe] {
        let http = probe
            .as_ref()
            .and_then(|p| p.http_get.clone())
            .expect("an HTTP probe");
        let addr = worker.address_of(&http.port);
        let path = http.path.clone().unwrap_or_else(|| "/".to_owned());
        eventually(
            &format!("GET {path} answers 200"),
            Duration::from_secs(120),
            || async { (http_status(addr, &path) == Some(200)).then_some(()) },
        )
        .await;
    }

    // A request through the Service: its port's target is a container port of the pod.
    let port = service
        .spec
        .and_then(|s| s.ports)
        .and_then(|p| p.into_iter().next())
        .expect("a Service port");
    let target = port.target_port.expect("a target port");
    let addr = worker.address_of(&target);
    let output = Command::new(workspace_binary("lynx"))
        .args([
            "generate",
            "--addr",
            &format!("http://{addr}"),
            "--max-new-tokens",
            "4",
        ])
        .arg("--image")
        .arg(repo_file("worker/assets/example.png"))
        .args(["--prompt", "What is in the image?"])
        .output()
        .expect("run lynx generate");
    assert!(
        output.status.success(),
        "lynx generate: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.stdout.is_empty(), "an answer");
    assert!(
        !home.exists(),
        "the worker wrote under HOME, outside the pod's volumes: {}",
        home.display()
    );
    drop(worker);
    ns.delete().await;
}
