//! The model step of a reconcile with a cache, scripted request by request: the credentials
//! Secret looked up, the cache Job applied, a stale one pruned, the fetcher's report read.

use std::time::Duration;

use kube::runtime::controller::Action;
use serde_json::json;

use super::api_server::{deployment_with_status, owned_child, ApiServer};
use super::scenarios::{
    condition, empty_list, expect_service_and_no_optional_children, expect_status, run, stored,
    DEPLOYMENT, JOB, POD,
};
use crate::crd::LynxDeployment;
use crate::desired::ClusterCapabilities;
use crate::reconcile::MODEL_RECHECK;

const SECRET: &str = "/api/v1/namespaces/serving/secrets/lynx-s3-credentials";
const DIGEST: &str = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

/// The worker Deployment and the Services of the s3-cache sample, applied.
async fn expect_workers(server: &mut ApiServer) {
    let deployment = server
        .expect("PATCH", &format!("{DEPLOYMENT}/lynx-s3"))
        .await;
    let body = deployment_with_status(&deployment.body, 2, 0);
    deployment.ok(&body);
    expect_service_and_no_optional_children(server, "lynx-s3").await;
}

#[tokio::test]
async fn a_completed_cache_job_makes_the_model_ready_and_a_stale_job_is_pruned() {
    let ld = stored("s3-cache");
    let expected = ld.clone();
    let caps = ClusterCapabilities::default();
    let desired_job = crate::desired::desired(&ld, &caps)
        .expect("valid")
        .model_job
        .expect("a cache Job");
    let name = desired_job.metadata.name.clone().expect("name");
    let run = run(ld, caps, |mut server| async move {
        expect_workers(&mut server).await;
        server.expect("GET", SECRET).await.ok(
            &json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                        "metadata": {"name": "lynx-s3-credentials", "namespace": "serving"}}),
        );
        let apply = server.expect("PATCH", &format!("{JOB}/{name}")).await;
        apply.assert_server_side_apply();
        let mut job = apply.body.clone();
        job["status"] = json!({"succeeded": 1, "conditions": [
            {"type": "Complete", "status": "True"}
        ]});
        apply.ok(&job);
        let mut stale = owned_child(&expected, "batch/v1", "Job");
        stale["metadata"]["name"] = json!("lynx-s3-model-00000000");
        let mut list = empty_list("batch/v1", "JobList");
        list["items"] = json!([job, stale]);
        server.expect("GET", JOB).await.ok(&list);
        let delete = server
            .expect("DELETE", &format!("{JOB}/lynx-s3-model-00000000"))
            .await;
        assert_eq!(delete.body["propagationPolicy"], "Background");
        assert_eq!(delete.body["preconditions"]["uid"], "child-uid");
        delete.ok(&stale);
        let pods = server.expect("GET", POD).await;
        assert!(
            pods.uri
                .contains(&format!("batch.kubernetes.io%2Fjob-name%3D{name}")),
            "{}",
            pods.uri
        );
        let report = json!({"uri": "s3://lynx-models/releases/lynx-7b.tar.gz", "revision": null,
            "digest": DIGEST, "bytes": 3_500_000_000_i64, "files": 12, "durationSeconds": 35.0,
            "skipped": false});
        let mut pod_list = empty_list("v1", "PodList");
        pod_list["items"] = json!([{"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("{name}-abcde"), "namespace": "serving"},
            "status": {"phase": "Succeeded", "containerStatuses": [{
                "name": "fetch", "image": "x", "imageID": "", "ready": false,
                "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed",
                    "message": report.to_string()}}}]}}]);
        pods.ok(&pod_list);
        let status = expect_status(&mut server, &expected).await;
        assert_eq!(condition(&status, "ModelReady"), ("True", "Fetched"));
        let model = status.model.expect("status.model");
        assert_eq!(
            (model.digest.as_str(), model.bytes),
            (DIGEST, 3_500_000_000)
        );
        server
    })
    .await;
    assert_eq!(
        run.result.expect("reconciled"),
        Action::requeue(Duration::from_secs(300))
    );
    assert_eq!(run.events, ["Created", "ModelFetched", "Pruned"]);
}

#[tokio::test]
async fn a_missing_credentials_secret_creates_no_job_and_is_rechecked() {
    let ld: LynxDeployment = stored("s3-cache");
    let expected = ld.clone();
    let run = run(
        ld,
        ClusterCapabilities::default(),
        |mut server| async move {
            expect_workers(&mut server).await;
            server.expect("GET", SECRET).await.not_found();
            // No Job request: the next one is the status.
            let status = expect_status(&mut server, &expected).await;
            assert_eq!(
                condition(&status, "ModelReady"),
                ("False", "CredentialsMissing")
            );
            assert!(status.model.is_none());
            server
        },
    )
    .await;
    assert_eq!(
        run.result.expect("reconciled"),
        Action::requeue(MODEL_RECHECK)
    );
    assert_eq!(run.events, ["Created", "CredentialsMissing"]);
}
