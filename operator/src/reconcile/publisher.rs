//! Publishing the events of [`super::events::significant_changes`] as `events.k8s.io/v1`
//! Events: one new object per event. The operator publishes only on a change, so there is
//! nothing to aggregate; an event series would keep its first note ("applied generation 2
//! (x5)" when 6 was applied), a new object always carries its own.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::runtime::events::{Event, EventType, Reporter};
use kube::{Api, Client};

/// Creates Events about the objects the operator reconciles.
#[derive(Clone)]
pub struct Publisher {
    client: Client,
    reporter: Reporter,
}

impl Publisher {
    /// Publishes as `reporter` (the controller and this replica).
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Self { client, reporter }
    }

    /// Creates `event` about `regarding`, in its namespace.
    ///
    /// # Errors
    /// The API server's refusal.
    pub async fn publish(
        &self,
        event: &Event,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let namespace = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let object = to_k8s(event, regarding, &self.reporter, Timestamp::now());
        Api::<K8sEvent>::namespaced(self.client.clone(), &namespace)
            .create(&PostParams::default(), &object)
            .await
            .map(drop)
    }
}

/// The Event object of `event` about `regarding` at `now`, named `<regarding>.<nanoseconds>`.
fn to_k8s(
    event: &Event,
    regarding: &ObjectReference,
    reporter: &Reporter,
    now: Timestamp,
) -> K8sEvent {
    let base = regarding.name.as_deref().unwrap_or(&reporter.controller);
    K8sEvent {
        action: Some(event.action.clone()),
        reason: Some(event.reason.clone()),
        note: event.note.clone(),
        type_: Some(
            match event.type_ {
                EventType::Normal => "Normal",
                EventType::Warning => "Warning",
            }
            .to_owned(),
        ),
        event_time: Some(MicroTime(now)),
        regarding: Some(regarding.clone()),
        related: event.secondary.clone(),
        reporting_controller: Some(reporter.controller.clone()),
        reporting_instance: Some(
            reporter
                .instance
                .clone()
                .unwrap_or_else(|| reporter.controller.clone()),
        ),
        metadata: ObjectMeta {
            name: Some(format!("{base}.{:x}", now.as_nanosecond())),
            namespace: regarding.namespace.clone(),
            ..ObjectMeta::default()
        },
        ..K8sEvent::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_event_is_its_own_object_with_its_own_note() {
        let reporter = Reporter {
            controller: "lynx-operator".to_owned(),
            instance: Some("pod-1".to_owned()),
        };
        let regarding = ObjectReference {
            name: Some("lynx-7b".to_owned()),
            namespace: Some("serving".to_owned()),
            ..ObjectReference::default()
        };
        let updated = |generation: i64| Event {
            type_: EventType::Normal,
            reason: "Updated".to_owned(),
            note: Some(format!("applied generation {generation}")),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        let t0 = Timestamp::UNIX_EPOCH;
        let t1 = t0 + std::time::Duration::from_nanos(1);
        let first = to_k8s(&updated(2), &regarding, &reporter, t0);
        let second = to_k8s(&updated(6), &regarding, &reporter, t1);
        assert_ne!(first.metadata.name, second.metadata.name);
        assert_eq!(second.note.as_deref(), Some("applied generation 6"));
        assert_eq!(second.series, None);
        assert_eq!(second.reporting_instance.as_deref(), Some("pod-1"));
        assert_eq!(second.metadata.namespace.as_deref(), Some("serving"));
    }
}
