//! Routing on a real API server: the headless Service to the workers, the router Deployment and
//! the main Service switched to it, the KEDA ScaledObject that wakes a fleet at zero on the
//! router's held requests, the InferencePool, and the router pruned when it is turned off.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Api, ResourceExt};
use lynx_operator::crd::LynxDeployment;

use crate::harness::{eventually, yaml_docs, Cluster, Operator};

/// How long the operator may take to react to a change.
const REACT: Duration = Duration::from_secs(30);

fn dynamic(
    cluster: &Cluster,
    namespace: &str,
    gvk: &GroupVersionKind,
    plural: &str,
) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk_with_plural(gvk, plural);
    Api::namespaced_with(cluster.admin.clone(), namespace, &resource)
}

fn selector(service: &Service) -> std::collections::BTreeMap<String, String> {
    service
        .spec
        .clone()
        .and_then(|s| s.selector)
        .unwrap_or_default()
}

#[tokio::test]
async fn the_router_sample_gets_headless_service_router_scaled_object_and_inference_pool() {
    let Some(cluster) = Cluster::connect().await else {
        return;
    };
    // Stand-ins for KEDA's and the inference extension's CRDs, before the operator discovers.
    cluster
        .install_crd("operator/tests/real_api/fixtures/keda-scaledobjects.yaml")
        .await;
    cluster
        .install_crd("operator/tests/real_api/fixtures/inferencepools.yaml")
        .await;
    let ns = cluster.namespace("routing").await;
    let operator = Operator::start(&cluster, &format!("lynx-operator-{}", ns.name)).await;
    let mut doc = yaml_docs("deploy/samples/router.yaml").remove(0);
    doc["metadata"]["namespace"] = ns.name.clone().into();
    let stored = cluster
        .apply_json(doc)
        .await
        .expect("apply the router sample");
    let name = stored.name_any();

    // The headless Service to the workers.
    let services: Api<Service> = Api::namespaced(cluster.admin.clone(), &ns.name);
    let workers = eventually("the headless Service", REACT, || async {
        services
            .get_opt(&format!("{name}-workers"))
            .await
            .ok()
            .flatten()
    })
    .await;
    let spec = workers.spec.clone().expect("spec");
    assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
    // `false` is the API's default, which the server does not write back.
    assert!(!spec.publish_not_ready_addresses.unwrap_or(false));
    assert_eq!(selector(&workers)["app.kubernetes.io/name"], "lynx-worker");

    // The router Deployment, and the main Service selecting it with the OpenAI port.
    let deployments: Api<Deployment> = Api::namespaced(cluster.admin.clone(), &ns.name);
    let router_name = format!("{name}-router");
    let router = eventually("the router Deployment", REACT, || async {
        deployments.get_opt(&router_name).await.ok().flatten()
    })
    .await;
    assert_eq!(
        router.owner_references().first().map(|o| o.uid.clone()),
        stored.uid()
    );
    let pod = router.spec.template.spec.clone().expect("pod");
    let container = &pod.containers[0];
    assert_eq!(
        container.command.as_deref(),
        Some(&["lynx-router".to_owned()][..])
    );
    let args = container.args.clone().unwrap_or_default().join(" ");
    let workers_target = format!(
        "--workers dns:///{name}-workers.{}.svc.cluster.local:50051",
        ns.name
    );
    assert!(args.starts_with(&workers_target), "{args}");
    let main = services.get(&name).await.expect("the main Service");
    assert_eq!(selector(&main)["app.kubernetes.io/component"], "router");
    let ports: Vec<_> = main
        .spec
        .clone()
        .and_then(|s| s.ports)
        .unwrap_or_default()
        .into_iter()
        .map(|p| p.name.unwrap_or_default())
        .collect();
    assert_eq!(ports, ["grpc", "http"]);

    // KEDA's ScaledObject reads the router's held requests, so a fleet at zero wakes up.
    let keda = GroupVersionKind::gvk("keda.sh", "v1alpha1", "ScaledObject");
    let scaled_objects = dynamic(&cluster, &ns.name, &keda, "scaledobjects");
    let scaled = eventually("the ScaledObject", REACT, || async {
        scaled_objects.get_opt(&name).await.ok().flatten()
    })
    .await;
    assert_eq!(scaled.data["spec"]["minReplicaCount"], 0);
    let trigger = &scaled.data["spec"]["triggers"][0]["metadata"];
    let query = trigger["query"].as_str().unwrap_or_default();
    assert!(query.contains("lynx_router_pending_requests"), "{query}");
    assert!(query.contains("or vector(0)"), "{query}");
    assert_eq!(trigger["activationThreshold"], "0");

    // The InferencePool over the workers' OpenAI port.
    let pools_gvk = GroupVersionKind::gvk("inference.networking.k8s.io", "v1", "InferencePool");
    let pools = dynamic(&cluster, &ns.name, &pools_gvk, "inferencepools");
    let pool = eventually("the InferencePool", REACT, || async {
        pools.get_opt(&name).await.ok().flatten()
    })
    .await;
    assert_eq!(pool.data["spec"]["targetPorts"][0]["number"], 9090);
    assert_eq!(
        pool.data["spec"]["endpointPickerRef"]["name"],
        "lynx-router-epp"
    );
    assert_eq!(
        pool.data["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
        "lynx-worker"
    );
    assert_eq!(
        pool.annotations()
            .get("serving.lynx.dev/queue-metric")
            .map(String::as_str),
        Some("lynx_queue_length")
    );

    // The status publishes both addresses.
    let lynx: Api<LynxDeployment> = Api::namespaced(cluster.admin.clone(), &ns.name);
    let status = eventually("the status with the InferencePool ready", REACT, || async {
        let status = lynx.get_status(&name).await.ok()?.status?;
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "InferencePoolReady" && c.status == "True")
            .then_some(status)
    })
    .await;
    assert_eq!(
        status.workers_endpoint,
        Some(format!(
            "dns:///{name}-workers.{}.svc.cluster.local:50051",
            ns.name
        ))
    );
    assert_eq!(
        status.endpoint,
        Some(format!("{name}.{}.svc.cluster.local:50051", ns.name))
    );

    // The router turned off: its Deployment is pruned (as the operator's service account) and
    // the main Service selects the workers again.
    let mut doc = yaml_docs("deploy/samples/router.yaml").remove(0);
    doc["metadata"]["namespace"] = ns.name.clone().into();
    doc["spec"]["router"]["enabled"] = false.into();
    cluster.apply_json(doc).await.expect("turn the router off");
    eventually("the router Deployment pruned", REACT, || async {
        let gone = deployments.get_opt(&router_name).await.ok()?.is_none();
        let main = services.get(&name).await.ok()?;
        (gone && selector(&main)["app.kubernetes.io/name"] == "lynx-worker").then_some(())
    })
    .await;
    let logs = operator.logs();
    assert!(
        !logs.contains("forbidden"),
        "RBAC refused a request:\n{logs}"
    );
    ns.delete().await;
}
