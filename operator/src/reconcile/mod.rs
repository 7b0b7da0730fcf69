//! The reconcile loop's body: apply the desired children, prune the rest, write the status and
//! publish events. The decisions live in pure functions ([`crate::desired`], [`status`],
//! [`events`]); this module only does the I/O around them.

pub mod apply;
pub mod backoff;
pub mod events;
pub mod model;
pub mod model_ready;
pub mod publisher;
pub mod status;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::Reporter;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::crd::{LynxDeployment, LynxDeploymentStatus, GROUP, VERSION};
use crate::desired::{self, ClusterCapabilities, DesiredError};
use crate::metrics::{Metrics, Outcome};
use crate::Error;
use backoff::ErrorBackoff;
use publisher::Publisher;

/// How often a healthy LynxDeployment is reconciled even without a change (to undo drift of the
/// children that are not watched, such as ScaledObjects and PodMonitors).
pub const RESYNC: Duration = Duration::from_secs(300);
/// How soon a LynxDeployment whose model is not ready is reconciled again when no watched object
/// would say so (a credentials Secret created, a worker pod's init container finished).
pub const MODEL_RECHECK: Duration = Duration::from_secs(10);

/// What every reconcile shares.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Publishes Kubernetes Events.
    pub publisher: Publisher,
    /// The operator's metrics.
    pub metrics: Metrics,
    /// The latest result of API discovery.
    pub capabilities: watch::Receiver<ClusterCapabilities>,
    /// Consecutive failures per object.
    pub backoff: ErrorBackoff,
}

impl Context {
    /// A context that reports events as `reporter`.
    pub fn new(
        client: Client,
        reporter: Reporter,
        metrics: Metrics,
        capabilities: watch::Receiver<ClusterCapabilities>,
    ) -> Self {
        Self {
            publisher: Publisher::new(client.clone(), reporter),
            client,
            metrics,
            capabilities,
            backoff: ErrorBackoff::default(),
        }
    }
}

/// Reconciles one LynxDeployment.
///
/// # Guarantees
/// - Valid spec: every desired child is applied, every undesired one pruned, the model's cache
///   Job applied unless its credentials Secret is missing (see [`model::deliver`]), then the
///   status is written from the worker Deployment the API server returned and what the model's
///   fetchers reported; requeued after [`RESYNC`], or [`MODEL_RECHECK`] while the model is not
///   ready and nothing watched would say when it is.
/// - Invalid spec (the CEL rules, e.g. an object stored before the CRD was updated): nothing is
///   applied or deleted; the status says `InvalidSpec`; waits for the next change.
/// - A failed apply: the status says `ApplyFailed` with the error (best effort), and the error is
///   returned for [`error_policy`] to retry.
/// - An object being deleted (a deletion timestamp: foreground deletion waits for the garbage
///   collector to remove its children) is left alone: no child is applied again.
/// - Each reconcile is counted in `lynx_operator_reconciliations_total` with its outcome.
///
/// # Errors
/// The first failed API request, or an object without a namespace, name or uid.
pub async fn reconcile(ld: Arc<LynxDeployment>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&ld, &ctx).await;
    let outcome = match &result {
        Ok((outcome, _)) => *outcome,
        Err(err) => Outcome::Failed(err.metric_label()),
    };
    ctx.metrics.record(outcome, started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.backoff.reset(&object_key(&ld));
    }
    result.map(|(_, action)| action)
}

/// Maps a failed reconcile to a retry with per-object exponential backoff.
pub fn error_policy(ld: Arc<LynxDeployment>, error: &Error, ctx: Arc<Context>) -> Action {
    let delay = ctx.backoff.next_delay(&object_key(&ld));
    warn!(
        name = %ld.name_any(),
        namespace = ld.namespace().unwrap_or_default(),
        %error,
        retry_in_s = delay.as_secs(),
        "reconcile failed"
    );
    Action::requeue(delay)
}

