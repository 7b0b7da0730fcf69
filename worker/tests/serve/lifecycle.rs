//! Readiness, health, reflection, model info, metrics and the graceful drain (in-process and
//! with SIGTERM on the real binary).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lynx_proto::v1::generate_stream_response::Event;
use lynx_proto::v1::{DecodingMode, FinishReason, GenerateRequest, GetModelInfoRequest};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::harness::{http_get, input, request, TestServer};

fn greedy(max_new: u32) -> GenerateRequest {
    let img = input("img_landscape.png");
    request(
        "What is in the image?",
        &[&img],
        None,
        DecodingMode::Greedy,
        max_new,
    )
}

async fn channel(addr: std::net::SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::new(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn health(server_addr: std::net::SocketAddr, service: &str) -> ServingStatus {
    let mut client = HealthClient::new(channel(server_addr).await);
    let r = client
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .unwrap();
    r.into_inner().status()
}

/// Reads a stream to its end: (tokens streamed, the final message).
async fn finish_stream(
    mut stream: tonic::Streaming<lynx_proto::v1::GenerateStreamResponse>,
) -> (usize, lynx_proto::v1::GenerateResponse) {
    let mut tokens = 0;
    while let Some(msg) = stream.message().await.unwrap() {
        match msg.event.unwrap() {
            Event::Delta(d) => tokens += d.token_ids.len(),
            Event::Final(f) => return (tokens, f),
        }
    }
    panic!("stream ended without a final message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reflection_and_model_info_describe_the_worker() {
    let server = TestServer::start(|c| c.limits.max_new_tokens = 77).await;
    assert_eq!(http_get(server.http, "/healthz").await.0, 200);
    assert_eq!(
        http_get(server.http, "/health").await.0,
        200,
        "the OpenAI tools' probe path"
    );
    assert_eq!(health(server.grpc, "").await, ServingStatus::Serving);
    assert_eq!(
        health(server.grpc, "lynx.v1.Lynx").await,
        ServingStatus::Serving
    );

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let mut reflection = ServerReflectionClient::new(channel(server.grpc).await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("no service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"lynx.v1.Lynx".to_owned()), "{names:?}");

    let info = server
        .client()
        .await
        .get_model_info(GetModelInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.image_resolution, 56);
    assert_eq!(info.frames_per_video, 5);
    assert_eq!(info.vision_tokens, 8);
    let limits = info.limits.unwrap();
    assert_eq!(limits.max_new_tokens, 77);
    assert_eq!(info.decoding_defaults.unwrap().num_beams, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_scraped_parsed_and_account_for_every_request() {
    let server = TestServer::start(|_| {}).await;
    let body = http_get(server.http, "/metrics").await.1;
    for gauge in [
        "lynx_queue_length",
        "lynx_running_sequences",
        "lynx_kv_cache_usage",
    ] {
        assert!(
            body.contains(&format!("# TYPE {gauge} gauge")),
            "{gauge} is a gauge"
        );
    }
    let before = server.metrics().await;
    let mut client = server.client().await;
    let text_only = request("hi", &[], None, DecodingMode::Greedy, 6);
    let mut answers = Vec::new();
    for r in [greedy(8), greedy(8), text_only] {
        answers.push(client.generate(r).await.unwrap().into_inner());
    }
    let after = server.metrics().await;
    let delta = |k: &str| after.get(k) - before.get_or_zero(k);
    let sum = |f: fn(&lynx_proto::v1::Usage) -> u32| -> f64 {
        answers
            .iter()
            .map(|a| f64::from(f(&a.usage.unwrap())))
            .sum()
    };
    assert_eq!(delta("lynx_requests_total{code=\"OK\"}"), 3.0);
    assert_eq!(delta("lynx_request_duration_seconds_count"), 3.0);
    assert_eq!(delta("lynx_queue_duration_seconds_count"), 3.0);
    assert_eq!(delta("lynx_time_to_first_token_seconds_count"), 3.0);
    assert!(delta("lynx_inter_token_latency_seconds_count") >= 3.0 * 5.0);
    assert_eq!(delta("lynx_prompt_tokens_total"), sum(|u| u.prompt_tokens));
    assert_eq!(delta("lynx_vision_tokens_total"), sum(|u| u.vision_tokens));
    assert_eq!(
        delta("lynx_generated_tokens_total"),
        sum(|u| u.completion_tokens)
    );
    assert_eq!(
        delta("lynx_encoder_cache_misses_total"),
        1.0,
        "first sight of the image"
    );
    assert_eq!(
        delta("lynx_encoder_cache_hits_total"),
        1.0,
        "the same image again"
    );
    assert_eq!(
        delta("lynx_vision_encode_seconds_count"),
        1.0,
        "one encoder run"
    );
    assert!(delta("lynx_batch_size_count") > 0.0);
    assert!(delta("lynx_tokens_per_step_count") > 0.0);
    assert!(delta("lynx_scheduler_decisions_total{reason=\"admitted\"}") >= 3.0);
    // The gauges follow within one loop of the model thread.
    let idle = [
        "lynx_queue_length",
        "lynx_running_sequences",
        "lynx_running_requests",
        "lynx_kv_cache_usage",
    ];
    server
        .wait_metrics("idle gauges at 0", |m| idle.iter().all(|g| m.get(g) == 0.0))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_refuses_new_requests_and_finishes_every_admitted_one() {
    let mut server = TestServer::start(|c| c.runner.scheduler.max_batch_size = 1).await;
    let mut running = server
        .client()
        .await
        .generate_stream(greedy(120))
        .await
        .unwrap()
        .into_inner();
    let Some(Event::Delta(first)) = running.message().await.unwrap().unwrap().event else {
        panic!("first delta");
    };
    let mut client = server.client().await;
    let waiting = tokio::spawn(async move { client.generate(greedy(40)).await });
    server
        .wait_metrics("one waiting", |m| m.get("lynx_queue_length") == 1.0)
        .await;

    server.signal_shutdown();
    let t0 = Instant::now();
    while http_get(server.http, "/readyz").await != (503, "draining\n".to_owned()) {
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "readiness still true"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(health(server.grpc, "").await, ServingStatus::NotServing);
    let refused = server.client().await.generate(greedy(4)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");

    let (streamed, last) = finish_stream(running).await;
    assert_eq!(first.token_ids.len() + streamed, 120);
    assert_eq!(last.token_ids.len(), 120);
    let queued = waiting.await.unwrap().unwrap().into_inner();
    assert_eq!(queued.finish_reason, FinishReason::Length as i32);
    assert_eq!(queued.token_ids.len(), 40);
    server.stop().await.unwrap();
}

/// The `lynx-worker` binary serving on loopback ports, its log lines collected by a thread.
pub struct Spawned {
    pub child: std::process::Child,
    pub grpc: std::net::SocketAddr,
    pub http: std::net::SocketAddr,
    logs: std::thread::JoinHandle<Vec<String>>,
    _cache: tempfile::TempDir,
}

impl Spawned {
    /// Waits up to `within` for `/readyz` to answer 200, then connects a gRPC client.
    pub async fn ready_client(
        &self,
        within: Duration,
    ) -> lynx_proto::v1::lynx_client::LynxClient<tonic::transport::Channel> {
        let t0 = Instant::now();
        while http_get(self.http, "/readyz").await.0 != 200 {
            assert!(t0.elapsed() < within, "never ready");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        lynx_proto::v1::lynx_client::LynxClient::connect(format!("http://{}", self.grpc))
            .await
            .unwrap()
    }
}

/// Starts `lynx-worker serve` with `args` (plus loopback listeners) and waits for its
/// addresses.
pub fn spawn_worker(args: &[&std::ffi::OsStr]) -> Spawned {
    let cache = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lynx-worker"))
        .arg("serve")
        .args(args)
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .env("LYNX_CACHE_DIR", cache.path())
        .env("LYNX_DRAIN_TIMEOUT_SECONDS", "20")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let logs = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let field = |name: &str| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(name))
                    .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
            };
            if let (Some(g), Some(h)) = (field("grpc_addr="), field("http_addr=")) {
                addr_tx.send((g, h)).ok();
            }
            lines.push(line);
        }
        lines
    });
    let Ok((grpc, http)) = addr_rx.recv_timeout(Duration::from_secs(30)) else {
        let status = child.wait().unwrap();
        panic!(
            "no listen addresses; {status:?}: {:?}",
            logs.join().unwrap()
        );
    };
    Spawned {
        child,
        grpc,
        http,
        logs,
        _cache: cache,
    }
}

/// `serve --device mirror --random-weights tiny`: the forward program with random weights
/// behind the binary's flags gets ready (warm-up included) and answers a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_random_weights_on_the_device_program() {
    let args = ["--device", "mirror", "--random-weights", "tiny"].map(std::ffi::OsStr::new);
    let spawned = spawn_worker(&args);
    let mut client = spawned.ready_client(Duration::from_secs(60)).await;
    let Spawned {
        mut child, logs, ..
    } = spawned;
    let info = client
        .get_model_info(GetModelInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.model_name, "lynx-tiny-random");
    let answer = client.generate(greedy(8)).await.unwrap().into_inner();
    assert!(
        !answer.token_ids.is_empty() && answer.token_ids.len() <= 8,
        "{answer:?}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let logs = logs.join().unwrap();
    assert!(
        logs.iter().any(|l| l.contains("host f32")),
        "the device is logged: {logs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_drains_on_sigterm_and_exits_0() {
    let model = crate::common::model_dir();
    let spawned = spawn_worker(&[std::ffi::OsStr::new("--model"), model.as_os_str()]);
    let mut client = spawned.ready_client(Duration::from_secs(30)).await;
    let Spawned {
        mut child, logs, ..
    } = spawned;
    let mut stream = client
        .generate_stream(greedy(120))
        .await
        .unwrap()
        .into_inner();
    assert!(stream.message().await.unwrap().is_some(), "first delta");

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let (_, last) = finish_stream(stream).await;
    assert_eq!(last.token_ids.len(), 120, "the admitted request finished");
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "worker did not exit"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let logs = logs.join().unwrap();
    assert!(status.success(), "exit {status:?}: {}", logs.join("\n"));
    assert!(logs.iter().any(|l| l.contains("draining")), "{logs:?}");
}

/// Name and niceness of every thread of process `pid` (Linux `/proc`), its main thread first.
#[cfg(target_os = "linux")]
fn thread_niceness(pid: u32) -> Vec<(String, i32)> {
    let mut tasks: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|t| t.unwrap().path())
        .collect();
    // The main thread's id is the process id.
    tasks.sort_by_key(|dir| !dir.ends_with(pid.to_string()));
    let mut threads = Vec::new();
    for dir in tasks {
        let name = std::fs::read_to_string(dir.join("comm")).unwrap();
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap();
        // Fields after the parenthesised name start at field 3 (state); field 19 is the nice.
        let after_name = &stat[stat.rfind(')').unwrap() + 1..];
        let nice = after_name
            .split_whitespace()
            .nth(16)
            .unwrap()
            .parse()
            .unwrap();
        threads.push((name.trim().to_owned(), nice));
    }
    threads
}

/// `serve` keeps the model's threads (model thread, compute pool) at the process's priority and
/// runs the serving threads (runtime and blocking pool) `--serving-niceness` lower.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serving_threads_yield_the_cpu_to_the_model_threads() {
    let model = crate::common::model_dir();
    let args = [
        std::ffi::OsStr::new("--model"),
        model.as_os_str(),
        std::ffi::OsStr::new("--serving-niceness"),
        std::ffi::OsStr::new("7"),
    ];
    let spawned = spawn_worker(&args);
    // One request: its image was decoded on the blocking pool.
    let mut client = spawned.ready_client(Duration::from_secs(30)).await;
    let Spawned {
        mut child, logs, ..
    } = spawned;
    client.generate(greedy(2)).await.unwrap();
    let threads = thread_niceness(child.id());
    child.kill().unwrap();
    child.wait().unwrap();
    drop(logs);
    let main = threads[0].1;
    let of = |prefix: &str| -> Vec<i32> {
        threads
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|&(_, nice)| nice)
            .collect()
    };
    let (model_thread, serving) = (of("lynx-model"), of("lynx-serving"));
    assert_eq!(model_thread, [main], "{threads:?}");
    // The compute pool: rayon's, where every CPU kernel runs.
    let compute = of("lynx-compute-");
    assert!(
        !compute.is_empty() && compute.iter().all(|&n| n == main),
        "{threads:?}"
    );
    let lowered = (main + 7).min(19);
    assert!(
        serving.len() >= 3,
        "runtime workers and a blocking thread: {threads:?}"
    );
    assert!(serving.iter().all(|&n| n == lowered), "{threads:?}");
}

/// A shutdown while the model loads stops the worker at once (nothing was admitted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_the_model_load_stops_at_once() {
    let server = lynx_worker::serve::Server::bind(crate::harness::config())
        .await
        .unwrap();
    let http = server.http_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let slow_load = || {
        std::thread::sleep(Duration::from_secs(3));
        Err::<lynx_worker::backend::Loaded, _>("never loaded".to_owned())
    };
    let task = tokio::spawn(server.run(slow_load, async {
        stopped.await.ok();
    }));
    let t0 = Instant::now();
    while http_get(http, "/healthz").await.0 != 200 {
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "no liveness while loading"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        http_get(http, "/readyz").await,
        (503, "loading\n".to_owned())
    );
    stop.send(()).unwrap();
    let t0 = Instant::now();
    task.await.unwrap().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(2), "waited for the load");
}
