//! Tests of the generated CRD, the samples and the Rust mirror of the CEL rules.

use std::path::PathBuf;

use kube::CustomResourceExt;
use serde_json::Value;

use super::*;
use crate::validate::ValidationError;

fn repo_file(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

fn crd_json() -> Value {
    serde_json::to_value(LynxDeployment::crd()).expect("CRD serializes")
}

fn sample(name: &str) -> LynxDeployment {
    let path = repo_file(&format!("deploy/samples/{name}.yaml"));
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|err| panic!("{name}: {err}"))
}

#[test]
fn committed_crd_matches_the_generated_one() {
    let generated = crate::crd_yaml().expect("CRD renders");
    let committed = std::fs::read_to_string(repo_file("deploy/crd.yaml")).unwrap_or_default();
    assert!(
        generated == committed,
        "deploy/crd.yaml is stale; regenerate it with \
         `cargo run -p lynx-operator -- crd > deploy/crd.yaml`"
    );
}

#[test]
fn the_chart_carries_the_same_crd() {
    let generated = crate::crd_yaml().expect("CRD renders");
    let path = "charts/lynx-operator/crds/lynxdeployments.serving.lynx.dev.yaml";
    let committed = std::fs::read_to_string(repo_file(path)).unwrap_or_default();
    assert!(
        generated == committed,
        "{path} is stale; regenerate it with `cargo run -p lynx-operator -- crd > {path}`"
    );
}

#[test]
fn crd_names_scope_and_version() {
    let crd = crd_json();
    assert_eq!(crd["metadata"]["name"], "lynxdeployments.serving.lynx.dev");
    assert_eq!(crd["spec"]["group"], GROUP);
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(crd["spec"]["names"]["kind"], "LynxDeployment");
    assert_eq!(
        crd["spec"]["names"]["shortNames"],
        serde_json::json!(["lynx"])
    );
    assert_eq!(
        crd["spec"]["names"]["categories"],
        serde_json::json!(["all", "lynx"])
    );
    assert_eq!(crd["spec"]["versions"][0]["name"], VERSION);
}

#[test]
fn crd_has_printer_columns_and_scale_and_status_subresources() {
    let crd = crd_json();
    let version = &crd["spec"]["versions"][0];
    let columns: Vec<(&str, &str)> = version["additionalPrinterColumns"]
        .as_array()
        .expect("columns")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or(""),
                c["jsonPath"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        columns,
        [
            ("Ready", ".status.readyReplicas"),
            ("Replicas", ".status.replicas"),
            ("Model", ".spec.model.path"),
            ("Autoscaler", ".status.autoscaler"),
            ("Age", ".metadata.creationTimestamp"),
        ]
    );
    let scale = &version["subresources"]["scale"];
    assert_eq!(scale["specReplicasPath"], ".spec.replicas");
    assert_eq!(scale["statusReplicasPath"], ".status.replicas");
    assert_eq!(scale["labelSelectorPath"], ".status.selector");
    assert!(version["subresources"]["status"].is_object());
}

