//! The manifests against real Kubernetes tooling: `helm lint --strict`, `helm template`,
//! `kubernetes-validate --strict` and the samples against the CRD's OpenAPI schema.
//!
//! The tools come from `scripts/install-k8s-tools` (into `.tools/k8s/`). Without them each test
//! prints why it is skipped and passes, unless `LYNX_REQUIRE_K8S_TOOLS` is set, which makes the
//! missing tools a failure (CI sets it).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Kubernetes versions the manifests must validate against: the tools' kubectl and the newest.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.33.0", "1.37.0"];
/// `helm template --api-versions` value that makes the chart's ServiceMonitor render.
const SERVICE_MONITOR_API: &str = "monitoring.coreos.com/v1/ServiceMonitor";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repository root")
}

/// The installed tools.
struct Tools {
    helm: PathBuf,
    python_path: PathBuf,
}

impl Tools {
    /// The tools in `.tools/k8s/`, or `None` (with a message) when absent and not required.
    fn find() -> Option<Self> {
        let dir = repo().join(".tools/k8s");
        let tools = Self {
            helm: dir.join("bin/helm"),
            python_path: dir.join("python"),
        };
        let present = tools.helm.is_file()
            && tools.python_path.join("kubernetes_validate").is_dir()
            && tools.python_path.join("jsonschema").is_dir();
        if present {
            return Some(tools);
        }
        assert!(
            std::env::var_os("LYNX_REQUIRE_K8S_TOOLS").is_none(),
            "LYNX_REQUIRE_K8S_TOOLS is set but {} lacks helm, kubernetes-validate or jsonschema; \
             run scripts/install-k8s-tools",
            dir.display()
        );
        eprintln!(
            "skipped: Kubernetes tools not installed in {} (run scripts/install-k8s-tools)",
            dir.display()
        );
        None
    }

    fn helm(&self, args: &[&str]) -> String {
        let output = Command::new(&self.helm)
            .args(args)
            .current_dir(repo())
            .output()
            .expect("run helm");
        success(&format!("helm {}", args.join(" ")), &output);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn python(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new("python3")
            .args(args)
            .env("PYTHONPATH", &self.python_path)
            .current_dir(repo())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run python3");
        let mut input = child.stdin.take().expect("stdin");
        input
            .write_all(stdin.unwrap_or_default().as_bytes())
            .expect("write stdin");
        drop(input);
        child.wait_with_output().expect("python3 output")
    }

    /// `kubernetes-validate --strict` of `files` (or of `stdin` with `-`) for every version.
    fn validate(&self, what: &str, files: &[&str], stdin: Option<&str>) {
        for version in KUBERNETES_VERSIONS {
            let mut args = vec!["-m", "kubernetes_validate", "--strict", "-k", version];
            args.extend(files);
            let output = self.python(&args, stdin);
            success(&format!("kubernetes-validate {version} of {what}"), &output);
            let log = String::from_utf8_lossy(&output.stdout);
            assert!(log.contains("passed"), "{what}: nothing validated\n{log}");
        }
    }
}

fn success(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn kinds(rendered: &str) -> Vec<String> {
    rendered
        .lines()
        .filter_map(|line| line.strip_prefix("kind: "))
        .map(str::to_owned)
        .collect()
}

const CHART: &str = "charts/lynx-operator";
const ALL_ON: &str = "charts/lynx-operator/ci/all-on-values.yaml";

#[test]
fn the_chart_lints_strictly_with_default_and_all_on_values() {
    let Some(tools) = Tools::find() else { return };
    tools.helm(&["lint", "--strict", CHART]);
    tools.helm(&["lint", "--strict", CHART, "-f", ALL_ON]);
}

#[test]
fn the_chart_renders_objects_that_validate_strictly() {
    let Some(tools) = Tools::find() else { return };
    let defaults = tools.helm(&["template", "lynx", CHART, "-n", "lynx-system"]);
    assert_eq!(
        kinds(&defaults),
        [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "Service",
            "Deployment"
        ]
    );
    tools.validate("the chart with default values", &["-"], Some(&defaults));

    let all_on = |api_versions: &[&str]| {
        let mut args = vec!["template", "lynx", CHART, "-n", "lynx-system", "-f", ALL_ON];
        for api in api_versions {
            args.extend(["--api-versions", api]);
        }
        tools.helm(&args)
    };
    let rendered = all_on(&[SERVICE_MONITOR_API]);
    assert!(kinds(&rendered).contains(&"ServiceMonitor".to_owned()));
    assert!(rendered.contains("runAsNonRoot: true") && rendered.contains("drop: [ALL]"));
    tools.validate("the chart with every option on", &["-"], Some(&rendered));
    // Without the Prometheus operator's API the ServiceMonitor is left out.
    assert!(!kinds(&all_on(&[])).contains(&"ServiceMonitor".to_owned()));
}

#[test]
fn the_chart_schema_rejects_unknown_values() {
    let Some(tools) = Tools::find() else { return };
    let output = Command::new(&tools.helm)
        .args(["template", "lynx", CHART, "--set", "replicas=2"])
        .current_dir(repo())
        .output()
        .expect("run helm");
    assert!(!output.status.success(), "an unknown key was accepted");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("Additional property replicas is not allowed"),
        "{stderr}"
    );
}

#[test]
fn the_deploy_manifests_and_the_crd_validate_strictly() {
    let Some(tools) = Tools::find() else { return };
    tools.validate(
        "deploy/",
        &[
            "deploy/crd.yaml",
            "deploy/rbac.yaml",
            "deploy/operator.yaml",
        ],
        None,
    );
}

#[test]
fn the_generated_children_validate_strictly() {
    // The golden files are the desired-state builder's output for the samples (Deployment,
    // Service, PDB, HPA; ScaledObject and PodMonitor have no built-in schema and only warn).
    let Some(tools) = Tools::find() else { return };
    let golden: Vec<String> = ["minimal", "full-keda", "full-hpa", "s3-cache"]
        .iter()
        .map(|name| format!("operator/tests/golden/{name}.yaml"))
        .collect();
    assert!(golden
        .iter()
        .all(|path| Path::new(&repo().join(path)).is_file()));
    let files: Vec<&str> = golden.iter().map(String::as_str).collect();
    tools.validate("the generated children", &files, None);
}

#[test]
fn the_samples_match_the_crd_schema_and_the_invalid_ones_do_not() {
    let Some(tools) = Tools::find() else { return };
    let output = tools.python(
        &[
            "operator/tests/manifests/validate_samples.py",
            "deploy/crd.yaml",
            "deploy/samples",
        ],
        None,
    );
    success("validate_samples.py", &output);
}

/// One minimum Kubernetes version, stated alike in the chart, the CRD and the README (the
/// real-API tests run on it: kube-apiserver 1.28).
#[test]
fn the_minimum_kubernetes_version_is_the_same_everywhere() {
    let minimum = "1.28";
    let chart: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo().join("charts/lynx-operator/Chart.yaml")).expect("Chart"),
    )
    .expect("Chart.yaml");
    assert_eq!(
        chart["kubeVersion"].as_str(),
        Some(format!(">={minimum}.0-0").as_str())
    );
    let crd = lynx_operator::crd_yaml().expect("CRD");
    assert!(
        crd.contains(&format!(
            "serving.lynx.dev/minimum-kubernetes-version: '{minimum}'"
        )),
        "the CRD's annotation"
    );
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README");
    assert!(
        readme.contains(&format!("Kubernetes {minimum} or later")),
        "the README states the minimum"
    );
}
