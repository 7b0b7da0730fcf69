//! One reconcile per test, scripted request by request.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use kube::runtime::controller::Action;
use serde_json::{json, Value};

use super::api_server::{context, deployment_with_status, mock_client, owned_child, ApiServer};
use crate::crd::{AutoscalingEngine, LynxDeployment, LynxDeploymentStatus};
use crate::desired::tests::sample;
use crate::desired::ClusterCapabilities;
use crate::discovery;
use crate::metrics::{Metrics, Outcome};
use crate::reconcile::{error_policy, reconcile, RESYNC};
use crate::Error;

pub(super) const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/serving/deployments";
pub(super) const SERVICE: &str = "/api/v1/namespaces/serving/services";
const PDB: &str = "/apis/policy/v1/namespaces/serving/poddisruptionbudgets";
const HPA: &str = "/apis/autoscaling/v2/namespaces/serving/horizontalpodautoscalers";
const SCALED_OBJECT: &str = "/apis/keda.sh/v1alpha1/namespaces/serving/scaledobjects";
pub(super) const LYNX: &str = "/apis/serving.lynx.dev/v1alpha1/namespaces/serving/lynxdeployments";
pub(super) const JOB: &str = "/apis/batch/v1/namespaces/serving/jobs";
pub(super) const POD: &str = "/api/v1/namespaces/serving/pods";

/// What one scripted reconcile produced.
pub(super) struct Run {
    pub result: Result<Action, Error>,
    pub events: Vec<String>,
    pub metrics: Metrics,
}

/// Reconciles `ld` once on a cluster serving `caps` while `script` plays the API server; the
/// requests after the script must be Event creations.
pub(super) async fn run<F, Fut>(ld: LynxDeployment, caps: ClusterCapabilities, script: F) -> Run
where
    F: FnOnce(ApiServer) -> Fut + Send + 'static,
    Fut: Future<Output = ApiServer> + Send,
{
    let (client, server) = mock_client();
    let ctx = context(client, caps);
    let api_server = tokio::spawn(async move { script(server).await.events().await });
    let result = reconcile(Arc::new(ld), Arc::clone(&ctx)).await;
    let metrics = ctx.metrics.clone();
    drop(ctx);
    let events = match tokio::time::timeout(Duration::from_secs(10), api_server).await {
        Ok(Ok(events)) => events,
        Ok(Err(err)) => std::panic::resume_unwind(err.into_panic()),
        Err(_) => panic!("the API server script did not finish"),
    };
    Run {
        result,
        events,
        metrics,
    }
}

/// A stored object: a sample with generation 1 and no status yet.
pub(super) fn stored(name: &str) -> LynxDeployment {
    let mut ld = sample(name);
    ld.metadata.generation = Some(1);
    ld
}

fn status_of(body: &Value) -> LynxDeploymentStatus {
    serde_json::from_value(body["status"].clone()).expect("status patch body")
}

pub(super) fn condition<'a>(status: &'a LynxDeploymentStatus, type_: &str) -> (&'a str, &'a str) {
    let c = status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition"));
    (c.status.as_str(), c.reason.as_str())
}

/// After the main Service: the headless Service `<name>-workers` applied (echoed), then the
/// pruning look-up of a router Deployment, which does not exist.
pub(super) async fn expect_workers_service_and_no_router(server: &mut ApiServer, name: &str) {
    let workers = server
        .expect("PATCH", &format!("{SERVICE}/{name}-workers"))
        .await;
    workers.assert_server_side_apply();
    assert_eq!(workers.body["spec"]["clusterIP"], "None");
    workers.echo();
    server
        .expect("GET", &format!("{DEPLOYMENT}/{name}-router"))
        .await
        .not_found();
}

/// The minimal sample's tail of a reconcile: the Service applies (echoed), then the pruning
/// look-ups of the router, the PDB and the HPA, which do not exist.
pub(super) async fn expect_service_and_no_optional_children(server: &mut ApiServer, name: &str) {
    server
        .expect("PATCH", &format!("{SERVICE}/{name}"))
        .await
        .echo();
    expect_workers_service_and_no_router(server, name).await;
    server
        .expect("GET", &format!("{PDB}/{name}"))
        .await
        .not_found();
    server
        .expect("GET", &format!("{HPA}/{name}"))
        .await
        .not_found();
}

