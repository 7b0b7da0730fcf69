//! The LynxDeployment status derived from the worker Deployment's status: a pure function.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use super::model_ready::ModelReady;
use crate::crd::{condition, LynxDeployment, LynxDeploymentStatus};
use crate::desired::{self, AutoscalerChoice, AutoscalerKind, InferencePoolState};

/// The Deployment condition reason that means the rollout is stuck.
const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";
/// Degraded's reason when the Deployment reports `ReplicaFailure` (pods refused at admission).
const PODS_NOT_CREATED: &str = "PodsNotCreated";

/// One condition before the timestamps: type, status, reason, message.
struct Observed {
    type_: &'static str,
    status: bool,
    reason: String,
    message: String,
}

impl Observed {
    fn new(type_: &'static str, status: bool, reason: &str, message: String) -> Self {
        Self {
            type_,
            status,
            reason: reason.to_owned(),
            message,
        }
    }
}

/// The status of `ld` given the worker Deployment as the API server returned it, the
/// autoscaler chosen for it, the state of its InferencePool and the delivery of its model
/// ([`ModelReady`], `None` for `pvc` and `hostPath` sources).
///
/// # Guarantees
/// - `observedGeneration`, every condition's `observedGeneration`: `ld`'s generation.
/// - `replicas`/`readyReplicas` copy the Deployment's; `selector`, `endpoint` and
///   `workersEndpoint` are always set.
/// - Ready, Progressing, Degraded and ModelLoaded are always present; AutoscalingReady is present
///   (True) exactly when an autoscaler exists, AutoscalingUnavailable (True, with the choice's
///   reason) exactly when one was requested but cannot be provided; InferencePoolReady /
///   InferencePoolUnavailable (`CrdNotServed`) likewise for `spec.inferencePool`; ModelReady
///   exactly when `model` is given, and `status.model` is its model.
/// - At zero replicas without a router, Ready's message says that nothing wakes the fleet.
/// - A condition whose status did not change keeps its `lastTransitionTime` from `previous`.
pub fn from_deployment(
    ld: &LynxDeployment,
    deployment: &Deployment,
    autoscaler: &AutoscalerChoice,
    inference_pool: InferencePoolState,
    model: Option<&ModelReady>,
    now: Timestamp,
) -> LynxDeploymentStatus {
    let desired_replicas = ld.spec.replicas;
    let dstatus = deployment.status.clone().unwrap_or_default();
    let replicas = dstatus.replicas.unwrap_or(0);
    let ready = dstatus.ready_replicas.unwrap_or(0);
    let updated = dstatus.updated_replicas.unwrap_or(0);
    let stuck = dstatus.conditions.iter().flatten().any(|c| {
        c.type_.as_deref() == Some("Progressing")
            && c.status.as_deref() == Some("False")
            && c.reason.as_deref() == Some(PROGRESS_DEADLINE_EXCEEDED)
    });
    let deployment_observed = match (deployment.metadata.generation, dstatus.observed_generation) {
        (Some(generation), Some(observed)) => observed >= generation,
        (Some(_), None) => false,
        (None, _) => true,
    };
    let rolled_out = deployment_observed
        && updated == desired_replicas
        && replicas == desired_replicas
        && ready == desired_replicas;

    let ready_condition = if desired_replicas == 0 {
        let message = if desired::has_router(ld) {
            "no workers; the router holds requests and the autoscaler adds workers when they arrive"
        } else {
            "no workers; without spec.router no request reaches the fleet to wake it (set \
             spec.router, or scale it up)"
        };
        Observed::new(condition::READY, false, "ScaledToZero", message.to_owned())
    } else if ready >= desired_replicas && rolled_out {
        Observed::new(
            condition::READY,
            true,
            "WorkersReady",
            format!("{ready}/{desired_replicas} workers ready"),
        )
    } else {
        Observed::new(
            condition::READY,
            false,
            "WorkersNotReady",
            format!("{ready}/{desired_replicas} workers ready"),
        )
    };
    let progressing = if stuck {
        Observed::new(
            condition::PROGRESSING,
            false,
            PROGRESS_DEADLINE_EXCEEDED,
            "the worker rollout exceeded its progress deadline".to_owned(),
        )
    } else if rolled_out {
        Observed::new(
            condition::PROGRESSING,
            false,
            "RolloutComplete",
            format!("{replicas} workers at the current spec"),
        )
    } else {
        Observed::new(
            condition::PROGRESSING,
            true,
            "RollingOut",
            format!("{updated}/{desired_replicas} workers updated, {ready} ready"),
        )
    };
    // The ReplicaSet cannot create pods (admission: Pod Security, a quota, a webhook).
    let refused = dstatus.conditions.iter().flatten().find(|c| {
        c.type_.as_deref() == Some("ReplicaFailure") && c.status.as_deref() == Some("True")
    });
    let degraded = if let Some(refused) = refused {
        Observed::new(
            condition::DEGRADED,
            true,
            PODS_NOT_CREATED,
            format!(
                "the worker pods cannot be created ({}): {}",
                refused.reason.as_deref().unwrap_or("ReplicaFailure"),
                refused.message.as_deref().unwrap_or("no reason given")
            ),
        )
    } else if stuck {
        Observed::new(
            condition::DEGRADED,
            true,
            PROGRESS_DEADLINE_EXCEEDED,
            format!("rollout stuck with {ready}/{desired_replicas} workers ready"),
        )
    } else {
        Observed::new(condition::DEGRADED, false, "AsExpected", String::new())
    };
    let model_loaded = if ready > 0 {
        Observed::new(
            condition::MODEL_LOADED,
            true,
            "WorkerReady",
            format!("{ready} workers serve the model"),
        )
    } else {
        Observed::new(
            condition::MODEL_LOADED,
            false,
            "NoWorkerReady",
            "no worker has loaded the model yet".to_owned(),
        )
    };
    let mut observed = vec![ready_condition, progressing, degraded, model_loaded];
    observed.extend(autoscaling_condition(autoscaler));
    observed.extend(inference_pool_condition(inference_pool));
    observed.extend(model.map(|model| Observed {
        type_: condition::MODEL_READY,
        status: model.status,
        reason: model.reason.clone(),
        message: model.message.clone(),
    }));

    LynxDeploymentStatus {
        observed_generation: ld.metadata.generation,
        replicas,
        ready_replicas: ready,
        selector: Some(desired::selector_string(ld)),
        endpoint: desired::endpoint(ld),
        workers_endpoint: desired::workers_endpoint(ld),
        autoscaler: Some(autoscaler.kind.as_str().to_owned()),
        model: model.and_then(|model| model.model.clone()),
        conditions: conditions(ld, observed, now),
    }
}

