//! Desired state: a pure function from a `LynxDeployment` and what the cluster serves to the child
//! objects the operator must apply.
//!
//! Nothing here does I/O. The reconcile layer applies [`Desired`] with server-side apply and
//! prunes the children that are `None`.

mod autoscaling;
mod deployment;
mod service;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::crd::LynxDeployment;
use crate::validate::ValidationError;

pub use autoscaling::{AutoscalerChoice, AutoscalerKind, AutoscalerReason};
pub use deployment::{GRPC_PORT, HTTP_PORT, MODEL_MOUNT};

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
}

/// Every child object of one `LynxDeployment`; `None` means "must not exist".
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// The worker Deployment.
    pub deployment: Deployment,
    /// The gRPC Service.
    pub service: Service,
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
    /// Value of [`NAME`].
    pub const WORKER: &str = "lynx-worker";
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
        pdb: service::pdb(&ctx),
        hpa: autoscaling::hpa(&ctx, &autoscaler),
        scaled_object: autoscaling::scaled_object(&ctx, &autoscaler),
        pod_monitor: service::pod_monitor(&ctx, caps),
        autoscaler,
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
        ObjectMeta {
            name: Some(self.name.clone()),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels()),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }

    /// [`Self::metadata`] as JSON, for the children without typed bindings.
    fn metadata_json(&self) -> serde_json::Value {
        serde_json::to_value(self.metadata()).unwrap_or(serde_json::Value::Null)
    }
}

#[cfg(test)]
pub(crate) mod tests;
