//! The thin I/O of model delivery: the credentials Secret looked up, the cache Job applied and
//! the stale ones pruned, the fetchers' termination messages read. The decision is
//! [`super::model_ready::model_ready`].

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStateTerminated, ContainerStatus, Pod, Secret};
use kube::api::{DeleteParams, ListParams, Preconditions, PropagationPolicy};
use kube::{Api, Client, ResourceExt};

use super::apply::apply;
use super::events::Pruned;
use super::model_ready::{JobPhase, ModelObserved, Termination};
use crate::crd::{LynxDeployment, UriSource};
use crate::desired::{
    delivery, job_selector, selector_string, Delivery, FETCH_CONTAINER, JOB_CONTAINER,
};
use crate::Error;

/// The label the Job controller puts on its pods.
const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";

/// What the model step did and saw.
#[derive(Debug)]
pub struct Delivered {
    /// The facts for [`super::model_ready::model_ready`].
    pub observed: ModelObserved,
    /// Cache Jobs deleted because they are no longer desired.
    pub pruned: Vec<Pruned>,
}

/// Delivers the model of `ld` (uid `owner_uid`) in `namespace`: with a cache, applies `job` (the
/// desired cache Job) unless its credentials Secret is missing; prunes every other cache Job the
/// LynxDeployment controls; observes the fetchers.
///
/// # Guarantees
/// - A missing credentials Secret: no Job is applied or deleted, nothing else is read.
/// - Only Jobs labelled as this LynxDeployment's cache Jobs and controlled by `owner_uid` are
///   deleted (uid precondition, background propagation so their pods go too).
///
/// # Errors
/// The first failed request.
pub async fn deliver(
    client: &Client,
    namespace: &str,
    owner_uid: &str,
    ld: &LynxDeployment,
    job: Option<&Job>,
) -> Result<Delivered, Error> {
    let name = ld.name_any();
    let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let source = match delivery(&ld.spec.model) {
        Delivery::Mounted => {
            let pruned = prune_jobs(&jobs, &name, owner_uid, None).await?;
            return Ok(Delivered {
                observed: ModelObserved::NotFetched,
                pruned,
            });
        }
        Delivery::InitContainer(source) | Delivery::Cache { source, .. } => source,
    };
    if let Some(secret) = missing_secret(client, namespace, source).await? {
        return Ok(Delivered {
            observed: ModelObserved::CredentialsMissing(secret),
            pruned: Vec::new(),
        });
    }
    let Some(job) = job else {
        let pruned = prune_jobs(&jobs, &name, owner_uid, None).await?;
        let params = ListParams::default().labels(&selector_string(ld));
        let mut running = 0;
        let mut terminations = Vec::new();
        for pod in pods.list(&params).await? {
            let statuses = pod.status.and_then(|s| s.init_container_statuses);
            for status in statuses
                .iter()
                .flatten()
                .filter(|s| s.name == FETCH_CONTAINER)
            {
                if status.state.as_ref().is_some_and(|s| s.running.is_some()) {
                    running += 1;
                }
                terminations.extend(terminations_of(status));
            }
        }
        return Ok(Delivered {
            observed: ModelObserved::InitContainers {
                running,
                terminations,
            },
            pruned,
        });
    };
    let job_name = job.name_any();
    let applied = apply(&jobs, "Job", &job_name, job).await?;
    let pruned = prune_jobs(&jobs, &name, owner_uid, Some(&job_name)).await?;
    let params = ListParams::default().labels(&format!("{JOB_NAME_LABEL}={job_name}"));
    let mut terminations = Vec::new();
    for pod in pods.list(&params).await? {
        let statuses = pod.status.and_then(|s| s.container_statuses);
        for status in statuses
            .iter()
            .flatten()
            .filter(|s| s.name == JOB_CONTAINER)
        {
            terminations.extend(terminations_of(status));
        }
    }
    Ok(Delivered {
        observed: ModelObserved::Job {
            name: job_name,
            phase: phase(&applied),
            terminations,
        },
        pruned,
    })
}

/// The name of the credentials Secret of `source` when it does not exist (a metadata-only GET:
/// the operator never reads the Secret's data).
async fn missing_secret(
    client: &Client,
    namespace: &str,
    source: &UriSource,
) -> Result<Option<String>, Error> {
    let Some(secret) = &source.credentials_secret else {
        return Ok(None);
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let found = secrets.get_metadata_opt(secret).await?;
    Ok(found.is_none().then(|| secret.clone()))
}

/// Deletes the cache Jobs of the LynxDeployment `name` that `owner_uid` controls, except `keep`.
async fn prune_jobs(
    jobs: &Api<Job>,
    name: &str,
    owner_uid: &str,
    keep: Option<&str>,
) -> Result<Vec<Pruned>, Error> {
    let params = ListParams::default().labels(&job_selector(name));
    let mut pruned = Vec::new();
    for job in jobs.list(&params).await? {
        let job_name = job.name_any();
        let controlled = job
            .owner_references()
            .iter()
            .any(|owner| owner.controller == Some(true) && owner.uid == owner_uid);
        if !controlled || keep == Some(job_name.as_str()) {
            continue;
        }
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            preconditions: Some(Preconditions {
                uid: job.uid(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match jobs.delete(&job_name, &params).await {
            Ok(_) => pruned.push(Pruned {
                kind: "Job".to_owned(),
                name: job_name,
            }),
            Err(kube::Error::Api(status)) if status.is_not_found() => {}
            Err(source) => {
                return Err(Error::Child {
                    action: "delete",
                    kind: "Job".to_owned(),
                    name: job_name,
                    source,
                })
            }
        }
    }
    Ok(pruned)
}

/// The Job's state from its conditions (`Complete` / `Failed` True).
fn phase(job: &Job) -> JobPhase {
    let conditions = job.status.as_ref().and_then(|s| s.conditions.as_ref());
    for condition in conditions.into_iter().flatten() {
        if condition.status != "True" {
            continue;
        }
        match condition.type_.as_str() {
            "Complete" => return JobPhase::Complete,
            "Failed" => {
                let why = match (&condition.reason, &condition.message) {
                    (Some(reason), Some(message)) => format!("{reason}: {message}"),
                    (Some(reason), None) => reason.clone(),
                    (None, message) => message.clone().unwrap_or_default(),
                };
                return JobPhase::Failed(why);
            }
            _ => {}
        }
    }
    JobPhase::Active
}

/// The finished runs of a container: its current state and the one before.
fn terminations_of(status: &ContainerStatus) -> Vec<Termination> {
    let states = [status.state.as_ref(), status.last_state.as_ref()];
    states
        .into_iter()
        .flatten()
        .filter_map(|state| state.terminated.as_ref())
        .map(termination)
        .collect()
}

fn termination(terminated: &ContainerStateTerminated) -> Termination {
    Termination {
        exit_code: terminated.exit_code,
        reason: terminated.reason.clone(),
        message: terminated.message.clone(),
        finished_at: terminated.finished_at.as_ref().map(|t| t.0),
    }
}
