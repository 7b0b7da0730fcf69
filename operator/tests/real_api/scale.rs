//! The scale subresource: `kubectl scale` reaches the workers, and an HPA can read it.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use lynx_operator::crd::LynxDeployment;

use crate::harness::{eventually, yaml_docs, Cluster, Operator, TEST_MANAGER};

#[tokio::test]
async fn the_scale_subresource_scales_the_workers_and_an_hpa_can_read_it() {
    let Some(cluster) = Cluster::connect().await else {
        return;
    };
    let ns = cluster.namespace("scale").await;
    let _operator = Operator::start(&cluster, &format!("lynx-operator-{}", ns.name)).await;
    let mut doc = yaml_docs("deploy/samples/minimal.yaml").remove(0);
    doc["metadata"]["namespace"] = ns.name.clone().into();
    let stored = cluster.apply_json(doc).await.expect("apply");
    let name = stored.name_any();
    let lynx: Api<LynxDeployment> = Api::namespaced(cluster.admin.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(cluster.admin.clone(), &ns.name);
    eventually(
        "a status with the selector",
        Duration::from_secs(30),
        || async { lynx.get_status(&name).await.ok()?.status?.selector },
    )
    .await;

    // `kubectl scale lynx/<name> --replicas=3`.
    let scale = serde_json::json!({"spec": {"replicas": 3}});
    lynx.patch_scale(
        &name,
        &PatchParams {
            field_manager: Some(TEST_MANAGER.to_owned()),
            ..PatchParams::default()
        },
        &Patch::Merge(&scale),
    )
    .await
    .expect("patch the scale subresource");
    eventually(
        "the worker Deployment at 3",
        Duration::from_secs(30),
        || async {
            let replicas = deployments.get(&name).await.ok()?.spec.replicas?;
            (replicas == 3).then_some(())
        },
    )
    .await;
    let read = lynx.get_scale(&name).await.expect("read the scale");
    assert_eq!(read.spec.and_then(|s| s.replicas), Some(3));

    // An HPA of the user's own on the LynxDeployment: the controller manager reads the scale.
    let hpa: HorizontalPodAutoscaler = serde_json::from_value(serde_json::json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "by-hand", "namespace": ns.name},
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "serving.lynx.dev/v1alpha1",
                "kind": "LynxDeployment",
                "name": name,
            },
            "minReplicas": 1,
            "maxReplicas": 4,
            "metrics": [{"type": "Resource", "resource": {
                "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}
            }}],
        },
    }))
    .expect("an HPA");
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(cluster.admin.clone(), &ns.name);
    hpas.create(&Default::default(), &hpa)
        .await
        .expect("create the HPA");
    let able = eventually("the HPA able to scale", Duration::from_secs(60), || async {
        let status = hpas.get("by-hand").await.ok()?.status?;
        status
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "AbleToScale" && c.status == "True")
    })
    .await;
    assert_eq!(able.reason.as_deref(), Some("SucceededGetScale"));
    ns.delete().await;
}
