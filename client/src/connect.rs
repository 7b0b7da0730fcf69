//! Channels to the workers (plaintext or TLS) and requests carrying the bearer token.
//!
//! `--addr` is one URL (one connection) or a target that names several workers
//! ([`lynx_proto::target`]: `dns:///host:port`, `ipv4:a:port,b:port`): then [`Workers`] keeps one
//! channel per resolved address, resolves the name again every `--dns-refresh-seconds` (workers
//! that appear are used, those that disappear are dropped) and hands them out round robin.
//! [`send`] sends a call again when it never reached the server (a connection's GOAWAY crossed
//! it), as gRPC clients do.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use lynx_proto::retry::never_reached_the_server;
use lynx_proto::target::Target;
use lynx_proto::v1::lynx_client::LynxClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::{ClientError, ConnectArgs};

/// One worker: its label (the URL or the resolved address) and a client of it.
#[derive(Debug, Clone)]
pub struct Worker {
    /// The URL or `ip:port`.
    pub label: Arc<str>,
    /// The client (cheap to clone; one connection per worker).
    pub client: LynxClient<Channel>,
}

/// The workers `--addr` names, handed out round robin.
#[derive(Debug)]
pub struct Workers {
    list: RwLock<Vec<(SocketAddr, Worker)>>,
    next: AtomicUsize,
    refresher: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Workers {
    fn drop(&mut self) {
        if let Some(task) = &self.refresher {
            task.abort();
        }
    }
}

impl Workers {
    /// The next worker, round robin.
    pub fn next(&self) -> Worker {
        let list = self.list.read().unwrap_or_else(PoisonError::into_inner);
        let i = self.next.fetch_add(1, Ordering::Relaxed) % list.len().max(1);
        // Never empty: a resolution that finds nothing keeps the previous list.
        list[i].1.clone()
    }

    /// How many workers are known now.
    pub fn len(&self) -> usize {
        self.list
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no worker is known (never, once built).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn update(&self, addrs: &[SocketAddr], args: &ConnectArgs) {
        let known = self
            .list
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match connect_all(addrs, &known, args) {
            Ok(list) => *self.list.write().unwrap_or_else(PoisonError::into_inner) = list,
            Err(e) => eprintln!("warning: cannot use the refreshed workers: {e}"),
        }
    }
}

/// The workers of `args.addr`: a URL is connected at once (an unreachable worker is an error
/// here); a balanced target is resolved (no address is an error) and its workers connected as
/// they are used.
pub async fn workers(args: &ConnectArgs) -> Result<Arc<Workers>, ClientError> {
    let target: Target = args.addr.parse().map_err(|e| ClientError(format!("{e}")))?;
    if let Target::Url(url) = &target {
        let channel = endpoint(url, args)?
            .connect()
            .await
            .map_err(|e| ClientError(format!("cannot connect to {url}: {e}")))?;
        let worker = Worker {
            label: Arc::from(url.as_str()),
            client: LynxClient::new(channel),
        };
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        return Ok(Arc::new(Workers {
            list: RwLock::new(vec![(unspecified, worker)]),
            next: AtomicUsize::new(0),
            refresher: None,
        }));
    }
    let addrs = target
        .resolve()
        .await
        .map_err(|e| ClientError(e.to_string()))?;
    let list = connect_all(&addrs, &[], args)?;
    let workers = Arc::new_cyclic(|weak: &std::sync::Weak<Workers>| {
        let weak = weak.clone();
        let args = args.clone();
        let every = Duration::from_secs_f64(args.dns_refresh_seconds.max(0.05));
        let refresher = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(workers) = weak.upgrade() else {
                    return;
                };
                match target.resolve().await {
                    Ok(addrs) => workers.update(&addrs, &args),
                    // Keep the workers we know: a failed lookup is not an empty fleet.
                    Err(e) => eprintln!("warning: DNS refresh failed: {e}"),
                }
            }
        });
        Workers {
            list: RwLock::new(list),
            next: AtomicUsize::new(0),
            refresher: Some(refresher),
        }
    });
    Ok(workers)
}

/// A channel per address, reusing those of `known`.
fn connect_all(
    addrs: &[SocketAddr],
    known: &[(SocketAddr, Worker)],
    args: &ConnectArgs,
) -> Result<Vec<(SocketAddr, Worker)>, ClientError> {
    let tls = args.ca_cert.is_some();
    addrs
        .iter()
        .map(|addr| {
            if let Some((_, w)) = known.iter().find(|(a, _)| a == addr) {
                return Ok((*addr, w.clone()));
            }
            let scheme = if tls { "https" } else { "http" };
            let channel = endpoint(&format!("{scheme}://{addr}"), args)?.connect_lazy();
            Ok((
                *addr,
                Worker {
                    label: Arc::from(addr.to_string()),
                    client: LynxClient::new(channel),
                },
            ))
        })
        .collect()
}

/// The endpoint of one worker URL, with TLS for `https://`.
fn endpoint(url: &str, args: &ConnectArgs) -> Result<Endpoint, ClientError> {
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| ClientError(format!("bad --addr {url}: {e}")))?;
    if url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &args.ca_cert {
            let pem = std::fs::read(ca)
                .map_err(|e| ClientError(format!("cannot read {}: {e}", ca.display())))?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        if let Some(domain) = &args.tls_domain {
            tls = tls.domain_name(domain.clone());
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| ClientError(format!("TLS: {e}")))?;
    }
    Ok(endpoint)
}

/// A connected client of the first worker `--addr` names.
pub async fn client(args: &ConnectArgs) -> Result<LynxClient<Channel>, ClientError> {
    Ok(workers(args).await?.next().client)
}

/// `msg` as a request with the token and an optional deadline.
pub fn request<T>(
    msg: T,
    args: &ConnectArgs,
    timeout: Option<std::time::Duration>,
) -> Result<tonic::Request<T>, ClientError> {
    let mut r = tonic::Request::new(msg);
    if let Some(t) = &args.token {
        let value = format!("Bearer {t}")
            .parse()
            .map_err(|_| ClientError("the token is not a valid header value".into()))?;
        r.metadata_mut().insert("authorization", value);
    }
    if let Some(t) = timeout {
        r.set_timeout(t);
    }
    Ok(r)
}

/// Attempts in all for a call that keeps failing before it reaches a server.
pub const SEND_ATTEMPTS: usize = 3;

/// Sends the call `attempt` makes, and makes it again (at most [`SEND_ATTEMPTS`] times in all)
/// while it fails without having reached the server: a server that closes a connection for its
/// age or to drain refuses the calls that crossed its GOAWAY, and they never ran. The outer error
/// is a request that could not be made; the inner result is the call's.
pub async fn send<R, Fut>(
    mut attempt: impl FnMut() -> Result<Fut, ClientError>,
) -> Result<Result<R, tonic::Status>, ClientError>
where
    Fut: Future<Output = Result<R, tonic::Status>>,
{
    let mut sent = 1;
    loop {
        match attempt()?.await {
            Err(s) if sent < SEND_ATTEMPTS && never_reached_the_server(&s) => sent += 1,
            other => return Ok(other),
        }
    }
}
