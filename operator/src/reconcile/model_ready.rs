//! The `ModelReady` condition and `status.model`: a pure function from the spec and what the
//! apply layer observed (the credentials Secret, the cache Job, the fetchers' termination
//! messages) to the condition.

use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;

use crate::crd::{ModelSpec, ModelStatus};

/// Reasons of a failed fetch the fetcher reports and the condition keeps as they are; any other
/// becomes [`FETCH_FAILED`].
const KNOWN_FAILURES: [&str; 6] = [
    "InvalidUri",
    "NotFound",
    "AccessDenied",
    "ChecksumMismatch",
    "DiskFull",
    "Network",
];
/// The reason of a failed fetch without a known reason.
pub const FETCH_FAILED: &str = "FetchFailed";
/// The reason while the fetch has not finished.
pub const FETCHING: &str = "Fetching";
/// The reason of a successful fetch.
pub const FETCHED: &str = "Fetched";
/// The reason when the credentials Secret does not exist.
pub const CREDENTIALS_MISSING: &str = "CredentialsMissing";
/// Characters of a reported message kept in the condition at most.
const MESSAGE_MAX: usize = 1024;

/// One finished run of a fetcher container (`state.terminated` or `lastState.terminated`).
#[derive(Debug, Clone, PartialEq)]
pub struct Termination {
    /// The exit code.
    pub exit_code: i32,
    /// The kubelet's reason (`Completed`, `Error`, `OOMKilled`).
    pub reason: Option<String>,
    /// The termination message: the fetcher's JSON report, or its log tail.
    pub message: Option<String>,
    /// When it ended.
    pub finished_at: Option<Timestamp>,
}

/// The state of the cache Job.
#[derive(Debug, Clone, PartialEq)]
pub enum JobPhase {
    /// Its pod has not succeeded yet and retries are left.
    Active,
    /// Its pod succeeded.
    Complete,
    /// It gave up; the Job's own reason and message (`BackoffLimitExceeded`).
    Failed(String),
}

/// What the apply layer observed about the delivery of the model.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelObserved {
    /// A `pvc` or `hostPath` source: nothing is fetched.
    NotFetched,
    /// The Secret named by `credentialsSecret` does not exist (no Job was created).
    CredentialsMissing(String),
    /// The cache Job named `name` and the terminations of its pods' `fetch` container.
    Job {
        /// The Job's name.
        name: String,
        /// Its state.
        phase: JobPhase,
        /// Its pods' finished runs.
        terminations: Vec<Termination>,
    },
    /// The worker pods' `fetch-model` init containers: how many run now, and their finished
    /// runs.
    InitContainers {
        /// Fetchers running now.
        running: usize,
        /// Finished runs.
        terminations: Vec<Termination>,
    },
}

/// The fetcher's report on success (`--termination-log`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Fetched {
    uri: String,
    #[serde(default)]
    revision: Option<String>,
    digest: String,
    bytes: i64,
    duration_seconds: f64,
    #[serde(default)]
    skipped: bool,
}

/// The fetcher's report on failure.
#[derive(Debug, Clone, PartialEq, Deserialize)]
struct Failed {
    reason: String,
    message: String,
}

/// The `ModelReady` condition and what goes into `status.model`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelReady {
    /// The condition's status.
    pub status: bool,
    /// Its reason.
    pub reason: String,
    /// Its message.
    pub message: String,
    /// `status.model`: the fetched model, when the condition is True.
    pub model: Option<ModelStatus>,
    /// The state may change without a change of a watched object (the worker pods and Secrets
    /// are not watched): reconcile again soon.
    pub recheck: bool,
}

/// `ModelReady` of `model` given `observed`; `previous` is the last `status.model`.
///
/// # Guarantees
/// - `None` exactly for [`ModelObserved::NotFetched`] (no `uri` source).
/// - True (`Fetched`) when the Job completed, or when a worker's init container fetched the
///   spec's uri; `model` holds the fetcher's report (or `previous` when the report is gone and
///   named the same uri).
/// - False `CredentialsMissing` when the Secret is missing; False with the fetcher's reason
///   (`NotFound`, `AccessDenied`, ..., else `FetchFailed`) and message when the newest run of
///   the Job failed (whether the Job retries or gave up) or, without a cache, when no worker
///   fetched it and the newest run failed; else False `Fetching`.
pub fn model_ready(
    model: &ModelSpec,
    observed: &ModelObserved,
    previous: Option<&ModelStatus>,
) -> Option<ModelReady> {
    let uri = model.source.uri.as_ref().map(|s| s.uri.as_str())?;
    let ready = match observed {
        ModelObserved::NotFetched => return None,
        ModelObserved::CredentialsMissing(secret) => not_ready(
            CREDENTIALS_MISSING,
            format!(
                "the Secret {secret} named by spec.model.source.uri.credentialsSecret does not \
                 exist in this namespace; create it with the fetcher's credentials (its keys \
                 become environment variables)"
            ),
            true,
        ),
        ModelObserved::Job {
            name,
            phase,
            terminations,
        } => {
            let latest = newest(terminations);
            match phase {
                JobPhase::Complete => {
                    let success = latest.iter().find(|t| t.exit_code == 0);
                    fetched(uri, success.copied(), previous)
                }
                JobPhase::Failed(why) => match latest.iter().find(|t| t.exit_code != 0) {
                    Some(failure) => failure_of(failure, false),
                    None => not_ready(FETCH_FAILED, format!("the Job {name} failed: {why}"), false),
                },
                JobPhase::Active => match latest.first().filter(|t| t.exit_code != 0) {
                    // The newest attempt failed: say why now, not after every retry.
                    Some(failure) => {
                        let mut failed = failure_of(failure, false);
                        failed
                            .message
                            .push_str(&format!(" (the Job {name} retries)"));
                        failed
                    }
                    None => not_ready(FETCHING, format!("the Job {name} fetches {uri}"), false),
                },
            }
        }
        ModelObserved::InitContainers {
            running,
            terminations,
        } => {
            let latest = newest(terminations);
            let success = latest
                .iter()
                .find(|t| t.exit_code == 0 && report_uri(t).is_none_or(|u| u == uri));
            if let Some(success) = success {
                fetched(uri, Some(success), previous)
            } else if let Some(failure) = latest.iter().find(|t| t.exit_code != 0) {
                failure_of(failure, true)
            } else if *running > 0 {
                not_ready(FETCHING, format!("{running} worker pods fetch {uri}"), true)
            } else {
                not_ready(
                    FETCHING,
                    format!("waiting for a worker pod to fetch {uri}"),
                    true,
                )
            }
        }
    };
    Some(ready)
}

