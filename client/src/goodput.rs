//! `lynx bench --goodput-seconds S`: goodput under load and overload. At each concurrency,
//! that many closed-loop clients send requests back to back for `S` seconds (a refused request
//! is sent again at once, the harshest client there is), and every answer is counted by status.
//! The table gives the answers per status, OK/s (goodput) and its ratio to the first level, the
//! latency of OK answers and of refusals, and, read from the worker's `/metrics` after each level,
//! its CPU time per OK answer and its peak resident memory.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lynx_proto::v1;
use tonic::Code;

use super::bench::{quantile, BenchArgs};
use super::{connect, ClientError};

/// What one level saw.
#[derive(Debug, Clone, PartialEq)]
pub struct GoodputLevel {
    /// Concurrent clients.
    pub concurrency: usize,
    /// Wall-clock time of the level.
    pub wall: Duration,
    /// Answers by status code name (`OK`, `RESOURCE_EXHAUSTED`, ...).
    pub statuses: BTreeMap<String, u64>,
    /// Latency of OK answers, seconds.
    pub ok_latency: Vec<f64>,
    /// Latency of every other answer, seconds.
    pub refusal_latency: Vec<f64>,
    /// The worker's CPU seconds during the level (from `/metrics`).
    pub server_cpu_seconds: Option<f64>,
    /// The worker's peak resident memory after the level, bytes (from `/metrics`).
    pub server_peak_rss: Option<f64>,
}

impl GoodputLevel {
    fn ok(&self) -> u64 {
        self.statuses.get("OK").copied().unwrap_or(0)
    }

    /// OK answers per second.
    pub fn goodput(&self) -> f64 {
        self.ok() as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

/// One scrape of the worker's `/metrics`: `(cpu seconds, peak resident bytes)`.
async fn server_usage(url: &str) -> Result<(f64, f64), ClientError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| ClientError(format!("--metrics-url {url}: only http:// is supported")))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, "metrics"));
    let text = super::http::get(host, &format!("/{path}")).await?;
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .ok_or_else(|| ClientError(format!("{url} has no {name}")))
    };
    Ok((
        value("lynx_process_cpu_seconds")?,
        value("lynx_process_peak_resident_memory_bytes")?,
    ))
}

async fn run_level(
    args: &BenchArgs,
    seconds: f64,
    concurrency: usize,
    pool: Arc<Vec<v1::GenerateRequest>>,
) -> Result<GoodputLevel, ClientError> {
    let before = match &args.metrics_url {
        Some(url) => Some(server_usage(url).await?),
        None => None,
    };
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for w in 0..concurrency.max(1) {
        // Each client has connections of its own (to every worker of a balanced address).
        let workers = connect::workers(&args.connect).await?;
        let pool = Arc::clone(&pool);
        let connect_args = args.connect.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen: Vec<(Code, f64)> = Vec::new();
            let mut i = w;
            while Instant::now() < end {
                let req = pool[i % pool.len()].clone();
                i += concurrency;
                let sent = Instant::now();
                let reply = connect::send(|| {
                    let mut client = workers.next().client;
                    let req = connect::request(req.clone(), &connect_args, None)?;
                    Ok(async move { client.generate(req).await })
                })
                .await?;
                let code = match reply {
                    Ok(_) => Code::Ok,
                    Err(status) => status.code(),
                };
                seen.push((code, sent.elapsed().as_secs_f64()));
            }
            Ok::<_, ClientError>(seen)
        }));
    }
    let mut level = GoodputLevel {
        concurrency,
        wall: Duration::ZERO,
        statuses: BTreeMap::new(),
        ok_latency: Vec::new(),
        refusal_latency: Vec::new(),
        server_cpu_seconds: None,
        server_peak_rss: None,
    };
    for w in tasks {
        let seen = w
            .await
            .map_err(|e| ClientError(format!("a client task failed: {e}")))??;
        for (code, latency) in seen {
            let name = lynx_proto::code_name(code).to_owned();
            *level.statuses.entry(name).or_default() += 1;
            if code == Code::Ok {
                level.ok_latency.push(latency);
            } else {
                level.refusal_latency.push(latency);
            }
        }
    }
    level.wall = t0.elapsed();
    if let (Some(url), Some((cpu0, _))) = (&args.metrics_url, before) {
        let (cpu1, peak) = server_usage(url).await?;
        level.server_cpu_seconds = Some(cpu1 - cpu0);
        level.server_peak_rss = Some(peak);
    }
    Ok(level)
}

/// The results as a Markdown table.
pub fn table(levels: &[GoodputLevel]) -> String {
    let base = levels.first().map_or(1.0, GoodputLevel::goodput);
    let mut s = String::from(
        "| clients | seconds | answers | by status | OK/s | vs first | OK p50 ms | refusal p50 ms | refusal p99 ms | server CPU ms per OK | server peak RSS MiB |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for l in levels {
        let ms = |v: &[f64], q: f64| {
            if v.is_empty() {
                "-".to_owned()
            } else {
                format!("{:.1}", quantile(v, q) * 1e3)
            }
        };
        let statuses: Vec<String> = l.statuses.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let cpu_per_ok = l.server_cpu_seconds.map_or("-".to_owned(), |c| {
            format!("{:.1}", c * 1e3 / (l.ok().max(1) as f64))
        });
        let rss = l
            .server_peak_rss
            .map_or("-".to_owned(), |b| format!("{:.0}", b / f64::from(1 << 20)));
        s.push_str(&format!(
            "| {} | {:.1} | {} | {} | {:.2} | {:.0}% | {} | {} | {} | {} | {} |\n",
            l.concurrency,
            l.wall.as_secs_f64(),
            l.statuses.values().sum::<u64>(),
            statuses.join(", "),
            l.goodput(),
            100.0 * l.goodput() / base.max(1e-9),
            ms(&l.ok_latency, 0.5),
            ms(&l.refusal_latency, 0.5),
            ms(&l.refusal_latency, 0.99),
            cpu_per_ok,
            rss,
        ));
    }
    s
}

/// Runs the goodput levels of `args` with a pool of `pool` requests.
pub async fn run(
    args: &BenchArgs,
    seconds: f64,
    pool: Vec<v1::GenerateRequest>,
) -> Result<(), ClientError> {
    if pool.is_empty() {
        return Err(ClientError("no request to send".into()));
    }
    let pool = Arc::new(pool);
    let mut levels = Vec::new();
    for &c in &args.concurrency {
        levels.push(run_level(args, seconds, c, Arc::clone(&pool)).await?);
    }
    println!("{}", table(&levels));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_gives_goodput_against_the_first_level() {
        let level = |c, ok, refused| GoodputLevel {
            concurrency: c,
            wall: Duration::from_secs(10),
            statuses: BTreeMap::from([
                ("OK".to_owned(), ok),
                ("RESOURCE_EXHAUSTED".to_owned(), refused),
            ]),
            ok_latency: vec![0.1],
            refusal_latency: vec![0.002],
            server_cpu_seconds: Some(5.0),
            server_peak_rss: Some(f64::from(300 << 20)),
        };
        let t = table(&[level(8, 200, 0), level(80, 190, 5000)]);
        assert!(t.contains("| 8 | 10.0 | 200 |"), "{t}");
        assert!(t.contains("| 20.00 | 100% |"), "{t}");
        assert!(t.contains("| 19.00 | 95% |"), "{t}");
        assert!(t.contains("OK 190, RESOURCE_EXHAUSTED 5000"), "{t}");
        assert!(t.contains("| 26.3 | 300 |"), "{t}");
    }
}
