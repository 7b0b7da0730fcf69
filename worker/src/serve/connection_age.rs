//! The end of a gRPC connection's life: `--max-connection-age-seconds` asks the client to close
//! it (tonic sends HTTP/2 GOAWAY; its requests finish, new ones go to a new connection, which
//! behind a Service or a `dns:` name may reach another worker), and
//! `--max-connection-age-grace-seconds` later it is cut.
//!
//! tonic 0.14 sends the GOAWAY only when no grace is configured (with one it closes the
//! connection at age + grace without any GOAWAY), so the cut is ours: [`AgedStream`] fails the
//! connection's reads and writes once its deadline passes, and the server drops it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// An accepted connection that fails after its deadline.
#[derive(Debug)]
pub struct AgedStream {
    inner: TcpStream,
    cut: Option<Pin<Box<Sleep>>>,
}

impl AgedStream {
    /// `inner`, cut `lifetime` from now (none: never).
    pub fn new(inner: TcpStream, lifetime: Option<Duration>) -> Self {
        Self {
            inner,
            cut: lifetime.map(|d| Box::pin(tokio::time::sleep(d))),
        }
    }

    /// An error once the deadline has passed (and a wake-up registered for it before).
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let passed = self
            .cut
            .as_mut()
            .is_some_and(|cut| cut.as_mut().poll(cx).is_ready());
        if passed {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the connection outlived --max-connection-age-seconds plus its grace",
            ));
        }
        Ok(())
    }
}

impl AsyncRead for AgedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for AgedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Connected for AgedStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn a_connection_works_until_its_deadline_and_fails_after() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut aged = AgedStream::new(tcp, Some(Duration::from_millis(200)));
        client.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        aged.read_exact(&mut buf)
            .await
            .expect("read before the deadline");
        assert_eq!(&buf, b"ping");
        // A read waiting when the deadline passes fails then, without any byte arriving.
        let err = aged.read(&mut buf).await.expect_err("cut");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(aged.write_all(b"pong").await.is_err());
    }
}
