//! The status as a pure function of the worker Deployment's status.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus};
use k8s_openapi::jiff::Timestamp;

use crate::crd::{condition, LynxDeployment, LynxDeploymentStatus, RouterSpec};
use crate::desired::tests::sample;
use crate::desired::{AutoscalerChoice, AutoscalerKind, AutoscalerReason, InferencePoolState};
use crate::reconcile::status::{self as derive, find};

/// The status of a LynxDeployment without `spec.inferencePool`.
fn from_deployment(
    ld: &LynxDeployment,
    deployment: &Deployment,
    autoscaler: &AutoscalerChoice,
    now: Timestamp,
) -> LynxDeploymentStatus {
    derive::from_deployment(
        ld,
        deployment,
        autoscaler,
        InferencePoolState::NotRequested,
        None,
        now,
    )
}

const NONE: AutoscalerChoice = AutoscalerChoice {
    kind: AutoscalerKind::None,
    reason: AutoscalerReason::NotConfigured,
};

fn deployment(generation: i64, status: DeploymentStatus) -> Deployment {
    let mut deployment = Deployment::default();
    deployment.metadata.generation = Some(generation);
    deployment.status = Some(status);
    deployment
}

fn ready_status(replicas: i32, ready: i32) -> DeploymentStatus {
    DeploymentStatus {
        observed_generation: Some(1),
        replicas: Some(replicas),
        updated_replicas: Some(replicas),
        ready_replicas: Some(ready),
        ..DeploymentStatus::default()
    }
}

fn ld(replicas: i32) -> LynxDeployment {
    let mut ld = sample("minimal");
    ld.metadata.generation = Some(4);
    ld.spec.replicas = replicas;
    ld
}

fn get(status: &crate::crd::LynxDeploymentStatus, type_: &str) -> (String, String) {
    let c = find(status, type_).unwrap_or_else(|| panic!("{type_}"));
    (c.status.clone(), c.reason.clone())
}

fn pair(status: &str, reason: &str) -> (String, String) {
    (status.to_owned(), reason.to_owned())
}

#[test]
fn all_workers_ready_is_ready_and_not_progressing() {
    let status = from_deployment(
        &ld(2),
        &deployment(1, ready_status(2, 2)),
        &NONE,
        Timestamp::now(),
    );
    assert_eq!(get(&status, condition::READY), pair("True", "WorkersReady"));
    assert_eq!(
        get(&status, condition::PROGRESSING),
        pair("False", "RolloutComplete")
    );
    assert_eq!(
        get(&status, condition::DEGRADED),
        pair("False", "AsExpected")
    );
    assert_eq!(
        get(&status, condition::MODEL_LOADED),
        pair("True", "WorkerReady")
    );
    assert_eq!(status.observed_generation, Some(4));
    assert!(status
        .conditions
        .iter()
        .all(|c| c.observed_generation == Some(4)));
}

#[test]
fn a_scale_up_in_flight_is_progressing_with_the_model_loaded() {
    let status = from_deployment(
        &ld(3),
        &deployment(1, ready_status(1, 1)),
        &NONE,
        Timestamp::now(),
    );
    assert_eq!(
        get(&status, condition::READY),
        pair("False", "WorkersNotReady")
    );
    assert_eq!(
        get(&status, condition::PROGRESSING),
        pair("True", "RollingOut")
    );
    assert_eq!(
        get(&status, condition::MODEL_LOADED),
        pair("True", "WorkerReady")
    );
}

#[test]
fn a_deployment_the_controller_has_not_observed_yet_is_progressing() {
    // Generation 2 written, the Deployment controller still reports generation 1.
    let status = from_deployment(
        &ld(2),
        &deployment(2, ready_status(2, 2)),
        &NONE,
        Timestamp::now(),
    );
    assert_eq!(
        get(&status, condition::PROGRESSING),
        pair("True", "RollingOut")
    );
    assert_eq!(
        get(&status, condition::READY),
        pair("False", "WorkersNotReady")
    );
}

#[test]
fn scaled_to_zero_is_not_ready_and_has_no_model_loaded() {
    let status = from_deployment(
        &ld(0),
        &deployment(1, ready_status(0, 0)),
        &NONE,
        Timestamp::now(),
    );
    assert_eq!(
        get(&status, condition::READY),
        pair("False", "ScaledToZero")
    );
    assert_eq!(
        get(&status, condition::MODEL_LOADED),
        pair("False", "NoWorkerReady")
    );
}

#[test]
fn a_progress_deadline_exceeded_is_degraded() {
    let mut dstatus = ready_status(1, 0);
    dstatus.conditions = Some(vec![DeploymentCondition {
        type_: Some("Progressing".to_owned()),
        status: Some("False".to_owned()),
        reason: Some("ProgressDeadlineExceeded".to_owned()),
        ..DeploymentCondition::default()
    }]);
    let status = from_deployment(&ld(1), &deployment(1, dstatus), &NONE, Timestamp::now());
    assert_eq!(
        get(&status, condition::DEGRADED),
        pair("True", "ProgressDeadlineExceeded")
    );
    assert_eq!(
        get(&status, condition::PROGRESSING),
        pair("False", "ProgressDeadlineExceeded")
    );
}

