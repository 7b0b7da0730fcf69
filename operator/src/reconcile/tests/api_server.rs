//! A scripted API server: the test awaits each request the operator makes, checks its method and
//! path, and answers it.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::client::Body;
use kube::runtime::events::Reporter;
use kube::Client;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::crd::LynxDeployment;
use crate::desired::ClusterCapabilities;
use crate::metrics::Metrics;
use crate::reconcile::Context;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
type Responder = tower_test::mock::SendResponse<Response<Body>>;

/// A client wired to a scripted API server.
pub(super) fn mock_client() -> (Client, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), ApiServer { handle })
}

/// A reconcile context on `client` with fixed capabilities.
pub(super) fn context(client: Client, caps: ClusterCapabilities) -> Arc<Context> {
    let (_sender, capabilities) = watch::channel(caps);
    let reporter = Reporter {
        controller: "lynx-operator".to_owned(),
        instance: None,
    };
    Arc::new(Context::new(
        client,
        reporter,
        Metrics::new().expect("metrics"),
        capabilities,
    ))
}

/// The scripted side of [`mock_client`].
pub(super) struct ApiServer {
    handle: Handle,
}

/// One request the operator made, waiting for its answer.
pub(super) struct Exchange {
    /// `path?query` of the request.
    pub uri: String,
    /// The JSON body (`Null` when empty).
    pub body: Value,
    respond: Responder,
}

impl ApiServer {
    /// Awaits the next request and checks that it is `method` on `path` (without the query).
    pub async fn expect(&mut self, method: &str, path: &str) -> Exchange {
        let next = tokio::time::timeout(Duration::from_secs(5), self.handle.next_request());
        let (request, respond) = next
            .await
            .unwrap_or_else(|_| panic!("no request came; expected {method} {path}"))
            .unwrap_or_else(|| panic!("client gone; expected {method} {path}"));
        let uri = request.uri().to_string();
        assert_eq!(
            (request.method().as_str(), request.uri().path()),
            (method, path),
            "unexpected request {uri}"
        );
        let bytes = request
            .into_body()
            .collect_bytes()
            .await
            .expect("request body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON request body")
        };
        Exchange { uri, body, respond }
    }

    /// Answers every remaining request, which must be Event creations, until the client is
    /// dropped; returns the events' `reason`s.
    pub async fn events(mut self) -> Vec<String> {
        let mut reasons = Vec::new();
        loop {
            let next = tokio::time::timeout(Duration::from_secs(5), self.handle.next_request());
            let Some((request, respond)) = next.await.expect("client dropped or request sent")
            else {
                return reasons;
            };
            assert_eq!(request.method().as_str(), "POST");
            assert_eq!(
                request.uri().path(),
                "/apis/events.k8s.io/v1/namespaces/serving/events",
                "only events may follow the status"
            );
            let bytes = request.into_body().collect_bytes().await.expect("body");
            let event: Value = serde_json::from_slice(&bytes).expect("event JSON");
            reasons.push(event["reason"].as_str().unwrap_or_default().to_owned());
            respond.send_response(json_response(StatusCode::CREATED, &event));
        }
    }
}

impl Exchange {
    /// The request was a server-side apply by the operator's field manager, with force.
    pub fn assert_server_side_apply(&self) {
        assert!(
            self.uri.contains("fieldManager=lynx-operator") && self.uri.contains("force=true"),
            "not a forced apply by lynx-operator: {}",
            self.uri
        );
    }

    /// Answers 200 with `body`.
    pub fn ok(self, body: &Value) {
        self.respond
            .send_response(json_response(StatusCode::OK, body));
    }

    /// Answers 200 with the request body (what the API server returns after an apply).
    pub fn echo(self) {
        let body = self.body.clone();
        self.ok(&body);
    }

    /// Answers with a `Status` error.
    pub fn fail(self, code: StatusCode, reason: &str) {
        let status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "reason": reason, "code": code.as_u16(),
            "message": format!("{reason} (scripted)"),
        });
        self.respond.send_response(json_response(code, &status));
    }

    /// Answers 404 Not Found.
    pub fn not_found(self) {
        self.fail(StatusCode::NOT_FOUND, "NotFound");
    }
}

fn json_response(code: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).expect("JSON")))
        .expect("response")
}

/// A child object named like `ld` and controlled by it (what the operator created earlier).
pub(super) fn owned_child(ld: &LynxDeployment, api_version: &str, kind: &str) -> Value {
    let owner = OwnerReference {
        api_version: "serving.lynx.dev/v1alpha1".to_owned(),
        kind: "LynxDeployment".to_owned(),
        name: ld.metadata.name.clone().unwrap_or_default(),
        uid: ld.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    json!({
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {
            "name": ld.metadata.name,
            "namespace": "serving",
            "uid": "child-uid",
            "ownerReferences": [owner],
        },
        "spec": {},
    })
}

/// `body` (an applied Deployment) with a status of `replicas` workers, `ready` of them ready,
/// and the Deployment controller caught up.
pub(super) fn deployment_with_status(body: &Value, replicas: i32, ready: i32) -> Value {
    let mut deployment = body.clone();
    deployment["metadata"]["generation"] = json!(1);
    deployment["status"] = json!({
        "observedGeneration": 1,
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": ready,
        "availableReplicas": ready,
    });
    deployment
}
