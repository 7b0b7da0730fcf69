//! TLS on the gRPC listener and bearer-token authentication of `lynx.v1.Lynx`; health and the
//! HTTP listener stay open.

use std::path::PathBuf;

use lynx_proto::v1::lynx_client::LynxClient;
use lynx_proto::v1::DecodingMode;
use lynx_worker::serve::TlsFiles;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::harness::{http_get, request, TestServer};

fn tls_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/serve/tls")
}

fn hi() -> lynx_proto::v1::GenerateRequest {
    request("hi", &[], None, DecodingMode::Greedy, 3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_is_served_over_tls_with_the_configured_certificate() {
    let server = TestServer::start(|c| {
        c.tls = Some(TlsFiles {
            cert: tls_dir().join("server.crt"),
            key: tls_dir().join("server.key"),
        });
    })
    .await;
    let ca = std::fs::read(tls_dir().join("ca.crt")).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    let channel = Endpoint::new(format!("https://{}", server.grpc))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let answer = LynxClient::new(channel).generate(hi()).await.unwrap();
    assert_eq!(answer.get_ref().token_ids.len(), 3);
    // A plaintext client gets nothing.
    let plain = Endpoint::new(format!("http://{}", server.grpc))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plain {
        let err = LynxClient::new(channel).generate(hi()).await.unwrap_err();
        assert_ne!(err.code(), Code::Ok);
    }
    // A client that does not trust the CA refuses the server.
    let untrusted = Endpoint::new(format!("https://{}", server.grpc))
        .unwrap()
        .tls_config(ClientTlsConfig::new().domain_name("localhost"))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = untrusted {
        assert!(LynxClient::new(channel).generate(hi()).await.is_err());
    }
    assert_eq!(
        http_get(server.http, "/readyz").await.0,
        200,
        "HTTP stays plain"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_are_required_for_lynx_but_not_for_health_or_metrics() {
    let server = TestServer::start(|c| c.auth_tokens = vec!["s3cret".into(), "other".into()]).await;
    let mut client = server.client().await;
    let with = |token: Option<&str>| {
        let mut r = tonic::Request::new(hi());
        if let Some(t) = token {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        r
    };
    for (token, what) in [(None, "missing"), (Some("wrong"), "invalid")] {
        let s = client.generate(with(token)).await.unwrap_err();
        assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
        assert!(s.message().contains(what), "{s:?}");
        let s = client.generate_stream(with(token)).await.unwrap_err();
        assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    }
    let s = client
        .get_model_info(lynx_proto::v1::GetModelInfoRequest {})
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
    for token in ["s3cret", "other"] {
        let ok = client.generate(with(Some(token))).await.unwrap();
        assert_eq!(ok.get_ref().token_ids.len(), 3);
    }
    let channel = Endpoint::new(format!("http://{}", server.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "lynx.v1.Lynx".into(),
        })
        .await
        .unwrap();
    assert_eq!(health.into_inner().status(), ServingStatus::Serving);
    assert_eq!(http_get(server.http, "/metrics").await.0, 200);
}