/// The status of `ld` when no child could be applied: the children are left as they are, Ready
/// is False and Degraded is True with `reason` (`InvalidSpec`, `ApplyFailed`) and `message`; the
/// other conditions and counts stay as last observed.
pub fn degraded(
    ld: &LynxDeployment,
    reason: &'static str,
    message: &str,
    now: Timestamp,
) -> LynxDeploymentStatus {
    let previous = ld.status.clone().unwrap_or_default();
    let observed = vec![
        Observed::new(condition::READY, false, reason, message.to_owned()),
        Observed::new(condition::DEGRADED, true, reason, message.to_owned()),
    ];
    let mut conditions = conditions(ld, observed, now);
    // Keep the other conditions (ModelLoaded, autoscaling) as last observed.
    conditions.extend(
        previous
            .conditions
            .into_iter()
            .filter(|c| c.type_ != condition::READY && c.type_ != condition::DEGRADED),
    );
    LynxDeploymentStatus {
        observed_generation: ld.metadata.generation,
        selector: Some(desired::selector_string(ld)),
        endpoint: desired::endpoint(ld),
        workers_endpoint: desired::workers_endpoint(ld),
        conditions,
        ..previous
    }
}

fn autoscaling_condition(autoscaler: &AutoscalerChoice) -> Option<Observed> {
    if autoscaler.kind != AutoscalerKind::None {
        Some(Observed::new(
            condition::AUTOSCALING_READY,
            true,
            autoscaler.reason.as_str(),
            format!("{} scales the workers", autoscaler.kind.as_str()),
        ))
    } else if autoscaler.unavailable() {
        Some(Observed::new(
            condition::AUTOSCALING_UNAVAILABLE,
            true,
            autoscaler.reason.as_str(),
            "autoscaling was requested but no autoscaler can be created; replicas stay fixed"
                .to_owned(),
        ))
    } else {
        None
    }
}

fn inference_pool_condition(state: InferencePoolState) -> Option<Observed> {
    match state {
        InferencePoolState::NotRequested => None,
        InferencePoolState::Applied => Some(Observed::new(
            condition::INFERENCE_POOL_READY,
            true,
            "Applied",
            "the InferencePool selects the workers".to_owned(),
        )),
        InferencePoolState::NotServed => Some(Observed::new(
            condition::INFERENCE_POOL_UNAVAILABLE,
            true,
            "CrdNotServed",
            "spec.inferencePool is set but the cluster does not serve \
             inference.networking.k8s.io/v1 InferencePools; install the Gateway API inference \
             extension's CRDs"
                .to_owned(),
        )),
    }
}

/// Timestamps `observed`, keeping `lastTransitionTime` of conditions whose status is unchanged.
fn conditions(ld: &LynxDeployment, observed: Vec<Observed>, now: Timestamp) -> Vec<Condition> {
    let previous = ld
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    observed
        .into_iter()
        .map(|o| {
            let status = if o.status { "True" } else { "False" };
            let last_transition_time = previous
                .iter()
                .find(|c| c.type_ == o.type_ && c.status == status)
                .map_or(Time(now), |c| c.last_transition_time.clone());
            Condition {
                type_: o.type_.to_owned(),
                status: status.to_owned(),
                reason: o.reason,
                message: o.message,
                observed_generation: ld.metadata.generation,
                last_transition_time,
            }
        })
        .collect()
}

/// The condition `type_` of `status`, if present.
pub fn find<'a>(status: &'a LynxDeploymentStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

/// `true` when `status` has condition `type_` with status `True`.
pub fn is_true(status: &LynxDeploymentStatus, type_: &str) -> bool {
    find(status, type_).is_some_and(|c| c.status == "True")
}
