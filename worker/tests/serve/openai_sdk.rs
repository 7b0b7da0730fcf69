//! The OpenAI-compatible API driven by the official `openai` Python package (installed by
//! `scripts/install-python-clients` into `.tools/python-clients`; `scripts/test` requires it):
//! models, a chat completion with an image `data:` URI and the same streamed (the gRPC greedy
//! answer), a bad image (400), auth (401), a full queue (429), a client that disconnects.

use std::path::PathBuf;
use std::time::Duration;

use lynx_proto::v1::DecodingMode;
use serde_json::Value;

use crate::harness::{input, request, TestServer};

/// Runs `openai_sdk.py SCENARIO` against `server` with `api_key`; what it printed.
async fn sdk(clients: &PathBuf, server: &TestServer, scenario: &str, api_key: &str) -> Value {
    let image = common_image();
    let mut command = std::process::Command::new("python3");
    command
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/serve/openai_sdk.py"
        ))
        .args([scenario, &format!("http://{}/v1", server.http), api_key])
        .arg(&image)
        .env("PYTHONPATH", clients);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("python3");
    assert!(
        output.status.success(),
        "openai_sdk.py {scenario}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON from openai_sdk.py")
}

fn common_image() -> PathBuf {
    crate::common::tiny()
        .join("inputs")
        .join("img_landscape.png")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_client_lists_chats_and_streams() {
    let Some(clients) = crate::common::python_packages(&["openai"]) else {
        return;
    };
    let server = TestServer::start(|_| {}).await;
    let image = input("img_landscape.png");
    let grpc = server
        .client()
        .await
        .generate(request(
            "What is in the image?",
            &[&image],
            None,
            DecodingMode::Greedy,
            8,
        ))
        .await
        .unwrap()
        .into_inner();
    let seen = sdk(&clients, &server, "chat", "unused").await;
    assert_eq!(seen["model"], "lynx-vicuna-7b");
    assert_eq!(seen["text"], grpc.text.as_str(), "{seen}");
    assert_eq!(
        seen["streamed"].as_str().map(str::trim),
        Some(grpc.text.as_str()),
        "{seen}"
    );
    assert_eq!(seen["usage"], seen["streamed_usage"], "{seen}");
    assert_eq!(
        seen["finish_reason"], seen["streamed_finish_reason"],
        "{seen}"
    );
    let usage = grpc.usage.unwrap();
    assert_eq!(
        seen["usage"]["prompt_tokens"],
        u64::from(usage.prompt_tokens + usage.vision_tokens)
    );
    assert_eq!(seen["bad_image"]["status"], 400, "{seen}");
    assert_eq!(seen["bad_image"]["type"], "BadRequestError", "{seen}");
    let message = seen["bad_image"]["body"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("image 0"), "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_client_gets_401_and_429() {
    let Some(clients) = crate::common::python_packages(&["openai"]) else {
        return;
    };
    let server = TestServer::start(|c| {
        c.auth_tokens = vec!["s3cret".into()];
        c.runner.scheduler.max_queue = 1;
        c.runner.scheduler.max_batch_delay = Duration::from_secs(60);
    })
    .await;
    let seen = sdk(&clients, &server, "auth", "wrong").await;
    assert_eq!(seen["models"]["status"], 401, "{seen}");
    assert_eq!(seen["chat"]["type"], "AuthenticationError", "{seen}");

    // One request waits in the queue (the batch delay holds it); the next is refused.
    let mut client = server.client().await;
    let mut waiting = tonic::Request::new(request("hi", &[], None, DecodingMode::Greedy, 2));
    waiting
        .metadata_mut()
        .insert("authorization", "Bearer s3cret".parse().unwrap());
    let held = tokio::spawn(async move { client.generate(waiting).await });
    server
        .wait_metrics("one waiting", |m| m.get("lynx_queue_length") == 1.0)
        .await;
    let seen = sdk(&clients, &server, "queue_full", "s3cret").await;
    assert_eq!(seen["chat"]["status"], 429, "{seen}");
    assert_eq!(seen["chat"]["type"], "RateLimitError", "{seen}");
    held.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_frees_its_place() {
    let Some(clients) = crate::common::python_packages(&["openai"]) else {
        return;
    };
    let server = TestServer::start(|_| {}).await;
    let seen = sdk(&clients, &server, "disconnect", "unused").await;
    assert_eq!(seen["first_role"], "assistant", "{seen}");
    // 200 tokens take far longer than this: the request was cancelled, its slot freed.
    let m = server
        .wait_metrics("the request cancelled", |m| {
            m.get("lynx_requests_total{code=\"CANCELLED\"}") == 1.0
        })
        .await;
    assert_eq!(m.get("lynx_running_requests"), 0.0);
    let answered = m.0.get("lynx_requests_total{code=\"OK\"}").copied();
    assert_eq!(answered.unwrap_or(0.0), 0.0, "nothing was answered");
}
