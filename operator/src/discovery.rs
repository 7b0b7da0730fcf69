//! Run-time discovery of the optional APIs that decide the autoscaler and the PodMonitor.
//!
//! The operator asks `/apis` at start and then periodically, so KEDA or the Prometheus operator
//! installed after the operator are picked up (every LynxDeployment is then reconciled again).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIGroupList;
use kube::Client;

use crate::desired::ClusterCapabilities;

/// KEDA's API group (`ScaledObject`).
pub const KEDA_GROUP: &str = "keda.sh";
/// The version of KEDA's API the operator writes.
pub const KEDA_VERSION: &str = "v1alpha1";
/// The custom metrics API (prometheus-adapter serves it).
pub const CUSTOM_METRICS_GROUP: &str = "custom.metrics.k8s.io";
/// The external metrics API (prometheus-adapter or KEDA's metrics server serve it).
pub const EXTERNAL_METRICS_GROUP: &str = "external.metrics.k8s.io";
/// The Prometheus operator's API group (`PodMonitor`, `ServiceMonitor`).
pub const MONITORING_GROUP: &str = "monitoring.coreos.com";
/// The version of the Prometheus operator's API the operator writes.
pub const MONITORING_VERSION: &str = "v1";
/// The Gateway API inference extension's group (`InferencePool`).
pub const INFERENCE_GROUP: &str = "inference.networking.k8s.io";
/// The version of the inference extension's API the operator writes.
pub const INFERENCE_VERSION: &str = "v1";

/// The capabilities a list of served API groups gives.
///
/// # Guarantees
/// A capability is `true` only when its group serves the version the operator writes
/// (`keda.sh/v1alpha1`, `monitoring.coreos.com/v1`, `inference.networking.k8s.io/v1`; any
/// version of the metrics APIs).
pub fn capabilities(groups: &APIGroupList) -> ClusterCapabilities {
    let serves = |group: &str, version: Option<&str>| {
        groups.groups.iter().any(|g| {
            g.name == group
                && version.is_none_or(|version| g.versions.iter().any(|v| v.version == version))
        })
    };
    ClusterCapabilities {
        keda: serves(KEDA_GROUP, Some(KEDA_VERSION)),
        custom_metrics: serves(CUSTOM_METRICS_GROUP, None),
        external_metrics: serves(EXTERNAL_METRICS_GROUP, None),
        prometheus_operator: serves(MONITORING_GROUP, Some(MONITORING_VERSION)),
        inference_pool: serves(INFERENCE_GROUP, Some(INFERENCE_VERSION)),
    }
}

/// Asks the API server which groups it serves (`GET /apis`) and derives the capabilities.
///
/// # Errors
/// The API error when `/apis` cannot be read.
pub async fn discover(client: &Client) -> Result<ClusterCapabilities, kube::Error> {
    Ok(capabilities(&client.list_api_groups().await?))
}

#[cfg(test)]
pub(crate) mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{APIGroup, GroupVersionForDiscovery};

    use super::*;

    pub(crate) fn groups(served: &[(&str, &str)]) -> APIGroupList {
        APIGroupList {
            groups: served
                .iter()
                .map(|(name, version)| APIGroup {
                    name: (*name).to_owned(),
                    versions: vec![GroupVersionForDiscovery {
                        group_version: format!("{name}/{version}"),
                        version: (*version).to_owned(),
                    }],
                    ..APIGroup::default()
                })
                .collect(),
        }
    }

    #[test]
    fn a_bare_cluster_has_no_optional_capability() {
        let caps = capabilities(&groups(&[("apps", "v1"), ("autoscaling", "v2")]));
        assert_eq!(caps, ClusterCapabilities::default());
    }

    #[test]
    fn each_group_turns_on_its_capability() {
        let caps = capabilities(&groups(&[
            ("keda.sh", "v1alpha1"),
            ("custom.metrics.k8s.io", "v1beta2"),
            ("external.metrics.k8s.io", "v1beta1"),
            ("monitoring.coreos.com", "v1"),
            ("inference.networking.k8s.io", "v1"),
        ]));
        assert_eq!(
            caps,
            ClusterCapabilities {
                keda: true,
                custom_metrics: true,
                external_metrics: true,
                prometheus_operator: true,
                inference_pool: true,
            }
        );
    }

    #[test]
    fn a_group_without_the_written_version_does_not_count() {
        let caps = capabilities(&groups(&[
            ("keda.sh", "v2"),
            ("monitoring.coreos.com", "v1alpha1"),
            ("inference.networking.x-k8s.io", "v1alpha2"),
            ("inference.networking.k8s.io", "v1alpha2"),
        ]));
        assert!(!caps.keda);
        assert!(!caps.prometheus_operator);
        assert!(!caps.inference_pool);
    }
}