/// The `x-kubernetes-validations` rules at a schema path.
fn rules_at(path: &[&str]) -> Vec<String> {
    let crd = crd_json();
    let mut node = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    for key in path {
        node = &node["properties"][key];
    }
    node["x-kubernetes-validations"]
        .as_array()
        .map(|rules| {
            rules
                .iter()
                .map(|r| r["rule"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn crd_carries_the_cel_rules_that_validate_mirrors() {
    use crate::validate::*;
    assert_eq!(rules_at(&["spec", "model", "source"]), [MODEL_SOURCE_RULE]);
    assert_eq!(rules_at(&["spec", "model", "path"]), [MODEL_PATH_RULE]);
    assert_eq!(
        rules_at(&["spec", "autoscaling"]),
        [REPLICAS_RULE, CUSTOM_QUERY_RULE]
    );
    assert_eq!(rules_at(&["spec", "podDisruptionBudget"]), [PDB_RULE]);
}

#[test]
fn crd_has_openapi_bounds_and_defaults() {
    let crd = crd_json();
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    assert_eq!(spec["properties"]["replicas"]["minimum"], 0.0);
    assert_eq!(spec["properties"]["replicas"]["default"], 1);
    assert_eq!(
        spec["properties"]["service"]["properties"]["port"]["maximum"],
        65535.0
    );
    let autoscaling = &spec["properties"]["autoscaling"]["properties"];
    assert_eq!(autoscaling["minReplicas"]["minimum"], 0.0);
    assert_eq!(autoscaling["maxReplicas"]["minimum"], 1.0);
    assert_eq!(
        autoscaling["metric"]["enum"],
        serde_json::json!(["queueLength", "running", "kvCacheUsage", "custom"])
    );
    assert_eq!(
        autoscaling["engine"]["enum"],
        serde_json::json!(["auto", "keda", "hpa", "none"])
    );
    assert_eq!(
        spec["properties"]["worker"]["properties"]["gpuResourceName"]["default"],
        "nvidia.com/gpu"
    );
    let rollout = &spec["properties"]["rollout"]["properties"];
    assert_eq!(rollout["maxSurge"]["x-kubernetes-int-or-string"], true);
    let required = spec["required"].as_array().expect("required");
    assert!(required.contains(&"model".into()) && required.contains(&"worker".into()));
}

#[test]
fn samples_deserialize_and_validate() {
    let minimal = sample("minimal");
    assert_eq!(minimal.spec.replicas, 1);
    assert_eq!(minimal.spec.worker.gpus, 1);
    assert_eq!(minimal.spec.worker.gpu_resource_name, DEFAULT_GPU_RESOURCE);
    assert_eq!(minimal.spec.service.port, DEFAULT_GRPC_PORT);
    assert_eq!(minimal.spec.model.dtype, ModelDtype::Bf16);
    assert!(minimal.spec.monitoring.enabled);
    assert_eq!(minimal.spec.validate(), Ok(()));
    let full = sample("full");
    assert_eq!(full.spec.model.layout, ModelLayout::Converted);
    assert_eq!(
        full.spec.autoscaling.as_ref().map(|a| a.max_replicas),
        Some(8)
    );
    assert_eq!(full.spec.validate(), Ok(()));
}

#[test]
fn validate_rejects_what_the_cel_rules_reject() {
    let base = sample("full");
    let check = |edit: &dyn Fn(&mut LynxDeploymentSpec), expected: ValidationError| {
        let mut spec = base.spec.clone();
        edit(&mut spec);
        assert_eq!(spec.validate(), Err(expected));
    };
    check(
        &|s| {
            if let Some(a) = s.autoscaling.as_mut() {
                a.min_replicas = 9;
            }
        },
        ValidationError::MinAboveMax,
    );
    check(
        &|s| {
            s.model.source.pvc = Some(PvcSource {
                claim_name: "models".into(),
                read_only: true,
            })
        },
        ValidationError::ModelSource,
    );
    check(
        &|s| s.model.source = ModelSource::default(),
        ValidationError::ModelSource,
    );
    check(
        &|s| s.model.path = "../etc".into(),
        ValidationError::ModelPath,
    );
    check(
        &|s| s.model.path = "/abs".into(),
        ValidationError::ModelPath,
    );
    check(
        &|s| {
            if let Some(a) = s.autoscaling.as_mut() {
                a.metric = AutoscalingMetric::Custom;
                a.query = None;
            }
        },
        ValidationError::CustomWithoutQuery,
    );
    check(
        &|s| {
            if let Some(p) = s.pod_disruption_budget.as_mut() {
                p.min_available = Some(IntOrString::Int(1));
            }
        },
        ValidationError::PdbBothBounds,
    );
    check(
        &|s| s.replicas = -1,
        ValidationError::Negative("spec.replicas"),
    );
    check(&|s| s.worker.gpus = 2, ValidationError::TooManyGpus);
    check(
        &|s| s.worker.gpus = -1,
        ValidationError::Negative("spec.worker.gpus"),
    );
    assert!(ValidationError::MinAboveMax
        .to_string()
        .contains(crate::validate::REPLICAS_MESSAGE));
}

#[test]
fn invalid_yaml_is_refused_by_the_type() {
    let wrong_enum = "model: {source: {pvc: {claimName: m}}, dtype: int8}\nworker: {image: x}\n";
    assert!(serde_yaml_ng::from_str::<LynxDeploymentSpec>(wrong_enum).is_err());
    let no_worker = "model: {source: {pvc: {claimName: m}}}\n";
    assert!(serde_yaml_ng::from_str::<LynxDeploymentSpec>(no_worker).is_err());
}

/// Names no Service can carry are refused, with the rule's message, by the CEL rule of the CRD
/// (evaluated client-side here) and by the operator's own check.
#[test]
fn names_that_are_not_dns_labels_are_refused() {
    let schema = crd_json()["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
    let long = "a".repeat(64);
    for (name, ok) in [
        ("lynx-7b", true),
        ("a", true),
        (&long[..63], true),
        ("lynx.v2", false),
        ("7b-model", false),
        ("Lynx", false),
        ("lynx-", false),
        (long.as_str(), false),
    ] {
        let mut ld = sample("minimal");
        ld.metadata.name = Some(name.to_owned());
        assert_eq!(
            ld.validate().is_ok(),
            ok,
            "operator check of {name:?}: {:?}",
            ld.validate()
        );
        let object = serde_json::to_value(&ld).expect("serializes");
        let cel = kube::core::cel::Validator::new().validate(&schema, &object, None);
        assert_eq!(cel.is_ok(), ok, "CEL rule on {name:?}: {cel:?}");
        if !ok {
            assert!(
                format!("{cel:?}").contains(crate::validate::NAME_MESSAGE),
                "{cel:?}"
            );
        }
    }
}

/// The model source rules, as the CRD's CEL (evaluated client-side) and as the operator's own
/// check, agree on every case and give the same message.
#[test]
fn model_uris_and_their_options_are_judged_alike_by_cel_and_validate() {
    use crate::validate::*;
    assert_eq!(
        rules_at(&["spec", "model", "source", "uri"]),
        [
            SCHEME_RULE,
            S3_RULE,
            GS_RULE,
            HF_RULE,
            HTTP_RULE,
            CREDENTIALS_RULE,
            CACHE_RULE
        ]
    );
    assert_eq!(rules_at(&["spec", "model"]), [CONVERT_RULE]);
    let schema = crd_json()["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
    let secret = Some("creds".to_owned());
    let cache = Some(ModelCacheSpec {
        claim_name: "cache".to_owned(),
    });
    type Edit = Box<dyn Fn(&mut ModelSpec)>;
    let uri = |text: &'static str, credentials: Option<String>| -> Edit {
        Box::new(move |m: &mut ModelSpec| {
            if let Some(source) = m.source.uri.as_mut() {
                source.uri = text.to_owned();
                source.credentials_secret = credentials.clone();
            }
        })
    };
    let cases: Vec<(Edit, Option<&str>)> = vec![
        (uri("s3://models/lynx-7b/", secret.clone()), None),
        (uri("gs://models/lynx.tar", secret.clone()), None),
        (uri("hf://lynx-ai/lynx-7b@v1.0", None), None),
        (uri("http://127.0.0.1:8080/model.tar", None), None),
        (uri("s3://", secret.clone()), Some(S3_MESSAGE)),
        (uri("s3://Models/x", secret.clone()), Some(S3_MESSAGE)),
        (uri("gs://ab", secret.clone()), Some(GS_MESSAGE)),
        (uri("hf://lynx-7b", None), Some(HF_MESSAGE)),
        (uri("hf://org/repo@", None), Some(HF_MESSAGE)),
        (uri("hf://org/repo@a..b", None), Some(HF_MESSAGE)),
        (uri("https://host", None), Some(HTTP_MESSAGE)),
        (uri("https://host/a b", None), Some(HTTP_MESSAGE)),
        (uri("ftp://host/model.tar", None), Some(SCHEME_MESSAGE)),
        (uri("s3://models/lynx-7b/", None), Some(CREDENTIALS_MESSAGE)),
        (uri("gs://models/lynx-7b/", None), Some(CREDENTIALS_MESSAGE)),
        (
            Box::new(move |m: &mut ModelSpec| {
                if let Some(source) = m.source.uri.as_mut() {
                    source.cache = cache.clone();
                    source.claim_name = Some("claim".to_owned());
                }
            }),
            Some(CACHE_MESSAGE),
        ),
        (
            Box::new(|m: &mut ModelSpec| {
                if let Some(source) = m.source.uri.as_mut() {
                    source.convert = true;
                }
                m.layout = ModelLayout::Converted;
            }),
            Some(CONVERT_MESSAGE),
        ),
    ];
    for (edit, message) in cases {
        let mut ld = sample("full");
        ld.spec.model.layout = ModelLayout::Release;
        edit(&mut ld.spec.model);
        let what = format!("{:?}", ld.spec.model.source.uri);
        let operator = ld.validate();
        let object = serde_json::to_value(&ld).expect("serializes");
        let cel = kube::core::cel::Validator::new().validate(&schema, &object, None);
        match message {
            None => {
                assert_eq!(operator, Ok(()), "{what}");
                assert!(cel.is_ok(), "{what}: {cel:?}");
            }
            Some(message) => {
                let refusal = operator.expect_err(&what).to_string();
                assert!(refusal.contains(message), "{what}: {refusal}");
                assert!(format!("{cel:?}").contains(message), "{what}: {cel:?}");
            }
        }
    }
    let mut bad_digest = sample("full");
    if let Some(source) = bad_digest.spec.model.source.uri.as_mut() {
        source.sha256 = Some("ABC".to_owned());
    }
    assert_eq!(bad_digest.validate(), Err(ValidationError::Sha256));
}
