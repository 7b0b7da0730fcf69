//! `lynx-operator run`: the controller process.
//!
//! One replica at a time reconciles (leader election on a `Lease` with `kube-lease-manager`);
//! every replica serves `/metrics`, `/healthz` and `/readyz`. SIGTERM or SIGINT stops the
//! controller after the reconciles in flight, releases the Lease and exits 0. Losing the Lease
//! stops the controller and exits with an error, so the pod restarts as a standby.

pub mod http;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::events::Reporter;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client};
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::crd::LynxDeployment;
use crate::desired::{labels, ClusterCapabilities};
use crate::discovery;
use crate::metrics::{Metrics, MetricsError};
use crate::reconcile::{self, Context};
use http::Health;

/// Flags of `lynx-operator run`; each can also be set by its environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, env = "LYNX_OPERATOR_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Log format.
    #[arg(
        long,
        env = "LYNX_OPERATOR_LOG_FORMAT",
        value_enum,
        default_value = "json"
    )]
    pub log_format: crate::telemetry::LogFormat,
    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "LYNX_OPERATOR_LEASE_NAME",
        default_value = "lynx-operator"
    )]
    pub lease_name: String,
    /// Namespace of the Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "lynx-system")]
    pub lease_namespace: String,
    /// This replica's identity in the Lease and in Events (the pod name).
    #[arg(long, env = "POD_NAME", default_value = "lynx-operator")]
    pub identity: String,
    /// Seconds a Lease stays valid without renewal.
    #[arg(long, env = "LYNX_OPERATOR_LEASE_SECONDS", default_value_t = 15)]
    pub lease_seconds: u64,
    /// Seconds between API discovery runs (KEDA or the Prometheus operator installed later are
    /// picked up).
    #[arg(long, env = "LYNX_OPERATOR_DISCOVERY_SECONDS", default_value_t = 60)]
    pub discovery_seconds: u64,
}

/// Why the operator process stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No kubeconfig or in-cluster configuration, or the API server is unreachable.
    #[error("kubernetes client: {0}")]
    Client(#[from] kube::Error),
    /// The HTTP server could not bind or failed.
    #[error("HTTP server on {addr}: {source}")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The metrics could not be registered.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// Leader election failed.
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
    /// Another replica took the Lease; restart as a standby.
    #[error("lost the leader Lease")]
    LostLeadership,
    /// A signal handler could not be installed.
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
}

/// Runs the operator until SIGTERM/SIGINT.
///
/// # Errors
/// See [`RunError`]; a clean shutdown on a signal is `Ok`.
pub async fn run(args: RunArgs) -> Result<(), RunError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let signals = tokio::spawn(stop_on_signal(stop_tx.clone()));
    let client = Client::try_default().await?;
    let metrics = Metrics::new()?;
    let health = Health::new(metrics.clone());
    let server = serve_http(args.http_addr, health.clone(), stop_rx.clone()).await?;

    let caps = discovery::discover(&client).await?;
    info!(?caps, "discovered optional APIs");
    let (caps_tx, caps_rx) = watch::channel(caps);
    tokio::spawn(rediscover(
        client.clone(),
        caps_tx,
        Duration::from_secs(args.discovery_seconds),
    ));
    health.set_ready(true);

    let lease = LeaseManagerBuilder::new(client.clone(), &args.lease_name)
        .with_namespace(&args.lease_namespace)
        .with_identity(&args.identity)
        .with_duration(args.lease_seconds)
        .with_grace(args.lease_seconds / 3)
        .build()
        .await?;
    let (mut leader, lease_task) = lease.watch().await;
    let mut stop = stop_rx.clone();
    info!(lease = %args.lease_name, identity = %args.identity, "waiting for the leader Lease");
    let lost = tokio::select! {
        _ = stop.wait_for(|stop| *stop) => false,
        acquired = leader.wait_for(|leader| *leader) => acquired.is_err(),
    };
    let led = !(lost || *stop_rx.borrow());
    let result = if !led {
        Ok(())
    } else {
        metrics.set_leader(true);
        info!("leading: starting the controller");
        let ctx = Arc::new(Context::new(
            client.clone(),
            Reporter {
                controller: "lynx-operator".to_owned(),
                instance: Some(args.identity.clone()),
            },
            metrics.clone(),
            caps_rx.clone(),
        ));
        let outcome = run_controller(client, ctx, caps_rx, stop_rx.clone(), leader.clone()).await;
        metrics.set_leader(false);
        outcome
    };
    // Dropping the receiver makes the lease task release the Lease and end.
    drop(leader);
    match lease_task.await {
        Ok(Ok(_)) if led => info!("released the leader Lease"),
        Ok(Ok(_)) => info!("stopped waiting for the leader Lease (never held it)"),
        Ok(Err(err)) => warn!(error = %err, "cannot release the leader Lease"),
        Err(err) => warn!(error = %err, "lease task failed"),
    }
    let _ = stop_tx.send(true);
    signals.abort();
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(source)) => {
            return Err(RunError::Http {
                addr: args.http_addr,
                source,
            })
        }
        Err(err) => warn!(error = %err, "HTTP server task failed"),
    }
    result
}

