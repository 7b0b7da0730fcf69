//! A real API server for the tests: the control plane of `scripts/control-plane` (or any cluster)
//! named by `LYNX_TEST_KUBECONFIG`, the project's CRD and RBAC installed on it, one namespace per
//! test, and the `lynx-operator` binary run as its own service account.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{AuthInfo, KubeConfigOptions, Kubeconfig};
use kube::discovery::pinned_kind;
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client, Config, ResourceExt};

/// Field manager of the tests' own writes (a user with kubectl, as far as the operator knows).
pub const TEST_MANAGER: &str = "lynx-tests";
/// The operator's namespace and service account (`deploy/operator.yaml`).
pub const OPERATOR_NAMESPACE: &str = "lynx-system";
const OPERATOR_ACCOUNT: &str = "lynx-operator";

/// A file of the repository.
pub fn repo_file(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

/// The documents of a (multi-document) YAML file of the repository.
pub fn yaml_docs(relative: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(repo_file(relative)).expect(relative);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).expect(relative))
        .filter(|doc: &serde_json::Value| !doc.is_null())
        .collect()
}

/// Polls `check` until it returns `Some` or `timeout` passes (then panics naming `what`).
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(start.elapsed() < timeout, "not within {timeout:?}: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The cluster under test, with the CRD and the operator's RBAC installed.
pub struct Cluster {
    /// An administrator (`system:masters`).
    pub admin: Client,
    kubeconfig: PathBuf,
}

impl Cluster {
    /// Connects to `LYNX_TEST_KUBECONFIG` and installs the CRD and RBAC; `None` (with one printed
    /// line) when the variable is not set.
    pub async fn connect() -> Option<Self> {
        let Some(path) = std::env::var_os("LYNX_TEST_KUBECONFIG") else {
            eprintln!(
                "skipped: LYNX_TEST_KUBECONFIG is not set (scripts/test sets it when \
                 LYNX_K8S_BIN_DIR names kube-apiserver and kube-controller-manager)"
            );
            return None;
        };
        let kubeconfig = Kubeconfig::read_from(&path).expect("LYNX_TEST_KUBECONFIG readable");
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("kubeconfig valid");
        let admin = Client::try_from(config).expect("client");
        let cluster = Self {
            admin,
            kubeconfig: PathBuf::from(path),
        };
        cluster.install().await;
        Some(cluster)
    }

    /// Applies `deploy/crd.yaml`, the Namespace and ServiceAccount of `deploy/operator.yaml` and
    /// `deploy/rbac.yaml` (idempotent: every test does it), and waits for the CRD.
    async fn install(&self) {
        let operator_docs = yaml_docs("deploy/operator.yaml")
            .into_iter()
            .filter(|d| matches!(d["kind"].as_str(), Some("Namespace" | "ServiceAccount")));
        let docs = yaml_docs("deploy/crd.yaml")
            .into_iter()
            .chain(operator_docs)
            .chain(yaml_docs("deploy/rbac.yaml"));
        for doc in docs {
            self.apply_json(doc).await.expect("install the manifests");
        }
        let crds: Api<CustomResourceDefinition> = Api::all(self.admin.clone());
        let established = await_condition(
            crds,
            "lynxdeployments.serving.lynx.dev",
            conditions::is_crd_established(),
        );
        tokio::time::timeout(Duration::from_secs(60), established)
            .await
            .expect("CRD established in time")
            .expect("watch the CRD");
    }

    /// Installs the CustomResourceDefinition of the fixture `relative` (a file of the
    /// repository, e.g. a stand-in for KEDA's), waits until it is established and its group is
    /// discovered (an operator started after this finds the API served). Idempotent; the CRD
    /// stays for the later tests, which never depend on its absence.
    pub async fn install_crd(&self, relative: &str) {
        let doc = yaml_docs(relative).remove(0);
        let name = doc["metadata"]["name"]
            .as_str()
            .expect("CRD name")
            .to_owned();
        let group = doc["spec"]["group"].as_str().expect("CRD group").to_owned();
        self.apply_json(doc).await.expect("install the CRD");
        let crds: Api<CustomResourceDefinition> = Api::all(self.admin.clone());
        let established = await_condition(crds, &name, conditions::is_crd_established());
        tokio::time::timeout(Duration::from_secs(60), established)
            .await
            .expect("CRD established in time")
            .expect("watch the CRD");
        eventually(
            &format!("{group} discovered"),
            Duration::from_secs(30),
            || async {
                let groups = self.admin.list_api_groups().await.ok()?;
                groups.groups.iter().any(|g| g.name == group).then_some(())
            },
        )
        .await;
    }

    /// Server-side applies one object given as JSON (any kind the server serves) as an
    /// administrator.
    pub async fn apply_json(&self, doc: serde_json::Value) -> Result<DynamicObject, kube::Error> {
        self.apply_with(doc, &PatchParams::apply(TEST_MANAGER).force())
            .await
    }

    /// [`Cluster::apply_json`] with `params`.
    pub async fn apply_with(
        &self,
        doc: serde_json::Value,
        params: &PatchParams,
    ) -> Result<DynamicObject, kube::Error> {
        let object: DynamicObject = serde_json::from_value(doc).expect("an object");
        let types = object.types.clone().expect("apiVersion and kind");
        let gvk = kube::api::GroupVersionKind::try_from(&types).expect("apiVersion");
        let (resource, caps) = pinned_kind(&self.admin, &gvk).await?;
        let api: Api<DynamicObject> = match (caps.scope, object.namespace()) {
            (kube::discovery::Scope::Namespaced, Some(ns)) => {
                Api::namespaced_with(self.admin.clone(), &ns, &resource)
            }
            (kube::discovery::Scope::Namespaced, None) => {
                Api::default_namespaced_with(self.admin.clone(), &resource)
            }
            (kube::discovery::Scope::Cluster, _) => Api::all_with(self.admin.clone(), &resource),
        };
        api.patch(&object.name_any(), params, &Patch::Apply(&object))
            .await
    }

    /// A new namespace for one test, named `<prefix>-<random>`.
    pub async fn namespace(&self, prefix: &str) -> TestNamespace {
        let name = format!("{prefix}-{:08x}", rand_u32());
        let namespaces: Api<Namespace> = Api::all(self.admin.clone());
        let namespace: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name},
        }))
        .expect("namespace");
        namespaces
            .create(&PostParams::default(), &namespace)
            .await
            .expect("create the namespace");
        TestNamespace {
            name,
            admin: self.admin.clone(),
        }
    }

    /// A kubeconfig (written into `dir`) that authenticates as the operator's service account,
    /// with a token from the TokenRequest API: what the operator's pod would get.
    pub async fn operator_kubeconfig(&self, dir: &Path) -> PathBuf {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.admin.clone(), OPERATOR_NAMESPACE);
        let request: TokenRequest = serde_json::from_value(serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"audiences": [], "expirationSeconds": 3600},
        }))
        .expect("token request");
        let issued: TokenRequest = accounts
            .create_subresource("token", OPERATOR_ACCOUNT, &PostParams::default(), &request)
            .await
            .expect("a token for the operator's service account");
        let token = issued.status.expect("issued").token;
        // The administrator's kubeconfig (server, CA) with the service account's token.
        let mut kubeconfig = Kubeconfig::read_from(&self.kubeconfig).expect("kubeconfig");
        for named in &mut kubeconfig.auth_infos {
            let auth: AuthInfo =
                serde_json::from_value(serde_json::json!({"token": token})).expect("a token user");
            named.auth_info = Some(auth);
        }
        let path = dir.join("operator.kubeconfig");
        let text = serde_yaml_ng::to_string(&kubeconfig).expect("kubeconfig YAML");
        std::fs::write(&path, text).expect("write the kubeconfig");
        path
    }
}

