//! Leader election between operator replicas on the real Lease API.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;

use crate::harness::{eventually, Cluster, Operator, OPERATOR_NAMESPACE};

/// The Lease's holder.
async fn holder(leases: &Api<Lease>, name: &str) -> Option<String> {
    leases
        .get_opt(name)
        .await
        .ok()
        .flatten()?
        .spec?
        .holder_identity
}

/// A standby takes over when the leader dies; a standby that never led does not claim to have
/// released the Lease; a leader that was frozen past its Lease comes back to find it taken,
/// leaves it to the new holder and exits with an error.
#[tokio::test]
async fn a_standby_takes_over_and_a_frozen_leader_gives_up() {
    let Some(cluster) = Cluster::connect().await else {
        return;
    };
    let lease = format!("lynx-operator-leader-{:x}", std::process::id());
    let leases: Api<Lease> = Api::namespaced(cluster.admin.clone(), OPERATOR_NAMESPACE);
    let seconds = 3;
    let first = Operator::start_as(&cluster, &lease, "first", seconds).await;
    eventually(
        "the first operator leads",
        Duration::from_secs(20),
        || async { (holder(&leases, &lease).await.as_deref() == Some("first")).then_some(()) },
    )
    .await;

    // A standby that stops without having led says so.
    let mut idle = Operator::start_as(&cluster, &lease, "idle", seconds).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    idle.signal("TERM");
    let status = idle
        .exited(Duration::from_secs(10))
        .await
        .expect("the standby exits");
    assert!(status.success(), "{status:?}: {}", idle.logs());
    let logs = idle.logs();
    assert!(logs.contains("waiting for the leader Lease"), "{logs}");
    assert!(!logs.contains("released the leader Lease"), "{logs}");
    assert!(logs.contains("never held it"), "{logs}");

    // The leader freezes past its Lease: the standby takes over.
    let second = Operator::start_as(&cluster, &lease, "second", seconds).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    first.signal("STOP");
    eventually(
        "the second operator leads",
        Duration::from_secs(20),
        || async { (holder(&leases, &lease).await.as_deref() == Some("second")).then_some(()) },
    )
    .await;
    // The old leader wakes up: it must not write the Lease the new one holds, and it stops.
    let mut first = first;
    first.signal("CONT");
    let status = first
        .exited(Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("the old leader keeps running: {}", first.logs()));
    assert!(
        !status.success(),
        "lost the Lease: an error exit: {}",
        first.logs()
    );
    for _ in 0..(2 * seconds) {
        assert_eq!(holder(&leases, &lease).await.as_deref(), Some("second"));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // The leader dies: the standby is gone too, so a new one takes over.
    let third = Operator::start_as(&cluster, &lease, "third", seconds).await;
    second.signal("KILL");
    eventually(
        "the third operator leads",
        Duration::from_secs(30),
        || async { (holder(&leases, &lease).await.as_deref() == Some("third")).then_some(()) },
    )
    .await;
    drop(third);
}
