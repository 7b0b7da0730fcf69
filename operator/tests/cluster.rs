//! Against a real cluster: apply the CRD and the minimal sample, reconcile it once, check the
//! children and the status. Ignored by default; run with
//! `LYNX_TEST_KUBECONFIG=~/.kube/config cargo test -p lynx-operator --test cluster -- --ignored`.
//! It uses (and deletes at the end) the namespace `lynx-operator-test`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::events::Reporter;
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client, Config, ResourceExt};
use lynx_operator::crd::LynxDeployment;
use lynx_operator::metrics::Metrics;
use lynx_operator::reconcile::{self, Context};

const NAMESPACE: &str = "lynx-operator-test";
const MANAGER: &str = "lynx-operator-test";

fn repo_file(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

fn yaml<T: serde::de::DeserializeOwned>(relative: &str) -> T {
    let text = std::fs::read_to_string(repo_file(relative)).expect(relative);
    serde_yaml_ng::from_str(&text).expect(relative)
}

async fn client() -> Option<Client> {
    let Some(path) = std::env::var_os("LYNX_TEST_KUBECONFIG") else {
        eprintln!("skipped: LYNX_TEST_KUBECONFIG is not set");
        return None;
    };
    let kubeconfig = Kubeconfig::read_from(path).expect("LYNX_TEST_KUBECONFIG readable");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig valid");
    Some(Client::try_from(config).expect("client"))
}

#[tokio::test]
#[ignore = "needs a cluster: set LYNX_TEST_KUBECONFIG and pass --ignored"]
async fn the_minimal_sample_gets_its_children_and_a_status() {
    let Some(client) = client().await else { return };
    let apply = PatchParams::apply(MANAGER).force();

    let crd: CustomResourceDefinition = yaml("deploy/crd.yaml");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(&crd.name_any(), &apply, &Patch::Apply(&crd))
        .await
        .expect("apply the CRD");
    let crd_name = crd.name_any();
    let established = await_condition(crds, &crd_name, conditions::is_crd_established());
    tokio::time::timeout(Duration::from_secs(60), established)
        .await
        .expect("CRD established in time")
        .expect("watch the CRD");

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE},
    }))
    .expect("namespace");
    namespaces
        .patch(NAMESPACE, &apply, &Patch::Apply(&namespace))
        .await
        .expect("create the namespace");

    let sample: LynxDeployment = yaml("deploy/samples/minimal.yaml");
    let lynx: Api<LynxDeployment> = Api::namespaced(client.clone(), NAMESPACE);
    let name = sample.name_any();
    let stored = lynx
        .patch(&name, &apply, &Patch::Apply(&sample))
        .await
        .expect("apply the sample");

    let caps = lynx_operator::discovery::discover(&client)
        .await
        .expect("discovery");
    let (_sender, capabilities) = tokio::sync::watch::channel(caps);
    let reporter = Reporter {
        controller: "lynx-operator".to_owned(),
        instance: Some("cluster-test".to_owned()),
    };
    let metrics = Metrics::new().expect("metrics");
    let ctx = Arc::new(Context::new(
        client.clone(),
        reporter,
        metrics,
        capabilities,
    ));
    reconcile::reconcile(Arc::new(stored.clone()), ctx)
        .await
        .expect("reconcile");

    let deployment = Api::<Deployment>::namespaced(client.clone(), NAMESPACE)
        .get(&name)
        .await
        .expect("the worker Deployment exists");
    let owner = &deployment.owner_references()[0];
    assert_eq!(Some(owner.uid.clone()), stored.uid());
    Api::<Service>::namespaced(client.clone(), NAMESPACE)
        .get(&name)
        .await
        .expect("the Service exists");
    let status = lynx
        .get_status(&name)
        .await
        .expect("status")
        .status
        .expect("status written");
    assert_eq!(status.observed_generation, stored.metadata.generation);
    assert!(status.selector.is_some());
    assert!(status.conditions.iter().any(|c| c.type_ == "Ready"));

    namespaces
        .delete(NAMESPACE, &DeleteParams::default())
        .await
        .expect("delete the namespace");
}
