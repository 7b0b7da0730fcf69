//! A plain HTTP/1.1 server on loopback for the fetch tests: serves files with `HEAD`, ranges and
//! ETags, and on demand breaks a transfer off or sends it slowly; it records every request.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
}

impl Seen {
    pub fn range(&self) -> Option<&str> {
        self.headers.get("range").map(String::as_str)
    }
}

/// What to answer.
pub enum Reply {
    /// A file: status 200 (206 for a range), with extra headers.
    File {
        bytes: Arc<Vec<u8>>,
        headers: Vec<(String, String)>,
        /// Close the connection after this many body bytes (the response promised more).
        cut_after: Option<usize>,
        /// Pause this long after every 16 KiB of body.
        pace: Option<Duration>,
    },
    /// A status with a short text body.
    Status(u16),
    /// A JSON body.
    Json(String),
}

type Handler = dyn Fn(&Seen, usize) -> Reply + Send + Sync;

/// The running server; it stops with the test process.
pub struct Server {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    /// Serves `handler(request, index of the request)` on a free loopback port.
    pub fn start(handler: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (handler, log) = (handler.clone(), log.clone());
                std::thread::spawn(move || serve_connection(stream, &*handler, &log));
            }
        });
        Self { addr, seen }
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The `GET` requests so far.
    pub fn gets(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.method == "GET")
            .collect()
    }
}

fn serve_connection(stream: TcpStream, handler: &Handler, log: &Mutex<Vec<Seen>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or_default().to_owned(),
            parts.next().unwrap_or_default().to_owned(),
        );
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let seen = Seen {
            method,
            path,
            headers,
        };
        let index = {
            let mut log = log.lock().unwrap();
            log.push(seen.clone());
            log.len() - 1
        };
        if !respond(&mut out, &seen, handler(&seen, index)) {
            return;
        }
    }
}

/// Writes the reply; false when the connection must close.
fn respond(out: &mut TcpStream, seen: &Seen, reply: Reply) -> bool {
    let (status, mut headers, body, cut_after, pace) = match reply {
        Reply::Status(code) => (code, vec![], Arc::new(b"no".to_vec()), None, None),
        Reply::Json(json) => (
            200,
            vec![("Content-Type".into(), "application/json".into())],
            Arc::new(json.into_bytes()),
            None,
            None,
        ),
        Reply::File {
            bytes,
            headers,
            cut_after,
            pace,
        } => (200, headers, bytes, cut_after, pace),
    };
    let (mut status, mut start, mut end) = (status, 0, body.len());
    if status == 200 {
        if let Some(range) = seen.range().and_then(|r| r.strip_prefix("bytes=")) {
            let if_range_ok = seen.headers.get("if-range").is_none_or(|want| {
                headers
                    .iter()
                    .any(|(k, v)| k.eq_ignore_ascii_case("etag") && v == want)
            });
            let (from, to) = range.split_once('-').unwrap();
            let from: usize = from.parse().unwrap();
            if if_range_ok && from < body.len() {
                let to = to
                    .parse::<usize>()
                    .map_or(body.len() - 1, |t| t.min(body.len() - 1));
                status = 206;
                (start, end) = (from, to + 1);
                headers.push((
                    "Content-Range".into(),
                    format!("bytes {from}-{to}/{}", body.len()),
                ));
            }
        }
    }
    let reason = match status {
        200 => "OK",
        206 => "Partial Content",
        404 => "Not Found",
        403 => "Forbidden",
        _ => "Other",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\n",
        end - start
    );
    for (k, v) in &headers {
        head += &format!("{k}: {v}\r\n");
    }
    head += "\r\n";
    if out.write_all(head.as_bytes()).is_err() {
        return false;
    }
    if seen.method == "HEAD" {
        return true;
    }
    let body = &body[start..end];
    let limit = cut_after.unwrap_or(usize::MAX).min(body.len());
    for chunk in body[..limit].chunks(16 * 1024) {
        if out.write_all(chunk).is_err() {
            return false;
        }
        if let Some(pace) = pace {
            std::thread::sleep(pace);
        }
    }
    if limit < body.len() {
        let _ = out.flush();
        let _ = out.shutdown(std::net::Shutdown::Both);
        return false;
    }
    true
}