/// Echoes the server-side apply of each `kind` of child named `name`, in order.
async fn expect_applies_echoed(server: &mut ApiServer, kinds: &[&str], name: &str) {
    for kind in kinds {
        server
            .expect("PATCH", &format!("{kind}/{name}"))
            .await
            .echo();
    }
}

/// An empty list of `kind`.
pub(super) fn empty_list(api_version: &str, kind: &str) -> Value {
    json!({"apiVersion": api_version, "kind": kind, "metadata": {}, "items": []})
}

/// The model step of a reconcile without a cache: the LynxDeployment's cache Jobs listed (there
/// are none) and, for a `uri` source, its worker pods listed to read the fetchers' reports (none
/// yet).
async fn expect_model_without_cache(server: &mut ApiServer, ld: &LynxDeployment) {
    let jobs = server.expect("GET", JOB).await;
    let selector = "labelSelector=app.kubernetes.io%2Fname%3Dlynx-model-fetch";
    assert!(jobs.uri.contains(selector), "{}", jobs.uri);
    jobs.ok(&empty_list("batch/v1", "JobList"));
    if ld.spec.model.source.uri.is_some() {
        let pods = server.expect("GET", POD).await;
        assert!(
            pods.uri.contains("app.kubernetes.io%2Fname%3Dlynx-worker"),
            "{}",
            pods.uri
        );
        pods.ok(&empty_list("v1", "PodList"));
    }
}

/// Answers the status patch with the object carrying the patched status; returns that status.
pub(super) async fn expect_status(
    server: &mut ApiServer,
    ld: &LynxDeployment,
) -> LynxDeploymentStatus {
    let name = ld.metadata.name.clone().unwrap_or_default();
    let exchange = server
        .expect("PATCH", &format!("{LYNX}/{name}/status"))
        .await;
    exchange.assert_server_side_apply();
    let status = status_of(&exchange.body);
    let mut object = serde_json::to_value(ld).expect("ld");
    object["status"] = exchange.body["status"].clone();
    exchange.ok(&object);
    status
}

#[tokio::test]
async fn create_applies_owned_children_and_writes_the_status() {
    let ld = stored("minimal");
    let expected = ld.clone();
    let run = run(
        ld,
        ClusterCapabilities::default(),
        |mut server| async move {
            let deployment = server
                .expect("PATCH", &format!("{DEPLOYMENT}/lynx-minimal"))
                .await;
            deployment.assert_server_side_apply();
            let owner = &deployment.body["metadata"]["ownerReferences"][0];
            assert_eq!(owner["uid"], "uid-minimal");
            assert_eq!(owner["controller"], true);
            assert_eq!(deployment.body["spec"]["replicas"], 1);
            deployment.echo();
            let service = server
                .expect("PATCH", &format!("{SERVICE}/lynx-minimal"))
                .await;
            service.assert_server_side_apply();
            assert_eq!(
                service.body["metadata"]["ownerReferences"][0]["uid"],
                "uid-minimal"
            );
            service.echo();
            // No router, PDB or autoscaler is desired: the operator looks for stale ones to prune.
            expect_workers_service_and_no_router(&mut server, "lynx-minimal").await;
            server
                .expect("GET", &format!("{PDB}/lynx-minimal"))
                .await
                .not_found();
            server
                .expect("GET", &format!("{HPA}/lynx-minimal"))
                .await
                .not_found();
            expect_model_without_cache(&mut server, &expected).await;
            let status = expect_status(&mut server, &expected).await;
            assert_eq!(status.observed_generation, Some(1));
            assert_eq!(status.autoscaler.as_deref(), Some("none"));
            assert_eq!(
                status.endpoint.as_deref(),
                Some("lynx-minimal.serving.svc.cluster.local:50051")
            );
            assert_eq!(
                status.workers_endpoint.as_deref(),
                Some("dns:///lynx-minimal-workers.serving.svc.cluster.local:50051")
            );
            assert_eq!(condition(&status, "Ready"), ("False", "WorkersNotReady"));
            assert_eq!(condition(&status, "Progressing"), ("True", "RollingOut"));
            server
        },
    )
    .await;
    assert_eq!(run.result.expect("reconciled"), Action::requeue(RESYNC));
    assert_eq!(run.events, ["Created"]);
    assert_eq!(run.metrics.count(Outcome::Applied), 1);
}

