//! The workers behind the router: found by resolving `--workers` again and again, each one
//! scraped for readiness (`/readyz`) and load (`/metrics`: the queue, running and KV-cache
//! gauges) every `--scrape-interval-ms`, with one lazily connected gRPC channel each.
//!
//! A worker is a candidate while its last scrape found it ready. The load a pick sees is the
//! last scrape's plus this router's requests on it that started after that scrape and are still
//! running (`unreported`); its age is observed in `lynx_router_load_age_seconds`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use lynx_proto::target::Target;
use lynx_proto::v1::lynx_client::LynxClient;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

use crate::metrics::Metrics;
use crate::policy::Load;

/// One worker as the router knows it.
#[derive(Debug)]
pub struct Worker {
    /// Its gRPC address.
    pub addr: SocketAddr,
    /// Its HTTP address (OpenAI API, `/metrics`, `/readyz`).
    pub http: SocketAddr,
    /// A client of its `lynx.v1.Lynx` (one connection, made when first used).
    pub client: LynxClient<Channel>,
    state: Mutex<Scraped>,
    /// Requests this router has in flight on it.
    in_flight: AtomicI64,
    /// `in_flight` when the last scrape started (those show in the scraped gauges).
    at_scrape: AtomicI64,
}

/// A request in flight on a worker: counted until dropped.
#[derive(Debug)]
pub struct Sent(Arc<Worker>);

impl std::ops::Deref for Sent {
    type Target = Worker;

    fn deref(&self) -> &Worker {
        &self.0
    }
}

impl Drop for Sent {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug, Clone, Copy)]
struct Scraped {
    ready: bool,
    load: Load,
    at: Instant,
}

impl Worker {
    fn new(addr: SocketAddr, http_port: u16) -> Result<Self, String> {
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(Self {
            addr,
            http: SocketAddr::new(addr.ip(), http_port),
            client: LynxClient::new(channel),
            state: Mutex::new(Scraped {
                ready: false,
                load: Load::default(),
                at: Instant::now(),
            }),
            in_flight: AtomicI64::new(0),
            at_scrape: AtomicI64::new(0),
        })
    }

    /// A request is sent to it; it counts as load until the returned guard is dropped.
    pub fn sent(self: &Arc<Self>) -> Sent {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Sent(Arc::clone(self))
    }

    /// Requests in flight that started after the last scrape began (not in its gauges).
    fn unreported(&self) -> f64 {
        let now = self.in_flight.load(Ordering::Acquire);
        (now - self.at_scrape.load(Ordering::Acquire)).max(0) as f64
    }

    fn scraped(&self) -> Scraped {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The current workers; [`Fleet::ready`] wakes those waiting for a ready one.
#[derive(Debug)]
pub struct Fleet {
    workers: Mutex<BTreeMap<SocketAddr, Arc<Worker>>>,
    ready_tx: watch::Sender<usize>,
    metrics: Metrics,
}

/// How the fleet is found and watched.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// Where the workers are (`dns:///host:port`, `ipv4:...`; a URL is one worker).
    pub target: Target,
    /// The workers' HTTP port.
    pub http_port: u16,
    /// How often the target is resolved again.
    pub resolve_every: Duration,
    /// How often each worker is scraped.
    pub scrape_every: Duration,
}

impl Fleet {
    /// An empty fleet; [`Fleet::watch`] fills it.
    pub fn new(metrics: Metrics) -> Arc<Self> {
        Arc::new(Self {
            workers: Mutex::new(BTreeMap::new()),
            ready_tx: watch::channel(0).0,
            metrics,
        })
    }

    /// Ready workers with the load to pick by (the scraped load plus what was sent since).
    pub fn candidates(&self) -> Vec<(Arc<Worker>, Load)> {
        let now = Instant::now();
        let workers = self.workers.lock().unwrap_or_else(PoisonError::into_inner);
        workers
            .values()
            .filter_map(|w| {
                let s = w.scraped();
                s.ready.then(|| {
                    self.metrics
                        .load_age
                        .observe(now.duration_since(s.at).as_secs_f64());
                    let mut load = s.load;
                    load.unreported = w.unreported();
                    (Arc::clone(w), load)
                })
            })
            .collect()
    }

    /// A receiver that changes whenever the number of ready workers does.
    pub fn ready(&self) -> watch::Receiver<usize> {
        self.ready_tx.subscribe()
    }

