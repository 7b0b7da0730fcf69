//! Kubernetes Events for the significant changes of one reconcile: a pure function from the
//! status before and after (plus the pruned children) to the events to publish.

use kube::runtime::events::{Event, EventType};

use super::model_ready::FETCHING;
use super::status::{find, is_true};
use crate::crd::{condition, LynxDeploymentStatus};

/// A child kind and name that was deleted because it is no longer desired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pruned {
    /// Kind of the child, e.g. `HorizontalPodAutoscaler`.
    pub kind: String,
    /// Its name.
    pub name: String,
}

/// The events worth telling a user about `previous` -> `next`.
///
/// # Guarantees
/// One event per change, none when nothing significant changed, so repeated reconciles of an
/// unchanged object publish nothing: the first reconcile that applied children (`Created`; with
/// `applied` false, for an invalid spec, nothing was created), a new generation applied
/// (`Updated`), a different autoscaler (`AutoscalerSelected`), autoscaling becoming unavailable
/// (Warning `AutoscalingUnavailable`), the InferencePool API missing (Warning
/// `InferencePoolUnavailable`), the model fetched (`ModelFetched`, when ModelReady turns True),
/// a failed or impossible fetch (Warning with ModelReady's reason, e.g. `NotFound`,
/// `CredentialsMissing`, when ModelReady turns False with a reason other than `Fetching`, or
/// changes reason), Ready turning True (`Ready`), Degraded turning True (Warning `Degraded`),
/// and each pruned child (`Pruned`).
pub fn significant_changes(
    previous: Option<&LynxDeploymentStatus>,
    next: &LynxDeploymentStatus,
    applied: bool,
    pruned: &[Pruned],
) -> Vec<Event> {
    let mut events = Vec::new();
    let normal = |reason: &str, note: String| event(EventType::Normal, reason, note);
    let warning = |reason: &str, note: String| event(EventType::Warning, reason, note);
    match previous.and_then(|p| p.observed_generation) {
        None if applied => events.push(normal(
            "Created",
            "created the worker Deployment and Service".to_owned(),
        )),
        Some(generation) if Some(generation) != next.observed_generation => events.push(normal(
            "Updated",
            format!(
                "applied generation {}",
                next.observed_generation.unwrap_or_default()
            ),
        )),
        _ => {}
    }
    let autoscaler = next.autoscaler.as_deref().unwrap_or("none");
    let previous_autoscaler = previous.and_then(|p| p.autoscaler.as_deref());
    // A new object without autoscaling says nothing worth an event about its autoscaler.
    let first_without = previous_autoscaler.is_none() && autoscaler == "none";
    if previous_autoscaler != Some(autoscaler) && !first_without {
        let reason = find(next, condition::AUTOSCALING_READY)
            .map(|c| format!(" ({})", c.reason))
            .unwrap_or_default();
        events.push(normal(
            "AutoscalerSelected",
            format!("autoscaler: {autoscaler}{reason}"),
        ));
    }
    let became = |type_: &str| is_true(next, type_) && !previous.is_some_and(|p| is_true(p, type_));
    if became(condition::AUTOSCALING_UNAVAILABLE) {
        let reason = find(next, condition::AUTOSCALING_UNAVAILABLE)
            .map(|c| c.reason.clone())
            .unwrap_or_default();
        events.push(warning(
            "AutoscalingUnavailable",
            format!("no autoscaler can be created: {reason}"),
        ));
    }
    if became(condition::INFERENCE_POOL_UNAVAILABLE) {
        let message = find(next, condition::INFERENCE_POOL_UNAVAILABLE)
            .map(|c| c.message.clone())
            .unwrap_or_default();
        events.push(warning("InferencePoolUnavailable", message));
    }
    if let Some(model) = find(next, condition::MODEL_READY) {
        let before = previous.and_then(|p| find(p, condition::MODEL_READY));
        let changed = before.is_none_or(|b| b.status != model.status || b.reason != model.reason);
        if changed && model.status == "True" {
            events.push(normal("ModelFetched", model.message.clone()));
        } else if changed && model.reason != FETCHING {
            events.push(warning(&model.reason, model.message.clone()));
        }
    }
    if became(condition::READY) {
        events.push(normal(
            "Ready",
            format!("{} workers ready", next.ready_replicas),
        ));
    }
    if became(condition::DEGRADED) {
        let message = find(next, condition::DEGRADED)
            .map(|c| format!("{}: {}", c.reason, c.message))
            .unwrap_or_default();
        events.push(warning("Degraded", message));
    }
    for child in pruned {
        events.push(normal(
            "Pruned",
            format!("deleted {} {}: no longer desired", child.kind, child.name),
        ));
    }
    events
}

