//! `ModelReady` as a pure function of the spec and the observed fetchers.

use k8s_openapi::jiff::Timestamp;

use crate::crd::{ModelSpec, ModelStatus};
use crate::desired::tests::sample;
use crate::reconcile::model_ready::{
    model_ready, JobPhase, ModelObserved, ModelReady, Termination,
};

const DIGEST: &str = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn model() -> ModelSpec {
    sample("s3-cache").spec.model
}

fn uri() -> String {
    model().source.uri.expect("uri").uri
}

fn at(seconds: i64) -> Option<Timestamp> {
    Some(Timestamp::from_second(1_700_000_000 + seconds).expect("time"))
}

fn success(seconds: i64, skipped: bool) -> Termination {
    Termination {
        exit_code: 0,
        reason: Some("Completed".into()),
        message: Some(format!(
            r#"{{"uri":"{}","revision":null,"digest":"{DIGEST}","bytes":1288490189,"files":3,"durationSeconds":35.2,"skipped":{skipped}}}"#,
            uri()
        )),
        finished_at: at(seconds),
    }
}

fn failure(seconds: i64, reason: &str, message: &str) -> Termination {
    Termination {
        exit_code: 1,
        reason: Some("Error".into()),
        message: Some(format!(r#"{{"reason":"{reason}","message":"{message}"}}"#)),
        finished_at: at(seconds),
    }
}

fn job(phase: JobPhase, terminations: Vec<Termination>) -> ModelObserved {
    ModelObserved::Job {
        name: "lynx-s3-model-1234abcd".into(),
        phase,
        terminations,
    }
}

fn ready(observed: &ModelObserved) -> ModelReady {
    model_ready(&model(), observed, None).expect("a uri source has the condition")
}

fn summary(ready: &ModelReady) -> (bool, &str) {
    (ready.status, ready.reason.as_str())
}

#[test]
fn mounted_sources_have_no_condition() {
    let minimal = sample("minimal").spec.model;
    assert_eq!(
        model_ready(&minimal, &ModelObserved::NotFetched, None),
        None
    );
}

#[test]
fn a_completed_job_reports_the_digest_size_time_and_source() {
    let done = ready(&job(JobPhase::Complete, vec![success(10, false)]));
    assert_eq!(summary(&done), (true, "Fetched"));
    assert_eq!(
        done.message,
        format!("{DIGEST} 1.2 GiB fetched in 35 s from {}", uri())
    );
    let model = done.model.expect("status.model");
    assert_eq!(
        model,
        ModelStatus {
            uri: uri(),
            revision: None,
            digest: DIGEST.into(),
            bytes: 1_288_490_189,
            fetch_seconds: 35.2,
        }
    );
    assert!(!done.recheck);
    let skipped = ready(&job(JobPhase::Complete, vec![success(10, true)]));
    assert!(
        skipped.message.contains("already fetched"),
        "{}",
        skipped.message
    );
}

#[test]
fn a_completed_job_whose_pods_are_gone_keeps_the_last_model() {
    let previous = ModelStatus {
        uri: uri(),
        revision: None,
        digest: DIGEST.into(),
        bytes: 2048,
        fetch_seconds: 1.0,
    };
    let observed = job(JobPhase::Complete, vec![]);
    let kept = model_ready(&model(), &observed, Some(&previous)).expect("condition");
    assert_eq!(summary(&kept), (true, "Fetched"));
    assert_eq!(kept.model, Some(previous.clone()));
    let other = ModelStatus {
        uri: "s3://old/model.tar".into(),
        ..previous
    };
    let fresh = model_ready(&model(), &observed, Some(&other)).expect("condition");
    assert_eq!(
        fresh.model, None,
        "a model of another source is not this one"
    );
}

#[test]
fn a_running_job_is_fetching_until_an_attempt_fails() {
    let running = ready(&job(JobPhase::Active, vec![]));
    assert_eq!(summary(&running), (false, "Fetching"));
    assert!(running.message.contains("lynx-s3-model-1234abcd"));
    let retrying = ready(&job(
        JobPhase::Active,
        vec![failure(5, "NotFound", "no such key")],
    ));
    assert_eq!(summary(&retrying), (false, "NotFound"));
    assert_eq!(
        retrying.message,
        "no such key (the Job lynx-s3-model-1234abcd retries)"
    );
}

#[test]
fn a_failed_job_carries_the_newest_reason_and_message() {
    let failed = ready(&job(
        JobPhase::Failed(
            "BackoffLimitExceeded: Job has reached the specified backoff limit".into(),
        ),
        vec![
            failure(5, "Network", "connection reset"),
            failure(
                50,
                "NotFound",
                "s3://lynx-models/releases/lynx-7b.tar.gz does not exist",
            ),
            failure(20, "AccessDenied", "denied"),
        ],
    ));
    assert_eq!(summary(&failed), (false, "NotFound"));
    assert_eq!(
        failed.message,
        "s3://lynx-models/releases/lynx-7b.tar.gz does not exist"
    );
    assert!(!failed.recheck, "a failed Job stays failed");
    for (reported, reason) in [
        ("ChecksumMismatch", "ChecksumMismatch"),
        ("DiskFull", "DiskFull"),
        ("Failed", "FetchFailed"),
        ("Whatever", "FetchFailed"),
    ] {
        let observed = job(
            JobPhase::Failed(String::new()),
            vec![failure(1, reported, "m")],
        );
        assert_eq!(summary(&ready(&observed)), (false, reason));
    }
    let no_pods = ready(&job(JobPhase::Failed("DeadlineExceeded".into()), vec![]));
    assert_eq!(summary(&no_pods), (false, "FetchFailed"));
    assert!(no_pods.message.contains("DeadlineExceeded"));
}

#[test]
fn a_fetcher_without_a_report_fails_with_its_log_tail_or_exit() {
    let crashed = Termination {
        exit_code: 2,
        reason: Some("Error".into()),
        message: Some("error: unexpected argument '--convert'\n".into()),
        finished_at: at(1),
    };
    let failed = ready(&job(JobPhase::Failed(String::new()), vec![crashed]));
    assert_eq!(summary(&failed), (false, "FetchFailed"));
    assert_eq!(
        failed.message,
        "the fetcher exited with code 2: error: unexpected argument '--convert'"
    );
    let killed = Termination {
        exit_code: 137,
        reason: Some("OOMKilled".into()),
        message: None,
        finished_at: at(1),
    };
    let oom = ready(&job(JobPhase::Failed(String::new()), vec![killed]));
    assert_eq!(oom.message, "the fetcher ran out of memory (OOMKilled)");
    let long = Termination {
        message: Some("x".repeat(5000)),
        ..failure(1, "", "")
    };
    let bounded = ready(&job(JobPhase::Failed(String::new()), vec![long]));
    assert!(bounded.message.len() < 1100, "{}", bounded.message.len());
}

#[test]
fn missing_credentials_are_a_condition_that_is_rechecked() {
    let missing = ready(&ModelObserved::CredentialsMissing(
        "lynx-s3-credentials".into(),
    ));
    assert_eq!(summary(&missing), (false, "CredentialsMissing"));
    assert!(missing.message.contains("lynx-s3-credentials"));
    assert!(missing.recheck);
}

#[test]
fn init_containers_report_the_first_success_of_this_uri_else_the_newest_failure() {
    let init = |running, terminations| ModelObserved::InitContainers {
        running,
        terminations,
    };
    let waiting = ready(&init(0, vec![]));
    assert_eq!(summary(&waiting), (false, "Fetching"));
    assert!(waiting.recheck);
    let running = ready(&init(2, vec![]));
    assert!(running.message.starts_with("2 worker pods fetch"));
    let failed = ready(&init(
        1,
        vec![failure(3, "DiskFull", "no space left on /models")],
    ));
    assert_eq!(summary(&failed), (false, "DiskFull"));
    assert!(failed.recheck, "the kubelet retries an init container");
    let mixed = ready(&init(
        0,
        vec![failure(30, "Network", "reset"), success(10, false)],
    ));
    assert_eq!(summary(&mixed), (true, "Fetched"));
    let mut stale = success(40, false);
    stale.message = stale
        .message
        .map(|m| m.replace(&uri(), "https://old.example.com/model.tar"));
    let other_source = ready(&init(0, vec![stale]));
    assert_eq!(summary(&other_source), (false, "Fetching"));
}
