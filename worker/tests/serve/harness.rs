//! An in-process worker on loopback ports with the fixture model, a gRPC client, an HTTP/1.1
//! getter and a Prometheus text parser.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lynx_proto::v1::lynx_client::LynxClient;
use lynx_proto::v1::{self, DecodingMode, DecodingParameters, GenerateRequest};
use lynx_worker::cli::device::load_cpu;
use lynx_worker::cli::{EmbeddedArg, ModelArgs};
use lynx_worker::runner::RunnerConfig;
use lynx_worker::scheduler::SchedulerConfig;
use lynx_worker::serve::limits::Limits;
use lynx_worker::serve::prepare::PrepareConfig;
use lynx_worker::serve::{ServeConfig, ServeError, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::common;

/// Defaults for tests: loopback, port 0, a short batching delay.
pub fn config() -> ServeConfig {
    ServeConfig {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        runner: RunnerConfig {
            scheduler: SchedulerConfig {
                max_batch_size: 64,
                max_batch_delay: Duration::from_millis(5),
                max_batch_total_tokens: 1 << 20,
                max_queue: 256,
                kv_block_size: 16,
                kv_blocks: 1 << 16,
                ageing: Duration::from_secs(600),
            },
            encoder_cache_bytes: 64 << 20,
        },
        limits: Limits::default(),
        prepare: PrepareConfig::default(),
        drain_timeout: Duration::from_secs(30),
        tls: None,
        auth_tokens: Vec::new(),
        image_url_hosts: Vec::new(),
        max_connection_age: None,
        max_connection_age_grace: Duration::from_secs(600),
    }
}

/// A running in-process worker.
pub struct TestServer {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
}

impl TestServer {
    /// Starts a worker on the fixture model with `tune`d defaults and waits until it is ready.
    pub async fn start(tune: impl FnOnce(&mut ServeConfig)) -> Self {
        let mut cfg = config();
        tune(&mut cfg);
        let s = &cfg.runner.scheduler;
        let (blocks, block_size) = (s.kv_blocks, s.kv_block_size);
        let load = move || {
            let args = ModelArgs {
                model: Some(common::model_dir()),
                config: None,
                embedded: EmbeddedArg::Tiny,
            };
            load_cpu(&args, blocks, block_size).map_err(|e| e.0)
        };
        Self::start_with(move |c| *c = cfg, load).await
    }

    /// Starts a worker whose model `load` builds (any compute backend).
    pub async fn start_with<L>(tune: impl FnOnce(&mut ServeConfig), load: L) -> Self
    where
        L: FnOnce() -> Result<lynx_worker::backend::Loaded, String> + Send + 'static,
    {
        let mut cfg = config();
        tune(&mut cfg);
        let server = Server::bind(cfg).await.unwrap();
        let (grpc, http) = (server.grpc_addr(), server.http_addr());
        assert!(grpc.ip().is_loopback() && http.ip().is_loopback());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(load, async {
            stopped.await.ok();
        }));
        let s = Self {
            grpc,
            http,
            stop: Some(stop),
            task: Some(task),
        };
        let t0 = Instant::now();
        while http_get(s.http, "/readyz").await.0 != 200 {
            assert!(t0.elapsed() < Duration::from_secs(60), "worker never ready");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        s
    }

    /// A connected client.
    pub async fn client(&self) -> LynxClient<Channel> {
        LynxClient::connect(format!("http://{}", self.grpc))
            .await
            .unwrap()
    }

    /// Sends the shutdown signal (starts the drain).
    pub fn signal_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.send(()).ok();
        }
    }

    /// Signals shutdown and waits for `run` to return.
    pub async fn stop(mut self) -> Result<(), ServeError> {
        self.signal_shutdown();
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the worker stops")
            .unwrap()
    }

    /// The parsed `/metrics`.
    pub async fn metrics(&self) -> Metrics {
        let (status, body) = http_get(self.http, "/metrics").await;
        assert_eq!(status, 200, "{body}");
        Metrics::parse(&body)
    }

    /// Polls `/metrics` until `ok` holds (5 s at most).
    pub async fn wait_metrics(&self, what: &str, ok: impl Fn(&Metrics) -> bool) -> Metrics {
        let t0 = Instant::now();
        loop {
            let m = self.metrics().await;
            if ok(&m) {
                return m;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "timed out waiting for {what}: {m:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Puts `n` short requests in the queue and waits until they all wait there (start the
    /// server with a long `max_batch_delay` to keep them waiting); aborting the returned tasks
    /// frees their places.
    pub async fn hold_in_queue(&self, n: usize) -> Vec<JoinHandle<Result<(), tonic::Status>>> {
        let mut waiting = Vec::new();
        for _ in 0..n {
            let mut client = self.client().await;
            let req = request("hi", &[], None, DecodingMode::Greedy, 2);
            waiting.push(tokio::spawn(
                async move { client.generate(req).await.map(drop) },
            ));
        }
        self.wait_metrics(&format!("{n} waiting"), |m| {
            m.get("lynx_queue_length") == n as f64
        })
        .await;
        waiting
    }
}

/// A raw gRPC client on a new connection to `addr`, ready for any codec.
pub async fn raw_grpc(addr: SocketAddr) -> tonic::client::Grpc<Channel> {
    let channel = tonic::transport::Endpoint::new(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    grpc
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.signal_shutdown();
    }
}

/// `GET path` over HTTP/1.1: status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return (0, String::new());
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let (status, _, body) = parse_http(raw);
    (status, body)
}

/// An HTTP/1 response as status, head and body (a chunked body joined).
pub fn parse_http(raw: Vec<u8>) -> (u16, String, String) {
    let text = String::from_utf8(raw).unwrap();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, head.to_owned(), body)
}

