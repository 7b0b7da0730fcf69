//! The operator's children on a real API server: created, owned, kept as desired when edited by
//! hand, and one failing child never holding back the others.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use lynx_operator::crd::LynxDeployment;

use crate::harness::{eventually, yaml_docs, Cluster, Operator, TestNamespace, TEST_MANAGER};

/// How long the operator may take to react to a change.
const REACT: Duration = Duration::from_secs(30);

/// Applies `deploy/samples/<sample>.yaml`, changed by `edit`, into `ns` as a user; returns it as
/// stored.
async fn apply_sample(
    cluster: &Cluster,
    ns: &TestNamespace,
    sample: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) -> LynxDeployment {
    let mut doc = yaml_docs(&format!("deploy/samples/{sample}.yaml")).remove(0);
    doc["metadata"]["namespace"] = ns.name.clone().into();
    edit(&mut doc);
    let stored = cluster.apply_json(doc).await.expect("apply the sample");
    serde_json::from_value(serde_json::to_value(stored).expect("json")).expect("a LynxDeployment")
}

#[tokio::test]
async fn the_minimal_sample_gets_its_children_and_a_status() {
    let Some(cluster) = Cluster::connect().await else {
        return;
    };
    let ns = cluster.namespace("children").await;
    let _operator = Operator::start(&cluster, &format!("lynx-operator-{}", ns.name)).await;
    let stored = apply_sample(&cluster, &ns, "minimal", |_| {}).await;
    let name = stored.name_any();

    let deployments: Api<Deployment> = Api::namespaced(cluster.admin.clone(), &ns.name);
    let deployment = eventually("the worker Deployment", REACT, || async {
        deployments.get_opt(&name).await.ok().flatten()
    })
    .await;
    assert_eq!(
        deployment.owner_references().first().map(|o| o.uid.clone()),
        stored.uid()
    );
    let services: Api<Service> = Api::namespaced(cluster.admin.clone(), &ns.name);
    eventually("the Service", REACT, || async {
        services.get_opt(&name).await.ok().flatten()
    })
    .await;
    let lynx: Api<LynxDeployment> = Api::namespaced(cluster.admin.clone(), &ns.name);
    let status = eventually("a status for this generation", REACT, || async {
        let status = lynx.get_status(&name).await.ok()?.status?;
        (status.observed_generation == stored.metadata.generation).then_some(status)
    })
    .await;
    assert!(status.selector.is_some());
    assert!(status.conditions.iter().any(|c| c.type_ == "Ready"));
    ns.delete().await;
}

/// A hand edit of the Service's port (a list entry the operator does not own) used to leave
/// two ports named `grpc` after the operator's apply: 422 for ever, and the children after the
/// Service never applied again. Now the Service is repaired and a deleted PDB comes back.
#[tokio::test]
async fn a_hand_edited_service_port_is_repaired_and_blocks_no_other_child() {
    let Some(cluster) = Cluster::connect().await else {
        return;
    };
    let ns = cluster.namespace("drift").await;
    let _operator = Operator::start(&cluster, &format!("lynx-operator-{}", ns.name)).await;
    let stored = apply_sample(&cluster, &ns, "minimal", |doc| {
        doc["spec"]["podDisruptionBudget"] = serde_json::json!({"enabled": true});
    })
    .await;
    let name = stored.name_any();
    let port = stored.spec.service.port;
    let services: Api<Service> = Api::namespaced(cluster.admin.clone(), &ns.name);
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(cluster.admin.clone(), &ns.name);
    eventually("the Service and the PDB", REACT, || async {
        let service = services.get_opt(&name).await.ok().flatten()?;
        pdbs.get_opt(&name).await.ok().flatten()?;
        Some(service)
    })
    .await;

    // `kubectl edit`: the port list replaced (an update, not an apply), and the PDB deleted.
    let edit = serde_json::json!({"spec": {"ports": [
        {"name": "grpc", "port": 8443, "protocol": "TCP", "targetPort": "grpc"}
    ]}});
    services
        .patch(
            &name,
            &PatchParams {
                field_manager: Some(TEST_MANAGER.to_owned()),
                ..PatchParams::default()
            },
            &Patch::Merge(&edit),
        )
        .await
        .expect("edit the Service");
    pdbs.delete(&name, &DeleteParams::default())
        .await
        .expect("delete the PDB");
    // And the worker's image and arguments edited in the Deployment.
    let deployments: Api<Deployment> = Api::namespaced(cluster.admin.clone(), &ns.name);
    let desired = deployments.get(&name).await.expect("the Deployment");
    let worker = |d: &Deployment| {
        let pod = d.spec.template.spec.clone().expect("pod");
        let c = pod
            .containers
            .into_iter()
            .find(|c| c.name == "worker")
            .expect("worker");
        (c.image, c.args)
    };
    let edit = serde_json::json!({"spec": {"template": {"spec": {"containers": [
        {"name": "worker", "image": "example.com/other:1", "args": ["serve"]}
    ]}}}});
    deployments
        .patch(
            &name,
            &PatchParams {
                field_manager: Some(TEST_MANAGER.to_owned()),
                ..PatchParams::default()
            },
            &Patch::Strategic(&edit),
        )
        .await
        .expect("edit the Deployment");

    let ports = eventually("the Service's port repaired", REACT, || async {
        let service = services.get_opt(&name).await.ok().flatten()?;
        let ports: Vec<(Option<String>, i32)> = service
            .spec?
            .ports?
            .into_iter()
            .map(|p| (p.name, p.port))
            .collect();
        (ports.iter().all(|(_, p)| *p == port)).then_some(ports)
    })
    .await;
    assert_eq!(ports, [(Some("grpc".to_owned()), port)]);
    eventually("the PDB back", REACT, || async {
        pdbs.get_opt(&name).await.ok().flatten()
    })
    .await;
    eventually("the worker container repaired", REACT, || async {
        let now = deployments.get(&name).await.ok()?;
        (worker(&now) == worker(&desired)).then_some(())
    })
    .await;
    ns.delete().await;
}

