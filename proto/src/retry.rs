//! Which failed calls a client may send again: those the server provably never received.
//!
//! A server closing a connection gracefully (for its age, or to drain) sends a GOAWAY naming the
//! last stream it will process. A call on a later stream was never handed to the service, so
//! HTTP/2 and gRPC allow it to be sent again; tonic reports it as `INTERNAL` (the GOAWAY's
//! `NO_ERROR` has no gRPC code). hyper likewise cancels a call it had queued on a connection that
//! closed before the call was written. Both are read from the error's source chain, by type.

use std::error::Error;

/// Whether `status` is a call that never reached the server's service: refused by the server's
/// GOAWAY, or cancelled by hyper before it was sent. Such a call can be sent again, to the same
/// target or another one, without running twice.
pub fn never_reached_the_server(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn Error + 'static)> = status.source();
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            // The server's GOAWAY: streams above its last processed one were never processed.
            if h2.is_go_away() && h2.is_remote() {
                return true;
            }
        }
        if let Some(hyper) = err.downcast_ref::<hyper::Error>() {
            if hyper.is_canceled() {
                return true;
            }
        }
        source = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use tokio::net::TcpListener;

    use super::*;
    use crate::v1::lynx_client::LynxClient;
    use crate::v1::GenerateRequest;

    /// What the HTTP/2 server on loopback does with each connection.
    #[derive(Clone, Copy)]
    enum Server {
        /// Refuses the first call with GOAWAY (NO_ERROR, last processed stream 0), as a server
        /// closing the connection for its age does to a call already on the wire, and keeps
        /// reading until the client leaves. Written frame by frame, so the refusal is exact.
        RefuseTheCall,
        /// Takes the call (h2), then drops the connection mid-call: the call may have run.
        DropAfterAccepting,
    }

    async fn serve(behaviour: Server) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    match behaviour {
                        Server::RefuseTheCall => refuse_the_call(tcp).await,
                        Server::DropAfterAccepting => {
                            let mut conn = h2::server::handshake(tcp).await.expect("handshake");
                            let accepted = conn.accept().await;
                            assert!(matches!(accepted, Some(Ok(_))), "the call arrives");
                        }
                    }
                });
            }
        });
        addr
    }

    /// A 9-byte HTTP/2 frame header and its payload.
    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut out = vec![len[1], len[2], len[3], kind, flags, 0, 0, 0, 0];
        out.extend_from_slice(payload);
        out
    }

    async fn refuse_the_call(mut tcp: tokio::net::TcpStream) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const SETTINGS: u8 = 4;
        const HEADERS: u8 = 1;
        const GOAWAY: u8 = 7;
        let mut preface = [0u8; 24];
        if tcp.read_exact(&mut preface).await.is_err() {
            return;
        }
        assert_eq!(&preface, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        let mut hello = frame(SETTINGS, 0, &[]);
        hello.extend(frame(SETTINGS, 1, &[]));
        tcp.write_all(&hello).await.expect("settings");
        let mut refused = false;
        loop {
            let mut header = [0u8; 9];
            if tcp.read_exact(&mut header).await.is_err() {
                return;
            }
            let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            let mut payload = vec![0u8; len];
            if tcp.read_exact(&mut payload).await.is_err() {
                return;
            }
            if header[3] == HEADERS && !refused {
                // Last processed stream 0, error code NO_ERROR.
                tcp.write_all(&frame(GOAWAY, 0, &[0; 8]))
                    .await
                    .expect("goaway");
                refused = true;
            }
        }
    }

    async fn call(addr: SocketAddr) -> tonic::Status {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        let mut client = LynxClient::new(channel);
        let call = client.generate(GenerateRequest::default());
        match tokio::time::timeout(Duration::from_secs(10), call).await {
            Ok(Err(status)) => status,
            Ok(Ok(_)) => panic!("the server answered"),
            Err(_) => panic!("the call hung"),
        }
    }

    #[tokio::test]
    async fn a_call_refused_by_a_goaway_never_reached_the_server() {
        let status = call(serve(Server::RefuseTheCall).await).await;
        assert!(never_reached_the_server(&status), "{status:?}");
    }

    #[tokio::test]
    async fn a_call_lost_after_the_server_took_it_is_not_retryable() {
        let status = call(serve(Server::DropAfterAccepting).await).await;
        assert!(!never_reached_the_server(&status), "{status:?}");
    }

    #[test]
    fn a_status_the_server_sent_is_not_retryable() {
        for status in [
            tonic::Status::unavailable("draining"),
            tonic::Status::internal("GoAway NO_ERROR in a message is not a GOAWAY"),
            tonic::Status::cancelled("cancelled by the server"),
        ] {
            assert!(!never_reached_the_server(&status), "{status:?}");
        }
    }
}
