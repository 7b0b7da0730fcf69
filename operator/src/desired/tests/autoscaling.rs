//! Autoscaling decisions and the KEDA / HPA objects.

use super::super::*;
use super::{desired_ok, sample, ALL, NONE};
use crate::crd::{AutoscalingEngine, AutoscalingMetric};

fn with_autoscaling(engine: AutoscalingEngine, metric: AutoscalingMetric) -> LynxDeployment {
    let mut ld = sample("full");
    if let Some(autoscaling) = ld.spec.autoscaling.as_mut() {
        autoscaling.engine = engine;
        autoscaling.metric = metric;
        if metric == AutoscalingMetric::Custom {
            autoscaling.query = Some("sum(rate(lynx_requests_total[1m]))".to_owned());
        }
        autoscaling.target_value = None;
    }
    ld
}

#[test]
fn autoscaler_choice_covers_every_engine_and_cluster() {
    use AutoscalerKind as K;
    use AutoscalerReason as R;
    use AutoscalingEngine as E;
    use AutoscalingMetric as M;
    let keda = ClusterCapabilities { keda: true, ..NONE };
    let custom = ClusterCapabilities {
        custom_metrics: true,
        ..NONE
    };
    let external = ClusterCapabilities {
        external_metrics: true,
        ..NONE
    };
    let cases = [
        (E::Auto, M::QueueLength, ALL, K::Keda, R::KedaAvailable),
        (
            E::Auto,
            M::QueueLength,
            custom,
            K::HpaPods,
            R::CustomMetricsApi,
        ),
        (
            E::Auto,
            M::Running,
            external,
            K::HpaExternal,
            R::ExternalMetricsApi,
        ),
        (E::Auto, M::KvCacheUsage, NONE, K::None, R::NoMetricsApi),
        (
            E::Auto,
            M::Custom,
            custom,
            K::None,
            R::CustomMetricRequiresKeda,
        ),
        (E::Auto, M::Custom, keda, K::Keda, R::KedaAvailable),
        (E::Keda, M::QueueLength, keda, K::Keda, R::KedaAvailable),
        (
            E::Keda,
            M::QueueLength,
            custom,
            K::None,
            R::KedaNotInstalled,
        ),
        (E::Hpa, M::QueueLength, ALL, K::HpaPods, R::CustomMetricsApi),
        (
            E::Hpa,
            M::QueueLength,
            external,
            K::HpaExternal,
            R::ExternalMetricsApi,
        ),
        (
            E::Hpa,
            M::QueueLength,
            keda,
            K::None,
            R::MetricsApiNotServed,
        ),
        (E::Hpa, M::Custom, ALL, K::None, R::CustomMetricRequiresKeda),
        (E::None, M::QueueLength, ALL, K::None, R::Disabled),
    ];
    for (engine, metric, caps, kind, reason) in cases {
        let desired = desired(&with_autoscaling(engine, metric), &caps).expect("valid");
        let case = format!("{engine:?} {metric:?} {caps:?}");
        assert_eq!(
            desired.autoscaler,
            AutoscalerChoice { kind, reason },
            "{case}"
        );
        assert_eq!(desired.scaled_object.is_some(), kind == K::Keda, "{case}");
        assert_eq!(
            desired.hpa.is_some(),
            matches!(kind, K::HpaPods | K::HpaExternal),
            "{case}"
        );
        assert_eq!(
            desired.autoscaler.unavailable(),
            kind == K::None && engine != E::None,
            "{case}"
        );
    }
    let fixed = desired_ok(&sample("minimal")).autoscaler;
    assert_eq!(
        fixed,
        AutoscalerChoice {
            kind: K::None,
            reason: R::NotConfigured
        }
    );
    assert!(!fixed.unavailable());
}