/// The payload of an HTTP/1.1 chunked body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size + 2 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

/// Samples of a Prometheus text exposition, keyed by `name{labels}` as printed.
#[derive(Debug)]
pub struct Metrics(pub HashMap<String, f64>);

impl Metrics {
    /// Parses every sample line; a malformed line fails the test.
    pub fn parse(text: &str) -> Self {
        let mut samples = HashMap::new();
        for line in text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (key, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line {line}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line}"));
            samples.insert(key.to_owned(), value);
        }
        Self(samples)
    }

    /// A sample's value; a missing sample fails the test.
    pub fn get(&self, key: &str) -> f64 {
        *self
            .0
            .get(key)
            .unwrap_or_else(|| panic!("no sample {key} in /metrics"))
    }

    /// A sample's value, 0 when absent (label values not seen yet).
    pub fn get_or_zero(&self, key: &str) -> f64 {
        self.0.get(key).copied().unwrap_or(0.0)
    }
}

/// An input file of the fixture.
pub fn input(name: &str) -> Vec<u8> {
    std::fs::read(common::tiny().join("inputs").join(name)).unwrap()
}

/// The encoded frames of a fixture video (the official JSON list of base64 frames).
pub fn video_frames(name: &str) -> Vec<Vec<u8>> {
    lynx_worker::vision::parse_video_json(&input(name)).unwrap()
}

/// A request with `images` (or a video) and decoding `mode` for `max_new` tokens.
pub fn request(
    instruction: &str,
    images: &[&[u8]],
    video: Option<Vec<Vec<u8>>>,
    mode: DecodingMode,
    max_new: u32,
) -> GenerateRequest {
    GenerateRequest {
        images: images
            .iter()
            .map(|d| v1::Image { data: d.to_vec() })
            .collect(),
        video: video.map(|frames| v1::Video { frames }),
        instruction: instruction.to_owned(),
        parameters: Some(DecodingParameters {
            mode: mode as i32,
            max_new_tokens: Some(max_new),
            ..Default::default()
        }),
        priority: 0,
        client_request_id: String::new(),
    }
}

/// The request with a gRPC deadline.
pub fn with_timeout<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(timeout);
    r
}

/// Sends a `Generate` whose instruction is not UTF-8 (with `token` as its bearer token) to the
/// worker at `grpc` and returns the status it gets.
pub async fn generate_invalid_utf8(grpc: SocketAddr, token: Option<&str>) -> tonic::Status {
    /// `GenerateRequest` with the instruction as raw bytes (same field number).
    #[derive(Clone, PartialEq, prost::Message)]
    struct RawRequest {
        #[prost(bytes = "vec", tag = "3")]
        instruction: Vec<u8>,
    }
    let mut grpc = raw_grpc(grpc).await;
    let codec: tonic_prost::ProstCodec<RawRequest, v1::GenerateResponse> = Default::default();
    let mut req = tonic::Request::new(RawRequest {
        instruction: vec![b'h', b'i', 0xFF, 0xFE],
    });
    if let Some(t) = token {
        let value = format!("Bearer {t}").parse().unwrap();
        req.metadata_mut().insert("authorization", value);
    }
    let path = "/lynx.v1.Lynx/Generate".parse().unwrap();
    grpc.unary(req, path, codec).await.unwrap_err()
}

/// The `lynx` client binary (crate `lynx-client`), built beside this test by
/// `cargo test --workspace` (`target/<profile>/lynx`).
pub fn lynx_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("target/<profile>/deps");
    let path = profile_dir.join("lynx");
    assert!(
        path.is_file(),
        "{} is not built: build the workspace (cargo build --workspace --bins)",
        path.display()
    );
    path
}