fn not_ready(reason: &str, message: String, recheck: bool) -> ModelReady {
    ModelReady {
        status: false,
        reason: reason.to_owned(),
        message,
        model: None,
        recheck,
    }
}

/// The terminations, newest first (unknown end times last).
fn newest(terminations: &[Termination]) -> Vec<&Termination> {
    let mut sorted: Vec<&Termination> = terminations.iter().collect();
    sorted.sort_by_key(|t| std::cmp::Reverse(t.finished_at));
    sorted
}

fn report_uri(termination: &Termination) -> Option<String> {
    let text = termination.message.as_deref()?;
    serde_json::from_str::<Fetched>(text.trim())
        .ok()
        .map(|f| f.uri)
}

/// True `Fetched` from a successful run's report.
fn fetched(uri: &str, success: Option<&Termination>, previous: Option<&ModelStatus>) -> ModelReady {
    let report = success
        .and_then(|t| t.message.as_deref())
        .and_then(|text| serde_json::from_str::<Fetched>(text.trim()).ok());
    let Some(report) = report else {
        let model = previous.filter(|p| p.uri == uri).cloned();
        let message = match &model {
            Some(model) => format!("{} {} from {uri}", model.digest, size(model.bytes)),
            None => format!("{uri} fetched"),
        };
        return ModelReady {
            status: true,
            reason: FETCHED.to_owned(),
            message,
            model,
            recheck: false,
        };
    };
    let seconds = seconds(report.duration_seconds);
    let message = if report.skipped {
        format!(
            "{} {} already fetched from {} (checked in {seconds})",
            report.digest,
            size(report.bytes),
            report.uri
        )
    } else {
        format!(
            "{} {} fetched in {seconds} from {}",
            report.digest,
            size(report.bytes),
            report.uri
        )
    };
    ModelReady {
        status: true,
        reason: FETCHED.to_owned(),
        message,
        model: Some(ModelStatus {
            uri: report.uri,
            revision: report.revision,
            digest: report.digest,
            bytes: report.bytes,
            fetch_seconds: report.duration_seconds,
        }),
        recheck: false,
    }
}

/// False with the reason and message of a failed run: the fetcher's report, else what the
/// kubelet saw (the log tail of `FallbackToLogsOnError`, the exit code).
fn failure_of(failure: &Termination, recheck: bool) -> ModelReady {
    let text = failure.message.as_deref().unwrap_or("").trim();
    if let Ok(report) = serde_json::from_str::<Failed>(text) {
        let reason = if KNOWN_FAILURES.contains(&report.reason.as_str()) {
            report.reason
        } else {
            FETCH_FAILED.to_owned()
        };
        return not_ready(&reason, bounded(&report.message), recheck);
    }
    let how = match failure.reason.as_deref() {
        Some("OOMKilled") => "ran out of memory (OOMKilled)".to_owned(),
        _ => format!("exited with code {}", failure.exit_code),
    };
    let message = if text.is_empty() {
        format!("the fetcher {how}")
    } else {
        format!("the fetcher {how}: {}", bounded(text))
    };
    not_ready(FETCH_FAILED, message, recheck)
}

/// `text` cut to its last [`MESSAGE_MAX`] characters (a log's end says why).
fn bounded(text: &str) -> String {
    let count = text.chars().count();
    if count <= MESSAGE_MAX {
        return text.to_owned();
    }
    let tail: String = text.chars().skip(count - MESSAGE_MAX).collect();
    format!("...{tail}")
}

/// `1.2 GiB`, `340.0 MiB`, `12 B`.
fn size(bytes: i64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    // Precision loss is irrelevant for one decimal.
    #[allow(clippy::cast_precision_loss)]
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `35 s`, `0.4 s`.
fn seconds(value: f64) -> String {
    if value >= 10.0 {
        format!("{value:.0} s")
    } else {
        format!("{value:.1} s")
    }
}
