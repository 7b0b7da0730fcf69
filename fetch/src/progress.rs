//! Transfer progress, logged once per interval: bytes, rate and time left.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes moved so far, shared by every transfer of one fetch.
#[derive(Debug, Clone)]
pub struct Progress {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    what: String,
    total: AtomicU64,
    done: AtomicU64,
    started: Instant,
}

impl Progress {
    /// A counter for fetching `what` (shown in the log lines).
    pub fn new(what: String) -> Self {
        Self {
            inner: Arc::new(Inner {
                what,
                total: AtomicU64::new(0),
                done: AtomicU64::new(0),
                started: Instant::now(),
            }),
        }
    }

    /// Sets the number of bytes expected in all (0: unknown).
    pub fn set_total(&self, bytes: u64) {
        self.inner.total.store(bytes, Ordering::Relaxed);
    }

    /// Counts `bytes` more.
    pub fn add(&self, bytes: u64) {
        self.inner.done.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Bytes counted so far.
    pub fn done(&self) -> u64 {
        self.inner.done.load(Ordering::Relaxed)
    }

    /// Logs a line every `every` until the returned guard is dropped.
    pub fn log_every(&self, every: Duration) -> LogTask {
        let progress = self.clone();
        LogTask(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                tracing::info!(target: "lynx_fetch", "{}", progress.line());
            }
        }))
    }

    /// One progress line, for example
    /// `s3://b/m: 1.2 GiB of 13.0 GiB (9.2%), 110.0 MiB/s, 1m50s left`.
    pub fn line(&self) -> String {
        let done = self.done();
        let total = self.inner.total.load(Ordering::Relaxed);
        let seconds = self.inner.started.elapsed().as_secs_f64().max(1e-3);
        let rate = done as f64 / seconds;
        let mut line = format!("{}: {}", self.inner.what, bytes(done));
        if total > 0 {
            line += &format!(
                " of {} ({:.1}%)",
                bytes(total),
                100.0 * done as f64 / total as f64
            );
        }
        line += &format!(", {}/s", bytes(rate as u64));
        if total > done && rate > 0.0 {
            line += &format!(", {} left", duration((total - done) as f64 / rate));
        }
        line
    }
}

/// Stops the periodic log line when dropped.
#[derive(Debug)]
pub struct LogTask(tokio::task::JoinHandle<()>);

impl Drop for LogTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `n` bytes in binary units with one decimal.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Whole seconds as `1h2m`, `3m4s` or `5s`.
fn duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_bytes_and_durations() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(13 * 1024 * 1024 * 1024), "13.0 GiB");
        assert_eq!(duration(5.4), "5s");
        assert_eq!(duration(110.0), "1m50s");
        assert_eq!(duration(3720.0), "1h2m");
    }

    #[test]
    fn a_line_has_share_rate_and_time_left() {
        let p = Progress::new("s3://b/m".into());
        p.set_total(4096);
        p.add(1024);
        let line = p.line();
        assert!(
            line.starts_with("s3://b/m: 1.0 KiB of 4.0 KiB (25.0%), "),
            "{line}"
        );
        assert!(line.ends_with(" left"), "{line}");
    }
}
