//! `lynx-worker serve`: the gRPC server (`lynx.v1.Lynx`, `grpc.health.v1`, reflection) and the
//! HTTP listener (`/metrics`, `/healthz`, `/readyz`) around the model thread ([`crate::runner`]).
//!
//! Life of a server ([`Server::run`]): HTTP up (not ready) -> model loaded -> model thread and
//! gRPC up -> one warm-up request -> ready (health SERVING) -> shutdown signal -> draining
//! (readiness false, health NOT_SERVING, new requests UNAVAILABLE) -> every admitted request
//! answered, or the drain timeout -> listeners closed -> `Ok(())`.

pub mod auth;
pub mod connection_age;
pub mod decode_errors;
pub mod door;
pub mod grpc;
pub mod http;
pub mod lifecycle;
pub mod limits;
pub mod openai;
pub mod prepare;
pub mod priority;
pub mod status;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lynx_proto::v1::lynx_server::LynxServer;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use crate::backend::{Loaded, ServedModel};
use crate::generation::{DecodingMode, GenerationParams};
use crate::metrics::Metrics;
use crate::prompt::prompt_token_ids;
use crate::runner::{self, Event, Job, Pixels, RunnerConfig, VisionItem};
use decode_errors::DecodeErrors;
use door::Door;
use grpc::{LynxService, Shared};
use lifecycle::Lifecycle;
use limits::Limits;
use prepare::{PrepareConfig, Preparer};

/// Everything `serve` is configured with.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// gRPC listen address.
    pub grpc_addr: SocketAddr,
    /// HTTP listen address.
    pub http_addr: SocketAddr,
    /// Scheduler and encoder cache.
    pub runner: RunnerConfig,
    /// Input limits.
    pub limits: Limits,
    /// Bounds of request preparation (decoding, tokenizing).
    pub prepare: PrepareConfig,
    /// How long admitted requests may take to finish after the shutdown signal.
    pub drain_timeout: Duration,
    /// Serve gRPC over TLS with this certificate chain and key (PEM).
    pub tls: Option<TlsFiles>,
    /// Bearer tokens accepted by `lynx.v1.Lynx` (empty: no authentication).
    pub auth_tokens: Vec<String>,
    /// Hosts whose `http(s)` image URLs the OpenAI API fetches (empty: `data:` URIs only).
    pub image_url_hosts: Vec<String>,
    /// gRPC connections older than this are asked to close (HTTP/2 GOAWAY), so that long-lived
    /// clients connect again and spread over new workers; none: connections live on.
    pub max_connection_age: Option<Duration>,
    /// How long a closing connection's requests may still take before it is cut.
    pub max_connection_age_grace: Duration,
}

/// PEM files of the server's TLS identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain.
    pub cert: std::path::PathBuf,
    /// Private key.
    pub key: std::path::PathBuf,
}

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The model could not be loaded.
    #[error("cannot load the model: {0}")]
    Load(String),
    /// A metric could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// Server reflection could not be built.
    #[error("reflection: {0}")]
    Reflection(String),
    /// The model thread could not be started.
    #[error("cannot start the model thread: {0}")]
    Thread(std::io::Error),
    /// The TLS certificate or key cannot be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// The HTTP client for image URLs cannot be built.
    #[error("{0}")]
    ImageUrls(String),
    /// The warm-up request failed.
    #[error("warm-up request failed: {0}")]
    Warmup(String),
    /// A listener failed while serving.
    #[error("{0} server failed: {1}")]
    Server(&'static str, String),
}

/// How long the handlers cut off by the drain timeout get to send their UNAVAILABLE.
const CUT_OFF_FLUSH: Duration = Duration::from_millis(500);

/// Bound listeners, before the model is loaded.
#[derive(Debug)]
pub struct Server {
    grpc: TcpListener,
    http: TcpListener,
    cfg: ServeConfig,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

impl Server {
    /// Binds both listeners (port 0 picks a free port).
    pub async fn bind(cfg: ServeConfig) -> Result<Self, ServeError> {
        Ok(Self {
            grpc: bind(cfg.grpc_addr).await?,
            http: bind(cfg.http_addr).await?,
            cfg,
        })
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc.local_addr().unwrap_or(self.cfg.grpc_addr)
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr().unwrap_or(self.cfg.http_addr)
    }