#[test]
fn keda_scales_the_lynx_deployment_on_the_metric_query() {
    let object = desired(&sample("full"), &ALL)
        .expect("valid")
        .scaled_object
        .expect("scaled object");
    let spec = &object["spec"];
    assert_eq!(
        spec["scaleTargetRef"]["apiVersion"],
        "serving.lynx.dev/v1alpha1"
    );
    assert_eq!(spec["scaleTargetRef"]["kind"], "LynxDeployment");
    assert_eq!(spec["scaleTargetRef"]["name"], "lynx-full");
    assert_eq!(
        (
            spec["minReplicaCount"].as_i64(),
            spec["maxReplicaCount"].as_i64()
        ),
        (Some(1), Some(8))
    );
    let trigger = &spec["triggers"][0];
    assert_eq!(trigger["type"], "prometheus");
    assert_eq!(
        trigger["metadata"]["query"],
        "sum(lynx_queue_length{namespace=\"serving\",app_kubernetes_io_instance=\"lynx-full\"})"
    );
    assert_eq!(trigger["metadata"]["threshold"], "4");
    let behavior = &spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"];
    assert_eq!(behavior["scaleDown"]["stabilizationWindowSeconds"], 600);
    for (metric, gauge) in [
        (AutoscalingMetric::Running, "lynx_running_sequences"),
        (AutoscalingMetric::KvCacheUsage, "lynx_kv_cache_usage"),
    ] {
        let object =
            desired(&with_autoscaling(AutoscalingEngine::Auto, metric), &ALL).expect("valid");
        let query = object.scaled_object.expect("scaled object")["spec"]["triggers"][0]["metadata"]
            ["query"]
            .clone();
        assert!(
            query
                .as_str()
                .is_some_and(|q| q.starts_with(&format!("sum({gauge}{{"))),
            "{query}"
        );
    }
    let custom = desired(
        &with_autoscaling(AutoscalingEngine::Auto, AutoscalingMetric::Custom),
        &ALL,
    )
    .expect("valid");
    let trigger = custom.scaled_object.expect("scaled object")["spec"]["triggers"][0].clone();
    assert_eq!(
        trigger["metadata"]["query"],
        "sum(rate(lynx_requests_total[1m]))"
    );
    assert_eq!(trigger["metadata"]["threshold"], "1");
}

#[test]
fn hpa_targets_the_scale_subresource_with_pods_or_external_metrics() {
    let pods = desired(
        &sample("full"),
        &ClusterCapabilities {
            custom_metrics: true,
            ..NONE
        },
    )
    .expect("valid");
    let spec = pods.hpa.expect("hpa").spec;
    assert_eq!(spec.scale_target_ref.kind, "LynxDeployment");
    assert_eq!(
        spec.scale_target_ref.api_version.as_deref(),
        Some("serving.lynx.dev/v1alpha1")
    );
    assert_eq!((spec.min_replicas, spec.max_replicas), (Some(1), 8));
    let metric = &spec.metrics.expect("metrics")[0];
    assert_eq!(metric.type_, "Pods");
    let pods_metric = metric.pods.clone().expect("pods metric");
    assert_eq!(pods_metric.metric.name, "lynx_queue_length");
    assert_eq!(
        pods_metric.target.average_value.map(|q| q.0),
        Some("4".to_owned())
    );
    let scale_down = spec
        .behavior
        .and_then(|b| b.scale_down)
        .and_then(|s| s.stabilization_window_seconds);
    assert_eq!(scale_down, Some(600));

    let mut ld = with_autoscaling(AutoscalingEngine::Hpa, AutoscalingMetric::KvCacheUsage);
    if let Some(autoscaling) = ld.spec.autoscaling.as_mut() {
        autoscaling.min_replicas = 0;
    }
    let external = desired(
        &ld,
        &ClusterCapabilities {
            external_metrics: true,
            ..NONE
        },
    )
    .expect("valid");
    let spec = external.hpa.expect("hpa").spec;
    assert_eq!(spec.min_replicas, Some(1), "an HPA cannot scale to zero");
    let metric = spec.metrics.expect("metrics")[0]
        .external
        .clone()
        .expect("external metric");
    assert_eq!(metric.metric.name, "lynx_kv_cache_usage");
    let selector = metric
        .metric
        .selector
        .and_then(|s| s.match_labels)
        .expect("selector");
    assert_eq!(selector["app_kubernetes_io_instance"], "lynx-full");
    assert_eq!(
        metric.target.average_value.map(|q| q.0),
        Some("0.8".to_owned())
    );
}