#[tokio::test]
async fn an_image_change_patches_the_deployment() {
    let mut ld = stored("minimal");
    ld.metadata.generation = Some(2);
    ld.status = Some(LynxDeploymentStatus {
        observed_generation: Some(1),
        autoscaler: Some("none".to_owned()),
        ..LynxDeploymentStatus::default()
    });
    ld.spec.worker.image = "ghcr.io/lynx-serve/lynx-worker:0.2.0".to_owned();
    let expected = ld.clone();
    let run = run(
        ld,
        ClusterCapabilities::default(),
        |mut server| async move {
            let deployment = server
                .expect("PATCH", &format!("{DEPLOYMENT}/lynx-minimal"))
                .await;
            let container = &deployment.body["spec"]["template"]["spec"]["containers"][0];
            assert_eq!(container["image"], "ghcr.io/lynx-serve/lynx-worker:0.2.0");
            deployment.echo();
            expect_service_and_no_optional_children(&mut server, "lynx-minimal").await;
            expect_model_without_cache(&mut server, &expected).await;
            let status = expect_status(&mut server, &expected).await;
            assert_eq!(status.observed_generation, Some(2));
            server
        },
    )
    .await;
    run.result.expect("reconciled");
    assert_eq!(run.events, ["Updated"]);
}

#[tokio::test]
async fn replicas_set_through_the_scale_subresource_reach_the_deployment_and_the_status() {
    // `kubectl scale lynx/lynx-minimal --replicas=3` (or KEDA / the HPA) writes spec.replicas
    // through /scale; the operator copies it to the Deployment and reports status.replicas and
    // status.selector, which the scale subresource reads back.
    let mut ld = stored("minimal");
    ld.spec.replicas = 3;
    let expected = ld.clone();
    let run = run(
        ld,
        ClusterCapabilities::default(),
        |mut server| async move {
            let deployment = server
                .expect("PATCH", &format!("{DEPLOYMENT}/lynx-minimal"))
                .await;
            assert_eq!(deployment.body["spec"]["replicas"], 3);
            let body = deployment_with_status(&deployment.body, 3, 3);
            deployment.ok(&body);
            expect_service_and_no_optional_children(&mut server, "lynx-minimal").await;
            expect_model_without_cache(&mut server, &expected).await;
            let status = expect_status(&mut server, &expected).await;
            assert_eq!((status.replicas, status.ready_replicas), (3, 3));
            assert_eq!(
                status.selector.as_deref(),
                Some("app.kubernetes.io/instance=lynx-minimal,app.kubernetes.io/name=lynx-worker")
            );
            assert_eq!(condition(&status, "Ready"), ("True", "WorkersReady"));
            assert_eq!(condition(&status, "ModelLoaded"), ("True", "WorkerReady"));
            server
        },
    )
    .await;
    run.result.expect("reconciled");
    assert_eq!(run.events, ["Created", "Ready"]);
}

/// The full sample with `engine`, stored as reconciled before with an HPA.
fn full_with_engine(engine: AutoscalingEngine) -> LynxDeployment {
    let mut ld = stored("full");
    if let Some(autoscaling) = ld.spec.autoscaling.as_mut() {
        autoscaling.engine = engine;
    }
    ld.status = Some(LynxDeploymentStatus {
        observed_generation: Some(1),
        autoscaler: Some("hpa".to_owned()),
        ..LynxDeploymentStatus::default()
    });
    ld
}

const CUSTOM_METRICS: ClusterCapabilities = ClusterCapabilities {
    keda: false,
    custom_metrics: true,
    external_metrics: false,
    prometheus_operator: false,
    inference_pool: false,
};

