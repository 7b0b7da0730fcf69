//! Desired state: a pure function from a `LynxDeployment` and what the cluster serves to the child
//! objects the operator must apply.
//!
//! Nothing here does I/O. The reconcile layer applies [`Desired`] with server-side apply and
//! prunes the children that are `None`.

mod autoscaling;
mod deployment;
mod inference_pool;
mod model;
mod router;
mod service;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::crd::LynxDeployment;
use crate::validate::ValidationError;

pub use autoscaling::{AutoscalerChoice, AutoscalerKind, AutoscalerReason};
pub use deployment::{GRPC_PORT, HTTP_PORT, MODEL_MOUNT};
pub use inference_pool::{InferencePoolState, INFERENCE_POOL_ANNOTATIONS};
pub use model::{
    cache_key, delivery, job_name, job_selector, CacheKey, Delivery, CACHE_ROOT, FETCH_CONTAINER,
    JOB_BACKOFF_LIMIT, JOB_CONTAINER, MODEL_KEY_LABEL, TERMINATION_LOG, WAIT_CONTAINER,
};
pub use router::{ROUTER_GRPC_PORT, ROUTER_HTTP_PORT};

/// The API groups the operator found served at run time (discovery).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterCapabilities {
    /// `keda.sh/v1alpha1` ScaledObjects are served.
    pub keda: bool,
    /// `custom.metrics.k8s.io` is served (e.g. prometheus-adapter).
    pub custom_metrics: bool,
    /// `external.metrics.k8s.io` is served.
    pub external_metrics: bool,
    /// `monitoring.coreos.com/v1` PodMonitors are served.
    pub prometheus_operator: bool,
    /// `inference.networking.k8s.io/v1` InferencePools are served (Gateway API inference
    /// extension).
    pub inference_pool: bool,
}

/// Every child object of one `LynxDeployment`; `None` means "must not exist".
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// The worker Deployment.
    pub deployment: Deployment,
    /// The main Service `<name>`: to the workers, or to the router when there is one.
    pub service: Service,
    /// The headless Service `<name>-workers` to the workers (client-side balancing, the router).
    pub workers_service: Service,
    /// The router Deployment `<name>-router`, when `spec.router` is enabled.
    pub router: Option<Deployment>,
    /// The router's `PodMonitor` `<name>-router`, with a router, monitoring on and served.
    pub router_pod_monitor: Option<serde_json::Value>,
    /// The `InferencePool` (`inference.networking.k8s.io/v1`), when asked for and served.
    pub inference_pool: Option<serde_json::Value>,
    /// Whether the InferencePool was asked for, and whether it can exist.
    pub inference_pool_state: InferencePoolState,
    /// The PodDisruptionBudget, when enabled.
    pub pdb: Option<PodDisruptionBudget>,
    /// The HorizontalPodAutoscaler, when the HPA engine was chosen.
    pub hpa: Option<HorizontalPodAutoscaler>,
    /// The KEDA `ScaledObject` (`keda.sh/v1alpha1`), when KEDA was chosen.
    pub scaled_object: Option<serde_json::Value>,
    /// The `PodMonitor` (`monitoring.coreos.com/v1`), when monitoring is on and served.
    pub pod_monitor: Option<serde_json::Value>,
    /// Which autoscaler was chosen, and why.
    pub autoscaler: AutoscalerChoice,
    /// The Job that fetches a `uri` source into its `cache` claim; `None` without a cache (every
    /// other cache Job of the LynxDeployment is pruned).
    pub model_job: Option<Job>,
}

/// Why no desired state could be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DesiredError {
    /// The object has no namespace (it is namespaced; the API server always sets one).
    #[error("LynxDeployment has no namespace")]
    MissingNamespace,
    /// The object lacks the name or uid an owner reference needs (not read from the API server).
    #[error("LynxDeployment has no name or uid; owner references need both")]
    MissingIdentity,
    /// The spec breaks a rule of the CRD.
    #[error("invalid spec: {0}")]
    Invalid(#[from] ValidationError),
}

/// Label keys and values every child and worker pod carries.
pub mod labels {
    /// `app.kubernetes.io/name` key.
    pub const NAME: &str = "app.kubernetes.io/name";
    /// `app.kubernetes.io/instance` key (the LynxDeployment's name).
    pub const INSTANCE: &str = "app.kubernetes.io/instance";
    /// `app.kubernetes.io/managed-by` key.
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    /// `app.kubernetes.io/component` key (router pods only; the workers' selector predates it).
    pub const COMPONENT: &str = "app.kubernetes.io/component";
    /// Value of [`NAME`] on the workers.
    pub const WORKER: &str = "lynx-worker";
    /// Value of [`NAME`] on the router: the workers' selector (`name: lynx-worker`) never matches
    /// a router pod, and the router's (`name: lynx-router`) never a worker.
    pub const ROUTER: &str = "lynx-router";
    /// Value of [`NAME`] on the cache Jobs and their pods (never selected as workers).
    pub const MODEL_FETCH: &str = "lynx-model-fetch";
    /// Value of [`COMPONENT`] on the router.
    pub const ROUTER_COMPONENT: &str = "router";
    /// Value of [`MANAGED_BY`].
    pub const OPERATOR: &str = "lynx-operator";
}

