//! Server-side apply of the desired children and pruning of the ones no longer desired.

use std::fmt::Debug;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, Preconditions,
};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::events::Pruned;
use crate::desired::{router_name, ClusterCapabilities, Desired};
use crate::discovery::{
    INFERENCE_GROUP, INFERENCE_VERSION, KEDA_GROUP, KEDA_VERSION, MONITORING_GROUP,
    MONITORING_VERSION,
};
use crate::Error;

/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "lynx-operator";

/// What applying the children observed.
#[derive(Debug)]
pub struct Applied {
    /// The worker Deployment as the API server returned it (with its status).
    pub deployment: Deployment,
    /// Children deleted because they are no longer desired.
    pub pruned: Vec<Pruned>,
}

/// Applies every desired child of the LynxDeployment with uid `owner_uid` and prunes the rest.
///
/// # Guarantees
/// - Writes with server-side apply under [`FIELD_MANAGER`], forcing ownership of the fields the
///   operator sets (a `kubectl edit` of them is undone; other fields are left alone). When the
///   merge of a hand edit with the operator's fields is invalid (a Service port edited by hand
///   and the operator's port, both named `grpc`), the child's `spec` is first set to the desired
///   one with a merge patch (lists replaced whole), then applied again.
/// - Deletes a child that is not desired only when it is controlled by `owner_uid`, with a uid
///   precondition, so an object of the same name created by someone else is never touched.
/// - Kinds whose API is not served (`caps`) are neither applied nor pruned.
/// - Every child is attempted, in the order Deployment, Service, headless Service, router
///   Deployment, PDB, HPA, ScaledObject, PodMonitors, InferencePool: one that fails does not
///   hold back the others.
///
/// # Errors
/// The first failed child's error, after every child was attempted.
pub async fn apply_children(
    client: &Client,
    namespace: &str,
    owner_uid: &str,
    desired: &Desired,
    caps: &ClusterCapabilities,
) -> Result<Applied, Error> {
    let name = desired.deployment.name_any();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let deployment = apply(&deployments, "Deployment", &name, &desired.deployment).await;
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let service = apply(&services, "Service", &name, &desired.service)
        .await
        .map(drop);
    let workers_name = desired.workers_service.name_any();
    let workers_service = apply(
        &services,
        "Service",
        &workers_name,
        &desired.workers_service,
    )
    .await
    .map(drop);
    let mut pruned = Vec::new();
    let owner = Owner {
        name: &name,
        uid: owner_uid,
    };
    let router = router_name(&name);
    let router_deployment = apply_or_prune(
        &deployments,
        &owner.child(&router),
        desired.router.as_ref(),
        &mut pruned,
    )
    .await;
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), namespace);
    let pdb = apply_or_prune(&pdbs, &owner, desired.pdb.as_ref(), &mut pruned).await;
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), namespace);
    let hpa = apply_or_prune(&hpas, &owner, desired.hpa.as_ref(), &mut pruned).await;
    let mut scaled_object = Ok(());
    if caps.keda {
        let gvk = GroupVersionKind::gvk(KEDA_GROUP, KEDA_VERSION, "ScaledObject");
        let api = dynamic(client, namespace, &gvk, "scaledobjects");
        let object = desired.scaled_object.as_ref();
        scaled_object = apply_or_prune_json(&api, &owner, &gvk, object, &mut pruned).await;
    }
    let (mut pod_monitor, mut router_pod_monitor) = (Ok(()), Ok(()));
    if caps.prometheus_operator {
        let gvk = GroupVersionKind::gvk(MONITORING_GROUP, MONITORING_VERSION, "PodMonitor");
        let api = dynamic(client, namespace, &gvk, "podmonitors");
        let object = desired.pod_monitor.as_ref();
        pod_monitor = apply_or_prune_json(&api, &owner, &gvk, object, &mut pruned).await;
        let object = desired.router_pod_monitor.as_ref();
        let router_owner = owner.child(&router);
        router_pod_monitor =
            apply_or_prune_json(&api, &router_owner, &gvk, object, &mut pruned).await;
    }
    let mut inference_pool = Ok(());
    if caps.inference_pool {
        let gvk = GroupVersionKind::gvk(INFERENCE_GROUP, INFERENCE_VERSION, "InferencePool");
        let api = dynamic(client, namespace, &gvk, "inferencepools");
        let object = desired.inference_pool.as_ref();
        inference_pool = apply_or_prune_json(&api, &owner, &gvk, object, &mut pruned).await;
    }
    let deployment = deployment?;
    service?;
    workers_service?;
    router_deployment?;
    pdb?;
    hpa?;
    scaled_object?;
    pod_monitor?;
    router_pod_monitor?;
    inference_pool?;
    Ok(Applied { deployment, pruned })
}