/// Runs the controller until `stop` or until the Lease is lost.
async fn run_controller(
    client: Client,
    ctx: Arc<Context>,
    caps: watch::Receiver<ClusterCapabilities>,
    stop: watch::Receiver<bool>,
    leader: watch::Receiver<bool>,
) -> Result<(), RunError> {
    // Children carry the managed-by label: watch only those, not every Deployment of the cluster.
    let managed = format!("{}={}", labels::MANAGED_BY, labels::OPERATOR);
    let config = || watcher::Config::default().labels(&managed);
    let lynx = Api::<LynxDeployment>::all(client.clone());
    // A change of the served APIs re-reconciles every LynxDeployment.
    let rediscovered = futures::stream::unfold(caps, |mut caps| async move {
        caps.changed().await.ok().map(|()| ((), caps))
    });
    let (lost_tx, mut lost_rx) = watch::channel(false);
    let shutdown = {
        let mut stop = stop.clone();
        let mut leader = leader.clone();
        async move {
            tokio::select! {
                _ = stop.wait_for(|stop| *stop) => {}
                _ = leader.wait_for(|leader| !*leader) => {
                    let _ = lost_tx.send(true);
                }
            }
        }
    };
    Controller::new(lynx, watcher::Config::default().any_semantic())
        .owns(Api::<Deployment>::all(client.clone()), config())
        .owns(Api::<Service>::all(client.clone()), config())
        .owns(Api::<PodDisruptionBudget>::all(client.clone()), config())
        .owns(
            Api::<HorizontalPodAutoscaler>::all(client.clone()),
            config(),
        )
        .owns(Api::<Job>::all(client), config())
        .reconcile_all_on(rediscovered)
        .graceful_shutdown_on(shutdown)
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|result| async move {
            if let Err(err) = result {
                warn!(error = %err, "controller");
            }
        })
        .await;
    info!("controller stopped");
    if *lost_rx.borrow_and_update() {
        Err(RunError::LostLeadership)
    } else {
        Ok(())
    }
}

/// Binds the HTTP server and serves it in a task until `stop`.
async fn serve_http(
    addr: SocketAddr,
    health: Health,
    mut stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<std::io::Result<()>>, RunError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Http { addr, source })?;
    info!(%addr, "serving /metrics, /healthz and /readyz");
    Ok(tokio::spawn(async move {
        axum::serve(listener, http::router(health))
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|stop| *stop).await;
            })
            .await
    }))
}

/// Sets `stop` on the first SIGTERM or SIGINT.
async fn stop_on_signal(stop: watch::Sender<bool>) -> Result<(), RunError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).map_err(RunError::Signal)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(RunError::Signal)?;
    tokio::select! {
        _ = terminate.recv() => info!("SIGTERM: shutting down"),
        _ = interrupt.recv() => info!("SIGINT: shutting down"),
    }
    let _ = stop.send(true);
    Ok(())
}

/// Re-runs discovery every `every` and publishes changed capabilities.
async fn rediscover(client: Client, caps: watch::Sender<ClusterCapabilities>, every: Duration) {
    let mut interval = tokio::time::interval(every);
    interval.tick().await;
    loop {
        interval.tick().await;
        match discovery::discover(&client).await {
            Ok(found) => {
                caps.send_if_modified(|current| {
                    let changed = *current != found;
                    if changed {
                        info!(
                            ?found,
                            "served APIs changed: reconciling every LynxDeployment"
                        );
                        *current = found;
                    }
                    changed
                });
            }
            Err(err) => warn!(error = %err, "API discovery failed; keeping the last result"),
        }
    }
}