/// Builds the child objects of `ld` for a cluster that serves `caps`.
///
/// # Guarantees
/// - Pure: the same inputs give the same output.
/// - Every child has `ld`'s name and namespace, the three `app.kubernetes.io` labels, and one
///   owner reference to `ld` with `controller: true` and `blockOwnerDeletion: true`.
/// - `autoscaler` says which of `hpa` / `scaled_object` is set (at most one), or why neither is.
///
/// # Errors
/// The identity errors when `ld` lacks a namespace, name or uid, and [`DesiredError::Invalid`]
/// when [`LynxDeployment::validate`] fails.
pub fn desired(ld: &LynxDeployment, caps: &ClusterCapabilities) -> Result<Desired, DesiredError> {
    let ctx = Context::new(ld)?;
    ld.validate()?;
    let autoscaler = autoscaling::choose(&ld.spec, caps);
    Ok(Desired {
        deployment: deployment::deployment(&ctx),
        service: service::service(&ctx),
        workers_service: service::workers_service(&ctx),
        router: router::deployment(&ctx),
        router_pod_monitor: router::pod_monitor(&ctx, caps),
        inference_pool: inference_pool::inference_pool(&ctx, caps),
        inference_pool_state: InferencePoolState::of(&ld.spec, caps),
        pdb: service::pdb(&ctx),
        hpa: autoscaling::hpa(&ctx, &autoscaler),
        scaled_object: autoscaling::scaled_object(&ctx, &autoscaler),
        pod_monitor: service::pod_monitor(&ctx, caps),
        autoscaler,
        model_job: model::job(&ctx),
    })
}

/// The label selector of `ld`'s workers in string form, as `status.selector` holds it for the
/// scale subresource.
pub fn selector_string(ld: &LynxDeployment) -> String {
    selector_labels(&ld.name_any())
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The in-cluster gRPC endpoint of `ld`: `<name>.<namespace>.svc.cluster.local:<port>`.
pub fn endpoint(ld: &LynxDeployment) -> Option<String> {
    let namespace = ld.namespace()?;
    Some(format!(
        "{}.{namespace}.svc.cluster.local:{}",
        ld.name_any(),
        ld.spec.service.port
    ))
}

/// The name of `ld`'s headless Service to the workers: `<name>-workers`.
pub fn workers_service_name(name: &str) -> String {
    format!("{name}-workers")
}

/// The name of `ld`'s router Deployment (and its PodMonitor): `<name>-router`.
pub fn router_name(name: &str) -> String {
    format!("{name}-router")
}

/// The workers' address for client-side balancing (`lynx generate --addr`, gRPC clients with
/// `round_robin`): `dns:///<name>-workers.<namespace>.svc.cluster.local:<grpc port>`.
pub fn workers_endpoint(ld: &LynxDeployment) -> Option<String> {
    let namespace = ld.namespace()?;
    Some(workers_target(&ld.name_any(), &namespace))
}

fn workers_target(name: &str, namespace: &str) -> String {
    format!(
        "dns:///{}.{namespace}.svc.cluster.local:{GRPC_PORT}",
        workers_service_name(name)
    )
}

/// Whether `ld` has an enabled router.
pub fn has_router(ld: &LynxDeployment) -> bool {
    ld.spec.router.as_ref().is_some_and(|router| router.enabled)
}

/// The labels that select `name`'s worker pods (a subset of [`Context::labels`]).
fn selector_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::NAME.to_owned(), labels::WORKER.to_owned()),
        (labels::INSTANCE.to_owned(), name.to_owned()),
    ])
}

/// What every builder needs: the resource and its identity, checked once.
struct Context<'a> {
    ld: &'a LynxDeployment,
    name: String,
    namespace: String,
    owner: OwnerReference,
}

impl<'a> Context<'a> {
    fn new(ld: &'a LynxDeployment) -> Result<Self, DesiredError> {
        let namespace = ld.namespace().ok_or(DesiredError::MissingNamespace)?;
        let mut owner = ld
            .controller_owner_ref(&())
            .ok_or(DesiredError::MissingIdentity)?;
        // Foreground deletion of the LynxDeployment waits for its children.
        owner.block_owner_deletion = Some(true);
        if ld.uid().is_none() {
            return Err(DesiredError::MissingIdentity);
        }
        Ok(Self {
            ld,
            name: ld.name_any(),
            namespace,
            owner,
        })
    }

    fn selector(&self) -> BTreeMap<String, String> {
        selector_labels(&self.name)
    }

    fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.selector();
        labels.insert(labels::MANAGED_BY.to_owned(), labels::OPERATOR.to_owned());
        labels
    }

    /// Metadata of a child: same name and namespace, common labels, controller owner reference.
    fn metadata(&self) -> ObjectMeta {
        self.metadata_as(self.name.clone(), self.labels())
    }

    /// Metadata of a child named `name` with `labels`: same namespace, controller owner
    /// reference.
    fn metadata_as(&self, name: String, labels: BTreeMap<String, String>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }

    /// Whether the spec asks for a router.
    fn router(&self) -> Option<&crate::crd::RouterSpec> {
        self.ld.spec.router.as_ref().filter(|router| router.enabled)
    }

    /// [`Self::metadata`] as JSON, for the children without typed bindings.
    fn metadata_json(&self) -> serde_json::Value {
        serde_json::to_value(self.metadata()).unwrap_or(serde_json::Value::Null)
    }
}

#[cfg(test)]
pub(crate) mod tests;