/// Pods refused at admission (Pod Security, a quota): the Deployment reports ReplicaFailure and
/// the LynxDeployment is Degraded, saying why.
#[test]
fn pods_that_cannot_be_created_are_degraded_with_the_reason() {
    let mut dstatus = ready_status(0, 0);
    dstatus.conditions = Some(vec![DeploymentCondition {
        type_: Some("ReplicaFailure".to_owned()),
        status: Some("True".to_owned()),
        reason: Some("FailedCreate".to_owned()),
        message: Some("pods \"w-1\" is forbidden: exceeded quota: no-pods".to_owned()),
        ..DeploymentCondition::default()
    }]);
    let status = from_deployment(&ld(1), &deployment(1, dstatus), &NONE, Timestamp::now());
    assert_eq!(
        get(&status, condition::DEGRADED),
        pair("True", "PodsNotCreated")
    );
    let message = &find(&status, condition::DEGRADED)
        .expect("Degraded")
        .message;
    assert!(
        message.contains("FailedCreate") && message.contains("exceeded quota: no-pods"),
        "{message}"
    );
}

#[test]
fn autoscaling_conditions_follow_the_choice() {
    let keda = AutoscalerChoice {
        kind: AutoscalerKind::Keda,
        reason: AutoscalerReason::KedaAvailable,
    };
    let unavailable = AutoscalerChoice {
        kind: AutoscalerKind::None,
        reason: AutoscalerReason::NoMetricsApi,
    };
    let d = deployment(1, ready_status(1, 1));
    let status = from_deployment(&ld(1), &d, &keda, Timestamp::now());
    assert_eq!(
        get(&status, condition::AUTOSCALING_READY),
        pair("True", "KedaAvailable")
    );
    assert!(find(&status, condition::AUTOSCALING_UNAVAILABLE).is_none());
    let status = from_deployment(&ld(1), &d, &unavailable, Timestamp::now());
    assert_eq!(
        get(&status, condition::AUTOSCALING_UNAVAILABLE),
        pair("True", "NoMetricsApi")
    );
    assert!(find(&status, condition::AUTOSCALING_READY).is_none());
    let status = from_deployment(&ld(1), &d, &NONE, Timestamp::now());
    assert!(status
        .conditions
        .iter()
        .all(|c| !c.type_.starts_with("Autoscaling")));
}

#[test]
fn unchanged_conditions_keep_their_transition_time() {
    let earlier = Timestamp::from_second(1_700_000_000).expect("timestamp");
    let later = Timestamp::from_second(1_800_000_000).expect("timestamp");
    let mut object = ld(1);
    let first = from_deployment(&object, &deployment(1, ready_status(1, 1)), &NONE, earlier);
    object.status = Some(first.clone());
    let second = from_deployment(&object, &deployment(1, ready_status(1, 1)), &NONE, later);
    assert_eq!(
        first, second,
        "an unchanged Deployment gives an identical status"
    );
    let third = from_deployment(&object, &deployment(1, ready_status(1, 0)), &NONE, later);
    let ready = find(&third, condition::READY).expect("Ready");
    assert_eq!(ready.last_transition_time.0, later);
    let degraded = find(&third, condition::DEGRADED).expect("Degraded");
    assert_eq!(degraded.last_transition_time.0, earlier);
}

#[test]
fn the_status_publishes_the_workers_endpoint_for_client_side_balancing() {
    let status = from_deployment(
        &ld(1),
        &deployment(1, ready_status(1, 1)),
        &NONE,
        Timestamp::now(),
    );
    assert_eq!(
        status.workers_endpoint.as_deref(),
        Some("dns:///lynx-minimal-workers.serving.svc.cluster.local:50051")
    );
    assert_eq!(
        status.endpoint.as_deref(),
        Some("lynx-minimal.serving.svc.cluster.local:50051")
    );
}

#[test]
fn at_zero_the_ready_message_says_whether_a_router_wakes_the_fleet() {
    let at_zero = |object: &LynxDeployment| {
        let status = from_deployment(
            object,
            &deployment(1, ready_status(0, 0)),
            &NONE,
            Timestamp::now(),
        );
        find(&status, condition::READY)
            .expect("Ready")
            .message
            .clone()
    };
    let mut object = ld(0);
    assert!(at_zero(&object).contains("without spec.router"));
    object.spec.router = Some(RouterSpec::default());
    assert!(at_zero(&object).contains("the router holds requests"));
}

#[test]
fn an_inference_pool_the_cluster_cannot_hold_is_a_condition() {
    let status = |state| {
        derive::from_deployment(
            &ld(1),
            &deployment(1, ready_status(1, 1)),
            &NONE,
            state,
            None,
            Timestamp::now(),
        )
    };
    let not_served = status(InferencePoolState::NotServed);
    let unavailable = find(&not_served, condition::INFERENCE_POOL_UNAVAILABLE).expect("present");
    assert_eq!(
        (unavailable.status.as_str(), unavailable.reason.as_str()),
        ("True", "CrdNotServed")
    );
    assert!(find(&not_served, condition::INFERENCE_POOL_READY).is_none());
    let applied = status(InferencePoolState::Applied);
    assert_eq!(
        find(&applied, condition::INFERENCE_POOL_READY).map(|c| c.status.as_str()),
        Some("True")
    );
    assert!(find(&applied, condition::INFERENCE_POOL_UNAVAILABLE).is_none());
    let none = status(InferencePoolState::NotRequested);
    assert!(find(&none, condition::INFERENCE_POOL_READY).is_none());
    assert!(find(&none, condition::INFERENCE_POOL_UNAVAILABLE).is_none());
}