#[tokio::test]
async fn switching_the_engine_from_hpa_to_none_prunes_the_hpa() {
    let ld = full_with_engine(AutoscalingEngine::None);
    let expected = ld.clone();
    let run = run(ld, CUSTOM_METRICS, |mut server| async move {
        expect_applies_echoed(&mut server, &[DEPLOYMENT, SERVICE], "lynx-full").await;
        expect_workers_service_and_no_router(&mut server, "lynx-full").await;
        let pdb = server.expect("PATCH", &format!("{PDB}/lynx-full")).await;
        pdb.assert_server_side_apply();
        pdb.echo();
        let hpa = owned_child(&expected, "autoscaling/v2", "HorizontalPodAutoscaler");
        server
            .expect("GET", &format!("{HPA}/lynx-full"))
            .await
            .ok(&hpa);
        let delete = server.expect("DELETE", &format!("{HPA}/lynx-full")).await;
        assert_eq!(delete.body["preconditions"]["uid"], "child-uid");
        delete.ok(&hpa);
        expect_model_without_cache(&mut server, &expected).await;
        let status = expect_status(&mut server, &expected).await;
        assert_eq!(status.autoscaler.as_deref(), Some("none"));
        assert!(status
            .conditions
            .iter()
            .all(|c| !c.type_.starts_with("Autoscaling")));
        server
    })
    .await;
    run.result.expect("reconciled");
    assert_eq!(run.events, ["AutoscalerSelected", "Pruned"]);
}

#[tokio::test]
async fn an_hpa_of_the_same_name_not_controlled_by_the_lynx_deployment_is_left_alone() {
    let ld = full_with_engine(AutoscalingEngine::None);
    let expected = ld.clone();
    let run = run(ld, CUSTOM_METRICS, |mut server| async move {
        expect_applies_echoed(&mut server, &[DEPLOYMENT, SERVICE], "lynx-full").await;
        expect_workers_service_and_no_router(&mut server, "lynx-full").await;
        expect_applies_echoed(&mut server, &[PDB], "lynx-full").await;
        let mut foreign = owned_child(&expected, "autoscaling/v2", "HorizontalPodAutoscaler");
        foreign["metadata"]["ownerReferences"][0]["uid"] = json!("someone-else");
        server
            .expect("GET", &format!("{HPA}/lynx-full"))
            .await
            .ok(&foreign);
        // No DELETE: the next requests are the model's and the status.
        expect_model_without_cache(&mut server, &expected).await;
        expect_status(&mut server, &expected).await;
        server
    })
    .await;
    run.result.expect("reconciled");
    assert_eq!(run.events, ["AutoscalerSelected"]);
}

#[tokio::test]
async fn keda_found_by_discovery_gets_a_scaled_object() {
    let (client, mut server) = mock_client();
    let discovered = tokio::spawn(async move { discovery::discover(&client).await });
    let groups = discovery::tests::groups(&[("apps", "v1"), ("keda.sh", "v1alpha1")]);
    server
        .expect("GET", "/apis")
        .await
        .ok(&serde_json::to_value(groups).expect("groups"));
    let caps = discovered.await.expect("join").expect("discovery");
    assert!(caps.keda);

    let ld = stored("full");
    let expected = ld.clone();
    let run = run(ld, caps, |mut server| async move {
        expect_applies_echoed(&mut server, &[DEPLOYMENT, SERVICE], "lynx-full").await;
        expect_workers_service_and_no_router(&mut server, "lynx-full").await;
        expect_applies_echoed(&mut server, &[PDB], "lynx-full").await;
        server
            .expect("GET", &format!("{HPA}/lynx-full"))
            .await
            .not_found();
        let scaled = server
            .expect("PATCH", &format!("{SCALED_OBJECT}/lynx-full"))
            .await;
        scaled.assert_server_side_apply();
        assert_eq!(scaled.body["kind"], "ScaledObject");
        assert_eq!(
            scaled.body["spec"]["scaleTargetRef"]["kind"],
            "LynxDeployment"
        );
        assert_eq!(
            scaled.body["metadata"]["ownerReferences"][0]["uid"],
            "uid-full"
        );
        scaled.echo();
        expect_model_without_cache(&mut server, &expected).await;
        let status = expect_status(&mut server, &expected).await;
        assert_eq!(status.autoscaler.as_deref(), Some("keda"));
        assert_eq!(
            condition(&status, "AutoscalingReady"),
            ("True", "KedaAvailable")
        );
        server
    })
    .await;
    run.result.expect("reconciled");
    assert_eq!(run.events, ["Created", "AutoscalerSelected"]);
}

