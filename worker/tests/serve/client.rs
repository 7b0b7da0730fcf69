//! The `lynx` client binary against an in-process worker: `generate` and `bench`.

use std::process::{Command, Output};

use lynx_proto::v1::DecodingMode;

use crate::common::tiny;
use crate::harness::{input, request, TestServer};

async fn lynx(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(crate::harness::lynx_binary())
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_prints_the_served_answer() {
    let server = TestServer::start(|_| {}).await;
    let direct = server
        .client()
        .await
        .generate(request(
            "What is in the image?",
            &[&input("img_landscape.png")],
            None,
            DecodingMode::Greedy,
            10,
        ))
        .await
        .unwrap()
        .into_inner();
    let image = tiny().join("inputs/img_landscape.png");
    let base: Vec<String> = [
        "generate",
        "--addr",
        &format!("http://{}", server.grpc),
        "--image",
        image.to_str().unwrap(),
        "--prompt",
        "What is in the image?",
        "--decoding",
        "greedy",
        "--max-new-tokens",
        "10",
    ]
    .map(str::to_owned)
    .to_vec();
    let mut json_args = base.clone();
    json_args.push("--json".into());
    let printed: serde_json::Value = serde_json::from_str(&ok(&lynx(json_args).await)).unwrap();
    let ids: Vec<u32> = serde_json::from_value(printed["token_ids"].clone()).unwrap();
    assert_eq!(ids, direct.token_ids);
    assert_eq!(printed["usage"]["vision_tokens"], 8);
    let streamed = ok(&lynx(base).await);
    assert_eq!(streamed.trim(), direct.text);
    // Errors are one line and a non-zero exit.
    let bad = lynx(
        [
            "generate",
            "--addr",
            &format!("http://{}", server.grpc),
            "--prompt",
            " ",
        ]
        .map(str::to_owned)
        .to_vec(),
    )
    .await;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("empty request"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_prints_a_table_and_writes_a_plot() {
    let server = TestServer::start(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("bench.svg");
    let out = lynx(
        [
            "bench",
            "--addr",
            &format!("http://{}", server.grpc),
            "--concurrency",
            "1,3",
            "--requests",
            "6",
            "--max-new-tokens",
            "3",
            "--svg",
            svg.to_str().unwrap(),
        ]
        .map(str::to_owned)
        .to_vec(),
    )
    .await;
    let table = ok(&out);
    assert!(
        table.contains("| concurrency | requests | req/s"),
        "{table}"
    );
    assert!(
        table.contains("\n| 1 | 6 |") && table.contains("\n| 3 | 6 |"),
        "{table}"
    );
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(
        plot.starts_with("<svg") && plot.contains("polyline"),
        "{plot}"
    );
    let m = server.metrics().await;
    // 1 unmeasured + 2 levels x 6 requests.
    assert_eq!(m.get("lynx_requests_total{code=\"OK\"}"), 13.0);
}