fn event(type_: EventType, reason: &str, note: String) -> Event {
    Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: "Reconcile".to_owned(),
        secondary: None,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn status(generation: i64, autoscaler: &str, ready: bool) -> LynxDeploymentStatus {
        LynxDeploymentStatus {
            observed_generation: Some(generation),
            autoscaler: Some(autoscaler.to_owned()),
            ready_replicas: i32::from(ready),
            conditions: vec![Condition {
                type_: condition::READY.to_owned(),
                status: if ready { "True" } else { "False" }.to_owned(),
                reason: "WorkersReady".to_owned(),
                message: String::new(),
                observed_generation: Some(generation),
                last_transition_time: Time(Timestamp::UNIX_EPOCH),
            }],
            ..LynxDeploymentStatus::default()
        }
    }

    fn reasons(events: &[Event]) -> Vec<&str> {
        events.iter().map(|e| e.reason.as_str()).collect()
    }

    #[test]
    fn an_unchanged_status_publishes_nothing() {
        let current = status(3, "keda", true);
        assert!(significant_changes(Some(&current), &current, true, &[]).is_empty());
    }

    #[test]
    fn each_significant_change_has_one_event() {
        let before = status(3, "none", false);
        let after = status(4, "keda", true);
        let pruned = [Pruned {
            kind: "HorizontalPodAutoscaler".to_owned(),
            name: "x".to_owned(),
        }];
        let events = significant_changes(Some(&before), &after, true, &pruned);
        assert_eq!(
            reasons(&events),
            ["Updated", "AutoscalerSelected", "Ready", "Pruned"]
        );
    }

    fn with_model(
        mut status: LynxDeploymentStatus,
        value: &str,
        reason: &str,
    ) -> LynxDeploymentStatus {
        status.conditions.push(Condition {
            type_: condition::MODEL_READY.to_owned(),
            status: value.to_owned(),
            reason: reason.to_owned(),
            message: format!("{reason} message"),
            observed_generation: Some(3),
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
        });
        status
    }

    #[test]
    fn a_failed_fetch_warns_with_its_reason_once_and_a_fetched_model_is_told() {
        let base = status(3, "none", false);
        let fetching = with_model(base.clone(), "False", "Fetching");
        let missing = with_model(base.clone(), "False", "NotFound");
        let fetched = with_model(base.clone(), "True", "Fetched");
        assert!(significant_changes(Some(&base), &fetching, true, &[]).is_empty());
        let events = significant_changes(Some(&fetching), &missing, true, &[]);
        assert_eq!(reasons(&events), ["NotFound"]);
        assert_eq!(events[0].type_, EventType::Warning);
        assert_eq!(events[0].note.as_deref(), Some("NotFound message"));
        assert!(significant_changes(Some(&missing), &missing, true, &[]).is_empty());
        let denied = with_model(base.clone(), "False", "AccessDenied");
        assert_eq!(
            reasons(&significant_changes(Some(&missing), &denied, true, &[])),
            ["AccessDenied"]
        );
        let events = significant_changes(Some(&fetching), &fetched, true, &[]);
        assert_eq!(reasons(&events), ["ModelFetched"]);
        assert_eq!(events[0].type_, EventType::Normal);
        assert!(significant_changes(Some(&fetched), &fetched, true, &[]).is_empty());
    }

    #[test]
    fn an_inference_pool_api_that_is_not_served_warns_once() {
        let before = status(3, "none", true);
        let mut after = before.clone();
        after.conditions.push(Condition {
            type_: condition::INFERENCE_POOL_UNAVAILABLE.to_owned(),
            status: "True".to_owned(),
            reason: "CrdNotServed".to_owned(),
            message: "not served".to_owned(),
            observed_generation: Some(3),
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
        });
        let events = significant_changes(Some(&before), &after, true, &[]);
        assert_eq!(reasons(&events), ["InferencePoolUnavailable"]);
        assert_eq!(events[0].type_, EventType::Warning);
        assert!(significant_changes(Some(&after), &after, true, &[]).is_empty());
    }
}
