//! A running router: both listeners, the fleet watcher, and the drain.
//!
//! Life: listeners bound -> fleet watched (resolve + scrape) -> serving (ready at once: with no
//! worker ready, requests are held) -> shutdown signal -> draining (`/readyz` 503, new requests
//! still routed while the Service stops sending them) -> every forwarded and held request
//! answered, or the drain timeout -> listeners closed.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lynx_proto::v1::lynx_server::LynxServer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::server::TcpIncoming;

use crate::auth::Tokens;
use crate::fleet::{Fleet, FleetConfig};
use crate::grpc::RouterService;
use crate::http::{self, HttpState};
use crate::metrics::Metrics;
use crate::policy::PickerConfig;
use crate::route::{HoldConfig, Routing};

/// Everything the router is configured with.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// gRPC listen address (`lynx.v1.Lynx`).
    pub grpc_addr: SocketAddr,
    /// HTTP listen address (OpenAI API, `/metrics`, `/healthz`, `/readyz`).
    pub http_addr: SocketAddr,
    /// Where the workers are and how they are watched.
    pub fleet: FleetConfig,
    /// The routing policy.
    pub picker: PickerConfig,
    /// Holding at zero ready workers.
    pub hold: HoldConfig,
    /// Workers tried per request at most (a retry only follows a refusal before the start).
    pub max_attempts: usize,
    /// How long forwarded and held requests may take to finish after the shutdown signal.
    pub drain_timeout: Duration,
    /// Bearer tokens clients must present (empty: none).
    pub auth_tokens: Vec<String>,
}

/// Why the router could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// A metric could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Client(String),
    /// A listener failed while serving.
    #[error("{0} server failed: {1}")]
    Server(&'static str, String),
}

/// Bound listeners.
#[derive(Debug)]
pub struct Router {
    grpc: TcpListener,
    http: TcpListener,
    cfg: RouterConfig,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, RouterError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RouterError::Bind { addr, source })
}

impl Router {
    /// Binds both listeners (port 0 picks a free one).
    pub async fn bind(cfg: RouterConfig) -> Result<Self, RouterError> {
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

    /// Serves until `shutdown` resolves, then drains.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), RouterError> {
        let (grpc_addr, http_addr) = (self.grpc_addr(), self.http_addr());
        let Self { grpc, http, cfg } = self;
        let metrics = Metrics::new()?;
        let fleet = Fleet::new(metrics.clone());
        let watcher = fleet.watch(cfg.fleet.clone());
        let routing = Arc::new(Routing::new(
            Arc::clone(&fleet),
            cfg.picker,
            cfg.hold,
            metrics.clone(),
        ));
        let tokens = Tokens::new(&cfg.auth_tokens);
        let draining = Arc::new(AtomicBool::new(false));
        let client = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .build()
            .map_err(|e| RouterError::Client(e.to_string()))?;
        let http_app = http::router(HttpState {
            routing: Arc::clone(&routing),
            metrics: metrics.clone(),
            tokens: tokens.clone(),
            draining: Arc::clone(&draining),
            max_attempts: cfg.max_attempts,
            client,
        });
        let (http_stop, http_stopped) = oneshot::channel::<()>();
        let http_task = tokio::spawn(async move {
            axum::serve(http, http_app)
                .with_graceful_shutdown(async {
                    http_stopped.await.ok();
                })
                .await
        });
        let service = RouterService::new(Arc::clone(&routing), metrics.clone(), cfg.max_attempts);
        let check = tokens.clone();
        let (grpc_stop, grpc_stopped) = oneshot::channel::<()>();
        let incoming = TcpIncoming::from(grpc).with_nodelay(Some(true));
        let grpc_task = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(LynxServer::with_interceptor(service, move |req| {
                    check.check_grpc(req)
                }))
                .serve_with_incoming_shutdown(incoming, async {
                    grpc_stopped.await.ok();
                }),
        );
        tracing::info!(%grpc_addr, %http_addr, policy = %cfg.picker.policy, "router listening");

        shutdown.await;
        draining.store(true, Ordering::Release);
        let busy = || metrics.in_flight_requests.get() + metrics.pending_requests.get();
        tracing::info!(in_flight = busy(), "draining");
        let end = Instant::now() + cfg.drain_timeout;
        while busy() > 0 && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        grpc_stop.send(()).ok();
        http_stop.send(()).ok();
        watcher.abort();
        let grace = Duration::from_secs(1);
        if let Ok(Ok(Err(e))) = tokio::time::timeout(grace, grpc_task).await {
            return Err(RouterError::Server("gRPC", e.to_string()));
        }
        if let Ok(Ok(Err(e))) = tokio::time::timeout(grace, http_task).await {
            return Err(RouterError::Server("HTTP", e.to_string()));
        }
        tracing::info!("stopped");
        Ok(())
    }
}
