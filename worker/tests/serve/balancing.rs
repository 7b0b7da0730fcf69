//! Many workers behind one name: `dns:` addresses balanced round robin by the `lynx` client (a
//! DNS server on loopback names workers on 127.0.0.x), and connections closed for their age.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use lynx_client::{connect, ConnectArgs};
use lynx_proto::test_dns::TestDns;
use lynx_proto::v1::DecodingMode;

use crate::harness::{input, request, TestServer};

pub const NAME: &str = "workers.lynx.test";

/// Workers on 127.0.0.1, .2, ... all on the same two ports, as the pods of a headless Service are.
pub async fn fleet(n: u8, tune: impl Fn(&mut lynx_worker::serve::ServeConfig)) -> Vec<TestServer> {
    let first = TestServer::start(&tune).await;
    let (port, http_port) = (first.grpc.port(), first.http.port());
    let mut all = vec![first];
    for i in 2..=n {
        all.push(
            TestServer::start(|c| {
                tune(c);
                c.grpc_addr = SocketAddr::from(([127, 0, 0, i], port));
                c.http_addr = SocketAddr::from(([127, 0, 0, i], http_port));
            })
            .await,
        );
    }
    all
}

pub fn ips(servers: &[&TestServer]) -> Vec<IpAddr> {
    servers.iter().map(|s| s.grpc.ip()).collect()
}

pub async fn ok_answers(server: &TestServer) -> f64 {
    server
        .metrics()
        .await
        .get_or_zero("lynx_requests_total{code=\"OK\"}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_over_a_dns_name_reaches_every_worker() {
    let workers = fleet(3, |_| {}).await;
    let dns = TestDns::start().await.unwrap();
    dns.set(NAME, &ips(&workers.iter().collect::<Vec<_>>()));
    let addr = format!("dns://{}/{NAME}:{}", dns.addr(), workers[0].grpc.port());
    let svg = tempfile::NamedTempFile::new().unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(crate::harness::lynx_binary())
            .args(["bench", "--addr", &addr, "--concurrency", "2", "--requests"])
            .args(["6", "--max-new-tokens", "2", "--no-progress", "--svg"])
            .arg(svg.path())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Round robin: each worker answers 2 of the 6 measured requests.
    for w in &workers {
        let row = format!("| 2 | {} | 2 |", w.grpc);
        assert!(stdout.contains(&row), "no row {row:?} in\n{stdout}");
        // ... and one unmeasured warm-up request each.
        assert_eq!(ok_answers(w).await, 3.0, "{}", w.grpc);
    }
}

async fn generate(workers: &connect::Workers) -> Result<(), tonic::Status> {
    let req = request(
        "What is in the image?",
        &[&input("img_landscape.png")],
        None,
        DecodingMode::Greedy,
        2,
    );
    match workers.next().client.generate(req.clone()).await {
        // A request that crossed the GOAWAY of a connection closed for its age was never
        // processed: hyper cancels it, or fails it with the GOAWAY itself (NO_ERROR, sent by
        // the server) when it was already on the wire. Sending it again is what gRPC clients do.
        Err(s) if lynx_proto::retry::never_reached_the_server(&s) => {
            workers.next().client.generate(req).await.map(|_| ())
        }
        other => other.map(|_| ()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_reconnect_after_the_max_age_and_follow_the_name() {
    let age = |c: &mut lynx_worker::serve::ServeConfig| {
        c.max_connection_age = Some(Duration::from_millis(700));
        c.max_connection_age_grace = Duration::from_secs(30);
    };
    let mut fleet = fleet(2, age).await;
    let (old, new) = (fleet.remove(0), fleet.remove(0));
    let dns = TestDns::start().await.unwrap();
    dns.set(NAME, &ips(&[&old]));
    let args = |addr: String| ConnectArgs {
        addr,
        dns_refresh_seconds: 0.2,
        token: None,
        ca_cert: None,
        tls_domain: None,
    };

    // One address: requests go on over the connections that replace the closed ones.
    let direct = connect::workers(&args(format!("http://{}", old.grpc)))
        .await
        .unwrap();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(2500) {
        generate(&direct).await.unwrap();
    }
    let connections = old.metrics().await.get("lynx_grpc_connections_total");
    assert!(connections >= 3.0, "{connections} connections in 2.5 s");

    // A name: when it moves to another worker, requests follow it, and none fails.
    let named = connect::workers(&args(format!(
        "dns://{}/{NAME}:{}",
        dns.addr(),
        old.grpc.port()
    )))
    .await
    .unwrap();
    generate(&named).await.unwrap();
    dns.set(NAME, &ips(&[&new]));
    let t0 = Instant::now();
    while ok_answers(&new).await == 0.0 {
        assert!(t0.elapsed() < Duration::from_secs(10), "never reached");
        generate(&named).await.unwrap();
    }
    assert_eq!(named.len(), 1);
}