#[tokio::test]
async fn a_stuck_rollout_marks_the_lynx_deployment_degraded() {
    let ld = stored("minimal");
    let expected = ld.clone();
    let run = run(
        ld,
        ClusterCapabilities::default(),
        |mut server| async move {
            let deployment = server
                .expect("PATCH", &format!("{DEPLOYMENT}/lynx-minimal"))
                .await;
            let mut body = deployment_with_status(&deployment.body, 1, 0);
            body["status"]["conditions"] = json!([{
                "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                "message": "ReplicaSet has timed out progressing.",
            }]);
            deployment.ok(&body);
            expect_service_and_no_optional_children(&mut server, "lynx-minimal").await;
            expect_model_without_cache(&mut server, &expected).await;
            let status = expect_status(&mut server, &expected).await;
            assert_eq!(
                condition(&status, "Degraded"),
                ("True", "ProgressDeadlineExceeded")
            );
            assert_eq!(condition(&status, "Ready"), ("False", "WorkersNotReady"));
            assert_eq!(
                condition(&status, "ModelLoaded"),
                ("False", "NoWorkerReady")
            );
            server
        },
    )
    .await;
    run.result.expect("reconciled");
    assert_eq!(run.events, ["Created", "Degraded"]);
}

#[tokio::test]
async fn an_api_error_fails_the_reconcile_and_retries_with_growing_backoff() {
    let ld = stored("minimal");
    let (client, mut server) = mock_client();
    let ctx = context(client, ClusterCapabilities::default());
    let ld = Arc::new(ld);
    for expected_delay in [5, 10] {
        let script = tokio::spawn(async move {
            server
                .expect("PATCH", &format!("{DEPLOYMENT}/lynx-minimal"))
                .await
                .fail(StatusCode::INTERNAL_SERVER_ERROR, "InternalError");
            // A failed child holds back no other.
            expect_service_and_no_optional_children(&mut server, "lynx-minimal").await;
            // The operator tries to say why in the status (the API server fails that too).
            let status = server
                .expect("PATCH", &format!("{LYNX}/lynx-minimal/status"))
                .await;
            let written = status_of(&status.body);
            assert_eq!(condition(&written, "Degraded"), ("True", "ApplyFailed"));
            assert_eq!(condition(&written, "Ready"), ("False", "ApplyFailed"));
            status.fail(StatusCode::INTERNAL_SERVER_ERROR, "InternalError");
            server
        });
        let error = reconcile(Arc::clone(&ld), Arc::clone(&ctx))
            .await
            .expect_err("the apply failed");
        server = script.await.expect("script");
        assert_eq!(error.metric_label(), "api_error");
        let action = error_policy(Arc::clone(&ld), &error, Arc::clone(&ctx));
        assert_eq!(action, Action::requeue(Duration::from_secs(expected_delay)));
    }
    assert_eq!(ctx.metrics.count(Outcome::Failed("api_error")), 2);
}

#[tokio::test]
async fn an_invalid_spec_writes_only_the_status_and_waits_for_a_change() {
    let mut ld = stored("full");
    if let Some(autoscaling) = ld.spec.autoscaling.as_mut() {
        autoscaling.min_replicas = 9;
    }
    let expected = ld.clone();
    let run = run(
        ld,
        ClusterCapabilities::default(),
        |mut server| async move {
            let status = expect_status(&mut server, &expected).await;
            let (value, reason) = condition(&status, "Degraded");
            assert_eq!((value, reason), ("True", "InvalidSpec"));
            let message = &status
                .conditions
                .iter()
                .find(|c| c.type_ == "Degraded")
                .expect("Degraded")
                .message;
            assert!(
                message.contains("minReplicas must not exceed maxReplicas"),
                "{message}"
            );
            server
        },
    )
    .await;
    assert_eq!(run.result.expect("reconciled"), Action::await_change());
    assert_eq!(run.events, ["Degraded"]);
    assert_eq!(run.metrics.count(Outcome::InvalidSpec), 1);
}

/// During a foreground deletion the garbage collector removes the children; the operator must
/// not apply them again (it did: the Service was re-created until the deletion gave up).
#[tokio::test]
async fn an_object_being_deleted_gets_no_request() {
    let mut ld = stored("minimal");
    ld.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    let run = run(ld, ClusterCapabilities::default(), |server| async move {
        server
    })
    .await;
    assert_eq!(run.result.expect("no error"), Action::await_change());
    assert!(run.events.is_empty());
    assert_eq!(run.metrics.count(Outcome::Deleting), 1);
}
