//! `lynx-router` in front of real workers on 127.0.0.x: image affinity (the worker that encoded
//! an image gets it again and its encoder cache hits), load (an overloaded worker is avoided),
//! holding at zero workers, retries of requests a worker never started, the OpenAI API.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lynx_proto::test_dns::TestDns;
use lynx_proto::v1::lynx_client::LynxClient;
use lynx_proto::v1::{DecodingMode, GenerateRequest};
use lynx_router::fleet::FleetConfig;
use lynx_router::policy::{PickerConfig, Policy};
use lynx_router::route::HoldConfig;
use lynx_router::server::{Router, RouterConfig};
use serde_json::json;
use tokio::sync::oneshot;
use tonic::Code;

use crate::balancing::{fleet, ips, ok_answers, NAME};
use crate::harness::{http_get, input, request, with_timeout, Metrics, TestServer};

struct TestRouter {
    grpc: SocketAddr,
    http: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl TestRouter {
    async fn start(
        workers: String,
        worker_http_port: u16,
        tune: impl FnOnce(&mut RouterConfig),
    ) -> Self {
        let mut cfg = RouterConfig {
            grpc_addr: "127.0.0.1:0".parse().unwrap(),
            http_addr: "127.0.0.1:0".parse().unwrap(),
            fleet: FleetConfig {
                target: workers.parse().unwrap(),
                http_port: worker_http_port,
                resolve_every: Duration::from_millis(100),
                scrape_every: Duration::from_millis(50),
            },
            picker: PickerConfig::default(),
            hold: HoldConfig {
                max_held: 16,
                timeout: Duration::from_secs(30),
            },
            max_attempts: 3,
            drain_timeout: Duration::from_secs(5),
            auth_tokens: Vec::new(),
        };
        tune(&mut cfg);
        let router = Router::bind(cfg).await.unwrap();
        let (grpc, http) = (router.grpc_addr(), router.http_addr());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(router.run(async {
            stopped.await.ok();
        }));
        Self {
            grpc,
            http,
            _stop: stop,
        }
    }

    async fn client(&self) -> LynxClient<tonic::transport::Channel> {
        LynxClient::connect(format!("http://{}", self.grpc))
            .await
            .unwrap()
    }

    async fn metrics(&self) -> Metrics {
        let (status, body) = http_get(self.http, "/metrics").await;
        assert_eq!(status, 200, "{body}");
        Metrics::parse(&body)
    }

    /// Waits until the router sees `n` ready workers.
    async fn wait_ready(&self, n: usize) {
        let t0 = Instant::now();
        while self.metrics().await.get("lynx_router_ready_workers") != n as f64 {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{n} workers never ready"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn image_request(image: &str) -> GenerateRequest {
    request(
        "What is in the image?",
        &[&input(image)],
        None,
        DecodingMode::Greedy,
        2,
    )
}

async fn hits(w: &TestServer) -> f64 {
    w.metrics().await.get("lynx_encoder_cache_hits_total")
}

/// Two workers on 127.0.0.1 and .2 (same ports): the first `tune`d, the second not.
async fn pair(tune: impl FnOnce(&mut lynx_worker::serve::ServeConfig)) -> Vec<TestServer> {
    let first = TestServer::start(tune).await;
    let (port, http_port) = (first.grpc.port(), first.http.port());
    let second = TestServer::start(|c| {
        c.grpc_addr = SocketAddr::from(([127, 0, 0, 2], port));
        c.http_addr = SocketAddr::from(([127, 0, 0, 2], http_port));
    })
    .await;
    vec![first, second]
}

fn workers_target(workers: &[TestServer]) -> String {
    let list: Vec<String> = workers.iter().map(|w| w.grpc.to_string()).collect();
    format!("ipv4:{}", list.join(","))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_image_goes_to_the_worker_that_encoded_it() {
    let workers = fleet(2, |_| {}).await;
    let router = TestRouter::start(workers_target(&workers), workers[0].http.port(), |_| {}).await;
    router.wait_ready(2).await;
    let mut client = router.client().await;
    let before = [hits(&workers[0]).await, hits(&workers[1]).await];
    for _ in 0..4 {
        client
            .generate(image_request("img_landscape.png"))
            .await
            .unwrap();
    }
    let gained = [
        hits(&workers[0]).await - before[0],
        hits(&workers[1]).await - before[1],
    ];
    // One worker encoded the image and got the three repeats: three hits there, none elsewhere.
    gained
        .iter()
        .for_each(|g| assert!(*g == 0.0 || *g == 3.0, "{gained:?}"));
    assert_eq!(gained.iter().sum::<f64>(), 3.0, "{gained:?}");
    let m = router.metrics().await;
    assert_eq!(
        m.get("lynx_router_decisions_total{reason=\"affinity\"}"),
        3.0
    );
    assert_eq!(m.get("lynx_router_requests_total{code=\"OK\"}"), 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_worker_is_avoided_even_with_affinity() {
    // A long batching delay keeps the held requests waiting in the first worker's queue.
    let workers = pair(|c| c.runner.scheduler.max_batch_delay = Duration::from_secs(30)).await;
    let (busy, idle) = (&workers[0], &workers[1]);
    let router = TestRouter::start(workers_target(&workers), busy.http.port(), |_| {}).await;
    router.wait_ready(2).await;
    let mut client = router.client().await;
    // Equal loads: the first pick is the first worker (by address), which remembers the image;
    // it would wait 30 s for a batch, so the request gives up after 300 ms.
    let status = client
        .generate(with_timeout(
            image_request("img_landscape.png"),
            Duration::from_millis(300),
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    assert_eq!(
        ok_answers(idle).await,
        0.0,
        "the image went to the idle worker"
    );
    let held = busy.hold_in_queue(6).await;
    // The router reads the queue at its next scrape.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = ok_answers(idle).await;
    for _ in 0..3 {
        client
            .generate(image_request("img_landscape.png"))
            .await
            .unwrap();
    }
    assert_eq!(ok_answers(idle).await - before, 3.0);
    let m = router.metrics().await;
    assert!(m.get("lynx_router_decisions_total{reason=\"affinity_overloaded\"}") >= 1.0);
    held.into_iter().for_each(|h| h.abort());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_zero_workers_a_request_is_held_until_one_is_ready_or_refused_after_the_hold() {
    let dns = TestDns::start().await.unwrap();
    // The name has no worker yet; the first one will listen on 127.0.0.1 at ports known only
    // once it runs, so the router is told the ports of a probe worker started and stopped first.
    let probe = TestServer::start(|_| {}).await;
    let (port, http_port) = (probe.grpc.port(), probe.http.port());
    probe.stop().await.unwrap();
    let target = format!("dns://{}/{NAME}:{port}", dns.addr());
    let router = TestRouter::start(target, http_port, |c| {
        c.hold.timeout = Duration::from_secs(60);
    })
    .await;
    let mut client = router.client().await;
    let held =
        tokio::spawn(async move { client.generate(image_request("img_landscape.png")).await });
    let t0 = Instant::now();
    while router.metrics().await.get("lynx_router_pending_requests") != 1.0 {
        assert!(t0.elapsed() < Duration::from_secs(10), "never held");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Scale from zero: a worker starts, the name resolves to it, the held request is answered.
    let worker = TestServer::start(|c| {
        c.grpc_addr = SocketAddr::from(([127, 0, 0, 1], port));
        c.http_addr = SocketAddr::from(([127, 0, 0, 1], http_port));
    })
    .await;
    dns.set(NAME, &ips(&[&worker]));
    let answer = held.await.unwrap().unwrap().into_inner();
    assert!(!answer.token_ids.is_empty());
    let m = router.metrics().await;
    assert_eq!(m.get("lynx_router_pending_requests"), 0.0);
    assert_eq!(m.get("lynx_router_hold_seconds_count"), 1.0);

    // A router whose hold times out says so.
    let empty = format!("dns://{}/nobody.lynx.test:{port}", dns.addr());
    let short = TestRouter::start(empty, http_port, |c| {
        c.hold.timeout = Duration::from_millis(300);
    })
    .await;
    let status = short
        .client()
        .await
        .generate(image_request("img_landscape.png"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("hold_timeout_seconds"),
        "{status:?}"
    );

    // A held chat completion is answered 504 once its own `x-request-timeout` passes, well
    // before the router's hold ends, and counted as DEADLINE_EXCEEDED.
    let patient = TestRouter::start(
        format!("dns://{}/nobody.lynx.test:{port}", dns.addr()),
        http_port,
        |c| c.hold.timeout = Duration::from_secs(60),
    )
    .await;
    let body = crate::openai::chat("lynx", "hi", &input("img_landscape.png"), json!({}));
    let t0 = Instant::now();
    let (status, text) = crate::openai::post_with(
        patient.http,
        "/v1/chat/completions",
        &body,
        "x-request-timeout: 0.3\r\n",
    )
    .await;
    assert_eq!(status, 504, "{text}");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert!(text.contains("deadline"), "{text}");
    let counted = patient.metrics().await;
    assert_eq!(
        counted.get("lynx_router_requests_total{code=\"DEADLINE_EXCEEDED\"}"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_refused_before_its_start_goes_to_another_worker() {
    // Tiny queues, kept full on one worker; the router's view of the load is never refreshed
    // (one scrape an hour), so it does send there, and the refusal is retried elsewhere.
    let workers = pair(|c| {
        c.runner.scheduler.max_queue = 2;
        c.runner.scheduler.max_batch_delay = Duration::from_secs(30);
    })
    .await;
    let router = TestRouter::start(workers_target(&workers), workers[0].http.port(), |c| {
        c.fleet.scrape_every = Duration::from_secs(3600);
        c.picker.policy = Policy::RoundRobin;
    })
    .await;
    router.wait_ready(2).await;
    let held = workers[0].hold_in_queue(2).await;
    let mut client = router.client().await;
    let mut other = client.clone();
    let (a, b) = tokio::join!(
        other.generate(request("hi", &[], None, DecodingMode::Greedy, 2)),
        client.generate(request("hello", &[], None, DecodingMode::Greedy, 2)),
    );
    a.unwrap();
    b.unwrap();
    // Every refusal of the full worker was sent again, and answered by the other one.
    let refused = workers[0]
        .metrics()
        .await
        .get_or_zero("lynx_requests_total{code=\"RESOURCE_EXHAUSTED\"}");
    let retries = router.metrics().await.get("lynx_router_retries_total");
    assert!(
        retries >= 1.0 && retries == refused,
        "{retries} retries, {refused} refusals"
    );
    assert_eq!(ok_answers(&workers[1]).await, 2.0);
    held.into_iter().for_each(|h| h.abort());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_api_goes_through_the_router() {
    let workers = fleet(1, |_| {}).await;
    let router = TestRouter::start(workers_target(&workers), workers[0].http.port(), |_| {}).await;
    router.wait_ready(1).await;
    let (status, body) = http_get(router.http, "/v1/models").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"object\":\"list\""), "{body}");
    let models: serde_json::Value = serde_json::from_str(&body).unwrap();
    let model = models["data"][0]["id"].as_str().unwrap().to_owned();
    let (status, _) = http_get(router.http, "/readyz").await;
    assert_eq!(status, 200);
    let body = crate::openai::chat(&model, "hi", &input("img_landscape.png"), json!({}));
    let (status, text) =
        crate::openai::post_with(router.http, "/v1/chat/completions", &body, "").await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("chat.completion"), "{text}");
    assert_eq!(
        router
            .metrics()
            .await
            .get("lynx_router_requests_total{code=\"OK\"}"),
        1.0
    );
    assert_eq!(ok_answers(&workers[0]).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_stream_gives_the_client_a_clear_error() {
    let model = crate::common::model_dir();
    let mut worker =
        crate::lifecycle::spawn_worker(&[std::ffi::OsStr::new("--model"), model.as_os_str()]);
    drop(worker.ready_client(Duration::from_secs(30)).await);
    let router =
        TestRouter::start(format!("ipv4:{}", worker.grpc), worker.http.port(), |_| {}).await;
    router.wait_ready(1).await;
    // Sampling at a high temperature keeps the model from ending early.
    let mut req = request(
        "Describe the image.",
        &[&input("img_landscape.png")],
        None,
        DecodingMode::Sample,
        512,
    );
    if let Some(p) = req.parameters.as_mut() {
        p.temperature = Some(5.0);
        p.seed = Some(7);
    }
    let mut stream = router
        .client()
        .await
        .generate_stream(req)
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap();
    assert!(first.is_some());
    worker.child.kill().unwrap();
    worker.child.wait().unwrap();
    let status = loop {
        match stream.message().await {
            Ok(Some(msg)) => assert!(
                !matches!(
                    msg.event,
                    Some(lynx_proto::v1::generate_stream_response::Event::Final(_))
                ),
                "the answer was complete before the worker was killed"
            ),
            Ok(None) => panic!("the stream ended without an error"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status
            .message()
            .contains(&format!("worker {}", worker.grpc)),
        "{status:?}"
    );
    assert!(status.message().contains("not retried"), "{status:?}");
}