async fn reconcile_inner(ld: &LynxDeployment, ctx: &Context) -> Result<(Outcome, Action), Error> {
    if ld.metadata.deletion_timestamp.is_some() {
        return Ok((Outcome::Deleting, Action::await_change()));
    }
    let caps = *ctx.capabilities.borrow();
    let namespace = ld
        .namespace()
        .ok_or(Error::Identity(DesiredError::MissingNamespace))?;
    let desired = match desired::desired(ld, &caps) {
        Ok(desired) => desired,
        Err(DesiredError::Invalid(invalid)) => {
            let message = invalid.to_string();
            let status = status::degraded(ld, "InvalidSpec", &message, Timestamp::now());
            finish(ld, ctx, &namespace, status, None).await?;
            return Ok((Outcome::InvalidSpec, Action::await_change()));
        }
        Err(identity) => return Err(Error::Identity(identity)),
    };
    let uid = ld.uid().unwrap_or_default();
    let applied = match apply::apply_children(&ctx.client, &namespace, &uid, &desired, &caps).await
    {
        Ok(applied) => applied,
        Err(err) => return Err(apply_failed(ld, ctx, &namespace, err).await),
    };
    let job = desired.model_job.as_ref();
    let delivered = match model::deliver(&ctx.client, &namespace, &uid, ld, job).await {
        Ok(delivered) => delivered,
        Err(err) => return Err(apply_failed(ld, ctx, &namespace, err).await),
    };
    let previous_model = ld.status.as_ref().and_then(|s| s.model.as_ref());
    let model = model_ready::model_ready(&ld.spec.model, &delivered.observed, previous_model);
    let status = status::from_deployment(
        ld,
        &applied.deployment,
        &desired.autoscaler,
        desired.inference_pool_state,
        model.as_ref(),
        Timestamp::now(),
    );
    let mut pruned = applied.pruned;
    pruned.extend(delivered.pruned);
    finish(ld, ctx, &namespace, status, Some(&pruned)).await?;
    let recheck = model.is_some_and(|m| m.recheck);
    let requeue = if recheck { MODEL_RECHECK } else { RESYNC };
    Ok((Outcome::Applied, Action::requeue(requeue)))
}

/// Says why in the status (best effort: the reconcile error is what gets retried) and returns
/// `err`.
async fn apply_failed(ld: &LynxDeployment, ctx: &Context, namespace: &str, err: Error) -> Error {
    let message = err.to_string();
    let status = status::degraded(ld, "ApplyFailed", &message, Timestamp::now());
    if let Err(status_err) = finish(ld, ctx, namespace, status, None).await {
        warn!(error = %status_err, "cannot write the ApplyFailed status");
    }
    err
}

/// Writes `status` (server-side apply on the status subresource) and publishes the events of the
/// change; `pruned` is `None` when no child was applied. A failed event is logged, never an
/// error.
async fn finish(
    ld: &LynxDeployment,
    ctx: &Context,
    namespace: &str,
    status: LynxDeploymentStatus,
    pruned: Option<&[events::Pruned]>,
) -> Result<(), Error> {
    let events = events::significant_changes(
        ld.status.as_ref(),
        &status,
        pruned.is_some(),
        pruned.unwrap_or_default(),
    );
    let name = ld.name_any();
    if ld.status.as_ref() != Some(&status) {
        let api: Api<LynxDeployment> = Api::namespaced(ctx.client.clone(), namespace);
        let patch = json!({
            "apiVersion": format!("{GROUP}/{VERSION}"),
            "kind": "LynxDeployment",
            "status": status,
        });
        let params = PatchParams::apply(apply::FIELD_MANAGER).force();
        api.patch_status(&name, &params, &Patch::Apply(&patch))
            .await?;
    }
    let reference = ld.object_ref(&());
    for event in events {
        info!(%name, %namespace, reason = %event.reason, note = event.note.as_deref().unwrap_or(""), "event");
        if let Err(err) = ctx.publisher.publish(&event, &reference).await {
            warn!(%name, %namespace, error = %err, "cannot publish event");
        }
    }
    Ok(())
}

/// The backoff key of `ld`: `namespace/name`.
fn object_key(ld: &LynxDeployment) -> String {
    format!("{}/{}", ld.namespace().unwrap_or_default(), ld.name_any())
}
