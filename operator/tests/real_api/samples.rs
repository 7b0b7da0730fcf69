//! The CRD as the API server enforces it: every sample accepted, every invalid sample refused at
//! apply time with its message.

use kube::api::PatchParams;

use crate::harness::{yaml_docs, Cluster, TEST_MANAGER};

/// What the API server says about each invalid sample (a part of its message).
const REFUSALS: [(&str, &str); 10] = [
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
    ("schema-negative-replicas.yaml", "spec.replicas"),
    ("schema-sha256-not-hex.yaml", "spec.model.source.uri.sha256"),
    ("schema-two-gpus.yaml", "spec.worker.gpus"),
    ("schema-unknown-field.yaml", "field not declared in schema"),
];

#[tokio::test]
async fn every_sample_is_accepted_and_every_invalid_one_refused_with_its_message() {
    let Some(cluster) = Cluster::connect().await else {
        return;
    };
    let ns = cluster.namespace("samples").await;
    // As `kubectl apply --server-side --validate=strict --dry-run=server` would.
    let params = PatchParams {
        dry_run: true,
        ..PatchParams::apply(TEST_MANAGER).validation_strict()
    };
    let in_namespace = |mut doc: serde_json::Value| {
        doc["metadata"]["namespace"] = ns.name.clone().into();
        doc
    };
    for sample in ["minimal", "full", "router", "s3-cache"] {
        let doc = yaml_docs(&format!("deploy/samples/{sample}.yaml")).remove(0);
        let result = cluster.apply_with(in_namespace(doc), &params).await;
        assert!(result.is_ok(), "{sample}: {result:?}");
    }
    let mut seen = Vec::new();
    let folder = crate::harness::repo_file("deploy/samples/invalid");
    for entry in std::fs::read_dir(folder).expect("deploy/samples/invalid") {
        let entry = entry.expect("a folder entry");
        seen.push(entry.file_name().to_string_lossy().into_owned());
    }
    seen.sort();
    let named: Vec<&str> = REFUSALS.iter().map(|(file, _)| *file).collect();
    assert_eq!(seen.iter().map(String::as_str).collect::<Vec<_>>(), named);
    for (file, message) in REFUSALS {
        let doc = yaml_docs(&format!("deploy/samples/invalid/{file}")).remove(0);
        match cluster.apply_with(in_namespace(doc), &params).await {
            Err(kube::Error::Api(status)) => {
                // An unknown field fails server-side apply's typed patch: 500, not 422.
                let code = if file.contains("unknown-field") {
                    500
                } else {
                    422
                };
                assert_eq!(status.code, code, "{file}: {status:?}");
                assert!(
                    status.message.contains(message),
                    "{file}: {}",
                    status.message
                );
            }
            other => panic!("{file}: accepted or failed otherwise: {other:?}"),
        }
    }
    ns.delete().await;
}
