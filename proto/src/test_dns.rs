//! A DNS server on loopback for tests (feature `test-dns`): it answers A and AAAA queries for the
//! names it is given, with TTL 0, so that `dns://server/host:port` targets can name several
//! workers on loopback addresses and follow them as they change.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA};
use hickory_resolver::proto::rr::{RData, Record, RecordType};
use tokio::net::UdpSocket;

type Records = Arc<Mutex<HashMap<String, Vec<IpAddr>>>>;

/// The server; it stops when dropped.
#[derive(Debug)]
pub struct TestDns {
    addr: SocketAddr,
    records: Records,
    task: tokio::task::JoinHandle<()>,
}

impl TestDns {
    /// A server on `127.0.0.1`, on a free UDP port.
    pub async fn start() -> std::io::Result<Self> {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        let addr = socket.local_addr()?;
        let records = Records::default();
        let task = tokio::spawn(serve(socket, Arc::clone(&records)));
        Ok(Self {
            addr,
            records,
            task,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// From now on `name` resolves to `ips` (empty: the name does not exist).
    pub fn set(&self, name: &str, ips: &[IpAddr]) {
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(normal(name), ips.to_vec());
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn normal(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

async fn serve(socket: UdpSocket, records: Records) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
            return;
        };
        let Some(answer) = buf.get(..n).and_then(|q| answer(q, &records)) else {
            continue;
        };
        // A lost answer is a client timeout, as with any UDP DNS server.
        let _ = socket.send_to(&answer, peer).await;
    }
}

fn answer(query: &[u8], records: &Records) -> Option<Vec<u8>> {
    let query = Message::from_vec(query).ok()?;
    let mut reply = Message::new();
    reply
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_authoritative(true);
    let known = records.lock().unwrap_or_else(PoisonError::into_inner);
    let mut found = false;
    for q in query.queries() {
        reply.add_query(q.clone());
        let Some(ips) = known.get(&normal(&q.name().to_ascii())) else {
            continue;
        };
        found |= !ips.is_empty();
        for ip in ips {
            let rdata = match (ip, q.query_type()) {
                (IpAddr::V4(v4), RecordType::A) => RData::A(A(*v4)),
                (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(*v6)),
                _ => continue,
            };
            reply.add_answer(Record::from_rdata(q.name().clone(), 0, rdata));
        }
    }
    reply.set_response_code(if found {
        ResponseCode::NoError
    } else {
        ResponseCode::NXDomain
    });
    reply.to_vec().ok()
}