/// Pods refused at admission (here a quota of zero pods) leave the Deployment with
/// `ReplicaFailure`; the LynxDeployment says so in `Degraded` and in a Warning event.
#[tokio::test]
async fn pods_refused_at_admission_show_in_the_status_and_events() {
    let Some(cluster) = Cluster::connect().await else {
        return;
    };
    let ns = cluster.namespace("refused").await;
    cluster
        .apply_json(serde_json::json!({
            "apiVersion": "v1", "kind": "ResourceQuota",
            "metadata": {"name": "no-pods", "namespace": ns.name},
            "spec": {"hard": {"pods": "0"}},
        }))
        .await
        .expect("the quota");
    let _operator = Operator::start(&cluster, &format!("lynx-operator-{}", ns.name)).await;
    let stored = apply_sample(&cluster, &ns, "minimal", |_| {}).await;
    let name = stored.name_any();
    let lynx: Api<LynxDeployment> = Api::namespaced(cluster.admin.clone(), &ns.name);
    let degraded = eventually(
        "Degraded with PodsNotCreated",
        Duration::from_secs(60),
        || async {
            let status = lynx.get_status(&name).await.ok()?.status?;
            status.conditions.into_iter().find(|c| {
                c.type_ == "Degraded" && c.status == "True" && c.reason == "PodsNotCreated"
            })
        },
    )
    .await;
    assert!(degraded.message.contains("quota"), "{}", degraded.message);
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(cluster.admin.clone(), &ns.name);
    let warning = eventually("a Degraded warning event", REACT, || async {
        let list = events.list(&Default::default()).await.ok()?;
        list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("Degraded")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name.as_str())
        })
    })
    .await;
    let note = warning.note.unwrap_or_default();
    assert!(
        note.contains("PodsNotCreated") && note.contains("quota"),
        "{note}"
    );
    ns.delete().await;
}

/// Each change is its own event with its own note (an event series kept the first note:
/// "applied generation 2" when 3 was applied), and conditions and notes are sentences.
#[tokio::test]
async fn every_update_has_an_event_with_its_own_note() {
    let Some(cluster) = Cluster::connect().await else {
        return;
    };
    let ns = cluster.namespace("events").await;
    let _operator = Operator::start(&cluster, &format!("lynx-operator-{}", ns.name)).await;
    let stored = apply_sample(&cluster, &ns, "minimal", |_| {}).await;
    let name = stored.name_any();
    let lynx: Api<LynxDeployment> = Api::namespaced(cluster.admin.clone(), &ns.name);
    let observed = |generation: i64| {
        let lynx = lynx.clone();
        let name = name.clone();
        async move {
            eventually(
                &format!("generation {generation} applied"),
                REACT,
                || async {
                    let status = lynx.get_status(&name).await.ok()?.status?;
                    (status.observed_generation == Some(generation)).then_some(())
                },
            )
            .await;
        }
    };
    observed(1).await;
    for (replicas, generation) in [(2, 2), (3, 3)] {
        apply_sample(&cluster, &ns, "minimal", |doc| {
            doc["spec"]["replicas"] = replicas.into();
        })
        .await;
        observed(generation).await;
    }
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(cluster.admin.clone(), &ns.name);
    let notes = eventually("both Updated events", REACT, || async {
        let list = events.list(&Default::default()).await.ok()?;
        let mut notes: Vec<String> = list
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("Updated"))
            .filter_map(|e| e.note)
            .collect();
        notes.sort();
        (notes.len() >= 2).then_some(notes)
    })
    .await;
    assert_eq!(notes, ["applied generation 2", "applied generation 3"]);
    ns.delete().await;
}