    /// Serves until `shutdown` resolves, then drains. `load` runs on the blocking pool while the
    /// HTTP listener already answers (not ready); `shutdown` during the load ends `run` at once.
    pub async fn run<L>(
        self,
        load: L,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError>
    where
        L: FnOnce() -> Result<Loaded, String> + Send + 'static,
    {
        let (grpc_addr, http_addr) = (self.grpc_addr(), self.http_addr());
        let Self { grpc, http, cfg } = self;
        // TLS problems are start-up errors, before the model loads.
        let mut builder = tonic::transport::Server::builder();
        // GOAWAY at the age; the cut after the grace is `connection_age::AgedStream`'s.
        if let Some(age) = cfg.max_connection_age {
            builder = builder.max_connection_age(age);
        }
        if let Some(tls) = &cfg.tls {
            builder = builder.tls_config(tls_config(tls)?).map_err(|e| {
                ServeError::Tls(format!(
                    "certificate {} with key {}: {e}",
                    tls.cert.display(),
                    tls.key.display()
                ))
            })?;
        }
        let metrics = Metrics::new()?;
        let lifecycle = Arc::new(Lifecycle::default());
        let (http_stop, http_stopped) = oneshot::channel::<()>();
        let tokens = auth::Tokens::new(cfg.auth_tokens.clone());
        let fetcher = openai::fetch::ImageFetcher::new(cfg.image_url_hosts.clone())
            .map_err(ServeError::ImageUrls)?;
        let openai = openai::OpenAiState::new(
            tokens.clone(),
            metrics.clone(),
            Arc::clone(&lifecycle),
            fetcher,
        );
        let http_app = http::router(Arc::clone(&lifecycle), metrics.clone())
            .merge(openai::routes(openai.clone()));
        // Streamed answers (server-sent events) must not wait for Nagle's algorithm either.
        let http = axum::serve::ListenerExt::tap_io(http, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        let http_task = tokio::spawn(async move {
            axum::serve(http, http_app)
                .with_graceful_shutdown(async {
                    http_stopped.await.ok();
                })
                .await
        });
        tracing::info!(%http_addr, "HTTP listening; loading the model");

        let mut shutdown = std::pin::pin!(shutdown);
        let loaded = tokio::select! {
            loaded = tokio::task::spawn_blocking(load) => loaded,
            () = &mut shutdown => {
                // Nothing admitted yet: stop at once (the load is abandoned).
                tracing::info!("shutdown signal while loading the model");
                http_stop.send(()).ok();
                tokio::time::timeout(Duration::from_secs(1), http_task).await.ok();
                return Ok(());
            }
        };
        let Loaded { model, backend } = loaded
            .map_err(|e| ServeError::Load(e.to_string()))?
            .map_err(ServeError::Load)?;
        let model = Arc::new(model);
        let (engine, thread) = runner::spawn_any(
            Arc::clone(&model),
            backend,
            cfg.runner.clone(),
            metrics.clone(),
        )
        .map_err(ServeError::Thread)?;

        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        health.set_not_serving::<LynxServer<LynxService>>().await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(lynx_proto::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| ServeError::Reflection(e.to_string()))?;
        let shared = Arc::new(Shared {
            model: Arc::clone(&model),
            limits: cfg.limits.clone(),
            engine: engine.clone(),
            metrics: metrics.clone(),
            lifecycle: Arc::clone(&lifecycle),
            preparer: Preparer::new(cfg.prepare, metrics.clone()),
        });
        let (grpc_stop, grpc_stopped) = oneshot::channel::<()>();
        openai.serve(Arc::clone(&shared));
        // Small streamed messages must not wait for Nagle's algorithm (+40 ms per token).
        let accepted = metrics.grpc_connections.clone();
        let lifetime = cfg
            .max_connection_age
            .map(|age| age + cfg.max_connection_age_grace);
        let incoming = tokio_stream::StreamExt::map(
            TcpIncoming::from(grpc).with_nodelay(Some(true)),
            move |conn| {
                conn.map(|tcp| {
                    accepted.inc();
                    connection_age::AgedStream::new(tcp, lifetime)
                })
            },
        );
        let grpc_task = tokio::spawn(
            builder
                .add_service(health_service)
                .add_service(reflection)
                .add_service(Door::new(
                    DecodeErrors::new(
                        LynxServer::new(LynxService::new(Arc::clone(&shared)))
                            .max_decoding_message_size(cfg.limits.max_request_bytes),
                        metrics.clone(),
                    ),
                    tokens.clone(),
                    shared,
                ))
                .serve_with_incoming_shutdown(incoming, async {
                    grpc_stopped.await.ok();
                }),
        );
        tracing::info!(
            %grpc_addr,
            model = %model.config.model_name,
            device = %model.device,
            tls = cfg.tls.is_some(),
            auth = tokens.enabled(),
            "gRPC listening; warming up"
        );

        warm_up(&model, &engine).await?;
        drop(engine);
        lifecycle.set_ready();
        health.set_service_status("", ServingStatus::Serving).await;
        health.set_serving::<LynxServer<LynxService>>().await;
        tracing::info!("ready");

        shutdown.await;
        lifecycle.start_drain();
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        health.set_not_serving::<LynxServer<LynxService>>().await;
        tracing::info!(
            in_flight = lifecycle.in_flight_now(),
            timeout_s = cfg.drain_timeout.as_secs_f64(),
            "draining"
        );
        let drain_end = Instant::now() + cfg.drain_timeout;
        while lifecycle.in_flight_now() > 0 && Instant::now() < drain_end {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left = lifecycle.in_flight_now();
        if left > 0 {
            tracing::warn!(left, "drain timeout: cutting off the requests in flight");
            // Their handlers answer UNAVAILABLE saying why; give them a moment to send it.
            lifecycle.cut_off(cfg.drain_timeout);
            let flushed = Instant::now() + CUT_OFF_FLUSH;
            while lifecycle.in_flight_now() > 0 && Instant::now() < flushed {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        grpc_stop.send(()).ok();
        http_stop.send(()).ok();
        // The OpenAI routes hold the model thread's handle too.
        openai.release();
        let grace = Duration::from_secs(1);
        let grpc_result = tokio::time::timeout(grace, grpc_task).await;
        let http_result = tokio::time::timeout(grace, http_task).await;
        if let Ok(Ok(Err(e))) = grpc_result {
            return Err(ServeError::Server("gRPC", e.to_string()));
        }
        if let Ok(Ok(Err(e))) = http_result {
            return Err(ServeError::Server("HTTP", e.to_string()));
        }
        if left == 0 {
            // Every handle is gone with the gRPC service: the thread ends at once.
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .ok();
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// The server TLS configuration of `files`; every problem names the file it is in.
fn tls_config(files: &TlsFiles) -> Result<tonic::transport::ServerTlsConfig, ServeError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| ServeError::Tls(format!("cannot read {}: {e}", p.display())))
    };
    let (cert, key) = (read(&files.cert)?, read(&files.key)?);
    let certs = CertificateDer::pem_slice_iter(&cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ServeError::Tls(format!("{}: {e}", files.cert.display())))?;
    if certs.is_empty() {
        return Err(ServeError::Tls(format!(
            "{} holds no PEM certificate",
            files.cert.display()
        )));
    }
    PrivateKeyDer::from_pem_slice(&key).map_err(|e| {
        ServeError::Tls(format!(
            "{} holds no usable PEM private key: {e}",
            files.key.display()
        ))
    })?;
    let identity = tonic::transport::Identity::from_pem(cert, key);
    Ok(tonic::transport::ServerTlsConfig::new().identity(identity))
}

/// Runs one multimodal request through the model thread (a blank image and a short prompt, two
/// greedy tokens) so that the first client request does not pay for lazy initialisation.
async fn warm_up(model: &ServedModel, engine: &runner::EngineHandle) -> Result<(), ServeError> {
    let warmup_err = |e: &dyn std::fmt::Display| ServeError::Warmup(e.to_string());
    let res = model.config.vision.image_res as usize;
    let prompt_ids =
        prompt_token_ids(&model.tokenizer, &model.config, "warm-up").map_err(|e| warmup_err(&e))?;
    let mut params =
        GenerationParams::from_defaults(&model.config.generation, DecodingMode::Greedy);
    params.max_new_tokens = 2;
    let (tx, mut rx) = mpsc::channel(4);
    let job = Job {
        prompt_ids,
        vision: vec![VisionItem {
            key: *b"lynx-worker warm-up blank image!",
            pixels: Pixels::Image(vec![0.0; 3 * res * res]),
        }],
        params,
        stop: Vec::new(),
        stream: false,
        wait_for_batch: false,
        priority: u8::MAX,
        deadline: None,
        received: Instant::now(),
        events: tx,
    };
    engine.submit(job).map_err(|e| warmup_err(&e))?;
    loop {
        match rx.recv().await {
            Some(Event::Done(Ok(_))) => return Ok(()),
            Some(Event::Done(Err(e))) => return Err(warmup_err(&e)),
            Some(Event::Delta { .. }) => {}
            None => return Err(warmup_err(&"the model thread stopped")),
        }
    }
}