    /// Resolves and scrapes until the returned task is aborted.
    pub fn watch(self: &Arc<Self>, cfg: FleetConfig) -> tokio::task::JoinHandle<()> {
        let fleet = Arc::clone(self);
        tokio::spawn(async move {
            let http = match reqwest_client(cfg.scrape_every) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "cannot build the scrape client");
                    return;
                }
            };
            let mut resolved_at: Option<Instant> = None;
            loop {
                if resolved_at.is_none_or(|t| t.elapsed() >= cfg.resolve_every) {
                    resolved_at = Some(Instant::now());
                    match cfg.target.resolve().await {
                        Ok(addrs) => fleet.set_members(&addrs, cfg.http_port),
                        Err(e) => tracing::warn!(error = %e, "cannot resolve the workers"),
                    }
                }
                let workers: Vec<Arc<Worker>> = fleet
                    .workers
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .values()
                    .cloned()
                    .collect();
                // All workers at once: one slow worker does not age the others' load.
                let mut scrapes = tokio::task::JoinSet::new();
                for w in workers {
                    let http = http.clone();
                    scrapes.spawn(async move {
                        let in_flight = w.in_flight.load(Ordering::Acquire);
                        let scraped = scrape(&http, &w).await;
                        *w.state.lock().unwrap_or_else(PoisonError::into_inner) = scraped;
                        w.at_scrape.store(in_flight, Ordering::Release);
                    });
                }
                while scrapes.join_next().await.is_some() {}
                fleet.publish();
                tokio::time::sleep(cfg.scrape_every).await;
            }
        })
    }

    fn set_members(&self, addrs: &[SocketAddr], http_port: u16) {
        let mut workers = self.workers.lock().unwrap_or_else(PoisonError::into_inner);
        workers.retain(|addr, _| addrs.contains(addr));
        for addr in addrs {
            if workers.contains_key(addr) {
                continue;
            }
            match Worker::new(*addr, http_port) {
                Ok(w) => {
                    tracing::info!(worker = %addr, "worker found");
                    workers.insert(*addr, Arc::new(w));
                }
                Err(e) => tracing::warn!(worker = %addr, error = %e, "unusable worker address"),
            }
        }
    }

    fn publish(&self) {
        let ready = self
            .workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|w| w.scraped().ready)
            .count();
        self.metrics.ready_workers.set(ready as i64);
        self.ready_tx.send_if_modified(|n| {
            let changed = *n != ready;
            *n = ready;
            changed
        });
    }
}

fn reqwest_client(scrape_every: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(scrape_every.max(Duration::from_millis(500)))
        .no_proxy()
        .build()
}

/// One scrape: ready when `/readyz` answers 200 and `/metrics` has the load gauges.
async fn scrape(http: &reqwest::Client, w: &Worker) -> Scraped {
    let at = Instant::now();
    let base = format!("http://{}", w.http);
    let ready = matches!(
        http.get(format!("{base}/readyz")).send().await,
        Ok(r) if r.status().is_success()
    );
    let load = match http.get(format!("{base}/metrics")).send().await {
        Ok(r) => r.text().await.ok().map(|t| parse_load(&t)),
        Err(_) => None,
    };
    Scraped {
        ready: ready && load.is_some(),
        load: load.unwrap_or_default(),
        at,
    }
}

/// The three load gauges of a worker's `/metrics` text (absent ones are 0).
pub fn parse_load(text: &str) -> Load {
    let mut load = Load::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let mut parts = line.split_whitespace();
        let (Some(name), Some(value)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        match name {
            "lynx_queue_length" => load.queue_length = value,
            "lynx_running_sequences" => load.running_sequences = value,
            "lynx_kv_cache_usage" => load.kv_cache_usage = value,
            _ => {}
        }
    }
    load
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_gauges_are_read_from_the_exposition_text() {
        let text = "# HELP lynx_queue_length Requests waiting.\n# TYPE lynx_queue_length gauge\n\
                    lynx_queue_length 3\nlynx_running_sequences 12\nlynx_kv_cache_usage 0.25\n\
                    lynx_requests_total{code=\"OK\"} 9\n";
        let load = parse_load(text);
        assert_eq!(load.queue_length, 3.0);
        assert_eq!(load.running_sequences, 12.0);
        assert_eq!(load.kv_cache_usage, 0.25);
        assert_eq!(load.unreported, 0.0);
    }
}