/// A random number for unique names (no RNG crate: the clock and the process id).
fn rand_u32() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    nanos ^ std::process::id().rotate_left(16)
}

/// A namespace of one test; [`TestNamespace::delete`] removes it.
pub struct TestNamespace {
    /// Its name.
    pub name: String,
    admin: Client,
}

impl TestNamespace {
    /// Deletes the namespace (and everything in it, through the namespace controller).
    pub async fn delete(self) {
        Api::<Namespace>::all(self.admin)
            .delete(&self.name, &DeleteParams::default())
            .await
            .expect("delete the namespace");
    }
}

/// The `lynx-operator` binary, running as the operator's service account; killed when dropped.
pub struct Operator {
    child: Child,
    dir: tempfile::TempDir,
}

impl Operator {
    /// Starts `lynx-operator run` with its own Lease (`lease`), so that operators of other tests
    /// never share one.
    pub async fn start(cluster: &Cluster, lease: &str) -> Self {
        Self::start_as(cluster, lease, &format!("{lease}-0"), 15).await
    }

    /// Starts `lynx-operator run` as `identity` competing for `lease` of `lease_seconds`.
    pub async fn start_as(
        cluster: &Cluster,
        lease: &str,
        identity: &str,
        lease_seconds: u32,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let kubeconfig = cluster.operator_kubeconfig(dir.path()).await;
        let log = std::fs::File::create(dir.path().join("operator.log")).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_lynx-operator"))
            .args([
                "run",
                "--http-addr",
                "127.0.0.1:0",
                "--log-format",
                "pretty",
            ])
            .env("KUBECONFIG", &kubeconfig)
            .env("LYNX_OPERATOR_LEASE_NAME", lease)
            .env("LYNX_OPERATOR_LEASE_SECONDS", lease_seconds.to_string())
            .env("POD_NAMESPACE", OPERATOR_NAMESPACE)
            .env("POD_NAME", identity)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            // The operator logs to standard output.
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start lynx-operator");
        Self { child, dir }
    }

    /// Sends `signal` (`TERM`, `KILL`, `STOP`, `CONT`) to the process.
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success(), "kill -{signal}");
    }

    /// Waits up to `timeout` for the process to exit; its exit status.
    pub async fn exited(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// What it logged so far.
    pub fn logs(&self) -> String {
        let path = self.dir.path().join("operator.log");
        match std::fs::read(&path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => format!("(cannot read {}: {e})", path.display()),
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}
