//! One plain HTTP/1.0 GET on loopback or a cluster network: enough for a worker's `/metrics`
//! without an HTTP client dependency.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::ClientError;

/// The body (headers included) of `GET path` from `host` (`addr:port`).
pub async fn get(host: &str, path: &str) -> Result<String, ClientError> {
    let fail = |e: std::io::Error| ClientError(format!("GET http://{host}{path}: {e}"));
    let mut stream = tokio::net::TcpStream::connect(host).await.map_err(fail)?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(fail)?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await.map_err(fail)?;
    Ok(body)
}