/// Server-side apply of one child of kind `kind` named `name`; returns the object the API server
/// stored. An invalid merge (422) is repaired once: the desired `spec` set with a merge patch,
/// then the apply again.
pub(super) async fn apply<K, T>(
    api: &Api<K>,
    kind: &str,
    name: &str,
    object: &T,
) -> Result<K, Error>
where
    K: Resource + Clone + Debug + DeserializeOwned,
    T: Serialize + Debug,
{
    let failed = |source| Error::Child {
        action: "apply",
        kind: kind.to_owned(),
        name: name.to_owned(),
        source,
    };
    let params = PatchParams::apply(FIELD_MANAGER).force();
    match api.patch(name, &params, &Patch::Apply(object)).await {
        Err(kube::Error::Api(status)) if status.code == 422 => {
            let value = serde_json::to_value(object).map_err(|source| Error::Serialize {
                kind: "child",
                source,
            })?;
            if let Some(spec) = value.get("spec") {
                let merge = PatchParams {
                    field_manager: Some(FIELD_MANAGER.to_owned()),
                    ..PatchParams::default()
                };
                let patch = serde_json::json!({ "spec": spec });
                api.patch(name, &merge, &Patch::Merge(&patch))
                    .await
                    .map_err(failed)?;
            }
            api.patch(name, &params, &Patch::Apply(object))
                .await
                .map_err(failed)
        }
        other => other.map_err(failed),
    }
}

fn dynamic(
    client: &Client,
    namespace: &str,
    gvk: &GroupVersionKind,
    plural: &str,
) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk_with_plural(gvk, plural);
    Api::namespaced_with(client.clone(), namespace, &resource)
}

/// An optional child's name and the uid of the LynxDeployment that must control it to be
/// pruned.
struct Owner<'a> {
    name: &'a str,
    uid: &'a str,
}

impl<'a> Owner<'a> {
    /// The same owner for the child named `name` (the router's children are `<name>-router`).
    fn child(&self, name: &'a str) -> Owner<'a> {
        Owner {
            name,
            uid: self.uid,
        }
    }
}

async fn apply_or_prune<K>(
    api: &Api<K>,
    owner: &Owner<'_>,
    desired: Option<&K>,
    pruned: &mut Vec<Pruned>,
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
{
    match desired {
        Some(object) => {
            apply(api, &K::kind(&()), owner.name, object).await?;
        }
        None => {
            if prune(api, owner).await? {
                pruned.push(Pruned {
                    kind: K::kind(&()).into_owned(),
                    name: owner.name.to_owned(),
                });
            }
        }
    }
    Ok(())
}

async fn apply_or_prune_json(
    api: &Api<DynamicObject>,
    owner: &Owner<'_>,
    gvk: &GroupVersionKind,
    desired: Option<&serde_json::Value>,
    pruned: &mut Vec<Pruned>,
) -> Result<(), Error> {
    match desired {
        Some(value) => {
            apply(api, &gvk.kind, owner.name, value).await?;
        }
        None => {
            if prune(api, owner).await? {
                pruned.push(Pruned {
                    kind: gvk.kind.clone(),
                    name: owner.name.to_owned(),
                });
            }
        }
    }
    Ok(())
}

/// Deletes the object named like the owner when it exists and the owner controls it; `true` when
/// it was deleted.
async fn prune<K>(api: &Api<K>, owner: &Owner<'_>) -> Result<bool, Error>
where
    K: Resource + Clone + Debug + DeserializeOwned,
{
    let Some(existing) = api.get_opt(owner.name).await? else {
        return Ok(false);
    };
    let controlled = existing
        .owner_references()
        .iter()
        .any(|reference| reference.controller == Some(true) && reference.uid == owner.uid);
    if !controlled {
        return Ok(false);
    }
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: existing.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(owner.name, &params).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(false),
        Err(err) => Err(err.into()),
    }
}
