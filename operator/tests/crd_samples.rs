//! The samples in `deploy/samples/` against the CEL rules of the committed CRD, evaluated
//! client-side (kube's CEL support), exactly as written (no Rust round trip).

use std::path::{Path, PathBuf};

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn crd_schema() -> Value {
    let crd = yaml(&repo().join("deploy/crd.yaml"));
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn samples(folder: &str, prefix: &str) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(repo().join(folder))
        .expect("samples folder")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| {
            path.extension().is_some_and(|ext| ext == "yaml")
                && path
                    .file_name()
                    .is_some_and(|name| name.to_string_lossy().starts_with(prefix))
        })
        .collect();
    paths.sort();
    paths
}

#[test]
fn the_samples_pass_the_cel_rules() {
    let schema = crd_schema();
    let valid = samples("deploy/samples", "");
    assert!(
        valid.len() >= 4,
        "minimal, full, router and s3-cache samples"
    );
    for path in valid {
        let result = kube::core::cel::Validator::new().validate(&schema, &yaml(&path), None);
        assert!(result.is_ok(), "{}: {result:?}", path.display());
    }
}

#[test]
fn the_cel_samples_are_rejected_by_the_cel_rules_with_their_message() {
    let schema = crd_schema();
    let expected = [
        (
            "cel-hf-without-repo.yaml",
            "an hf:// uri is hf://ORG/REPO[@REVISION]",
        ),
        (
            "cel-min-above-max.yaml",
            "minReplicas must not exceed maxReplicas",
        ),
        (
            "cel-name-not-dns-label.yaml",
            "metadata.name must be at most 63 characters",
        ),
        (
            "cel-router-with-tls.yaml",
            "spec.router and spec.tls cannot be set together yet",
        ),
        (
            "cel-s3-without-credentials.yaml",
            "s3:// and gs:// sources need credentialsSecret",
        ),
        (
            "cel-two-model-sources.yaml",
            "exactly one of pvc, hostPath or uri must be set",
        ),
    ];
    let invalid = samples("deploy/samples/invalid", "cel-");
    assert_eq!(invalid.len(), expected.len());
    for (path, (name, message)) in invalid.iter().zip(expected) {
        assert!(path.ends_with(name), "{}", path.display());
        let errors = kube::core::cel::Validator::new()
            .validate(&schema, &yaml(path), None)
            .expect_err("the CEL rules reject it");
        let text = format!("{errors:?}");
        assert!(text.contains(message), "{name}: {text}");
    }
}

#[test]
fn every_invalid_sample_is_refused_by_the_operators_own_checks_too() {
    // The operator mirrors the CEL rules and the schema's lower bounds (an object stored before a
    // CRD update must not be applied). Unknown fields are dropped by the API server, not refused.
    for path in samples("deploy/samples/invalid", "") {
        if path.ends_with("schema-unknown-field.yaml") {
            continue;
        }
        let ld: lynx_operator::crd::LynxDeployment =
            serde_json::from_value(yaml(&path)).expect("deserializes");
        assert!(ld.validate().is_err(), "{}", path.display());
    }
}