/// Deleting the LynxDeployment deletes its children through the garbage collector (owner
/// references; the operator never deletes the Deployment or the Service itself).
#[tokio::test]
async fn deleting_the_lynx_deployment_collects_its_children() {
    let Some(cluster) = Cluster::connect().await else {
        return;
    };
    let ns = cluster.namespace("gc").await;
    let _operator = Operator::start(&cluster, &format!("lynx-operator-{}", ns.name)).await;
    let stored = apply_sample(&cluster, &ns, "minimal", |_| {}).await;
    let name = stored.name_any();
    let deployments: Api<Deployment> = Api::namespaced(cluster.admin.clone(), &ns.name);
    let services: Api<Service> = Api::namespaced(cluster.admin.clone(), &ns.name);
    eventually("the children", REACT, || async {
        deployments.get_opt(&name).await.ok().flatten()?;
        services.get_opt(&name).await.ok().flatten()
    })
    .await;
    let lynx: Api<LynxDeployment> = Api::namespaced(cluster.admin.clone(), &ns.name);
    lynx.delete(&name, &DeleteParams::foreground())
        .await
        .expect("delete the LynxDeployment");
    eventually(
        "the children collected",
        Duration::from_secs(60),
        || async {
            let gone = deployments.get_opt(&name).await.ok()?.is_none()
                && services.get_opt(&name).await.ok()?.is_none()
                && lynx.get_opt(&name).await.ok()?.is_none();
            gone.then_some(())
        },
    )
    .await;
    ns.delete().await;
}

/// A restarted operator finds everything as it left it and writes nothing.
#[tokio::test]
async fn a_restarted_operator_writes_nothing_when_nothing_changed() {
    let Some(cluster) = Cluster::connect().await else {
        return;
    };
    let ns = cluster.namespace("restart").await;
    let lease = format!("lynx-operator-{}", ns.name);
    let first = Operator::start(&cluster, &lease).await;
    let stored = apply_sample(&cluster, &ns, "minimal", |doc| {
        doc["spec"]["podDisruptionBudget"] = serde_json::json!({"enabled": true});
    })
    .await;
    let name = stored.name_any();
    let lynx: Api<LynxDeployment> = Api::namespaced(cluster.admin.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(cluster.admin.clone(), &ns.name);
    let services: Api<Service> = Api::namespaced(cluster.admin.clone(), &ns.name);
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(cluster.admin.clone(), &ns.name);
    let versions = || async {
        Some([
            lynx.get_opt(&name).await.ok()??.resource_version()?,
            deployments.get_opt(&name).await.ok()??.resource_version()?,
            services.get_opt(&name).await.ok()??.resource_version()?,
            pdbs.get_opt(&name).await.ok()??.resource_version()?,
        ])
    };
    eventually("reconciled with a status", REACT, || async {
        let status = lynx.get_status(&name).await.ok()?.status?;
        (status.observed_generation == stored.metadata.generation).then_some(())
    })
    .await;
    // Settled: no write for two seconds.
    let settled = eventually("the objects settle", REACT, || async {
        let before = versions().await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = versions().await?;
        (before == after).then_some(after)
    })
    .await;
    drop(first);
    let mut second = Operator::start(&cluster, &lease).await;
    // Same identity: it takes the Lease over at once and reconciles every object at start.
    let start = std::time::Instant::now();
    while !second.logs().contains("starting the controller") {
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "the second operator never led ({:?}): {}",
            second.exited(Duration::ZERO).await,
            second.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        versions().await.expect("versions"),
        settled,
        "{}",
        second.logs()
    );
    ns.delete().await;
}
