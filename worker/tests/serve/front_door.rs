//! The front door: cheap checks and a place in the queue before any decoding, byte limits,
//! the message-size limit naming itself, the preparation memory budget, and every request
//! counted exactly once with the status its client got.

use std::io::Cursor;
use std::time::{Duration, Instant};

use lynx_proto::v1::{self, DecodingMode, GenerateRequest};
use tonic::Code;

use crate::harness::{generate_invalid_utf8, input, raw_grpc, request, with_timeout, TestServer};

/// An incompressible RGB PNG of `w` x `h` pixels (its size is about `3 w h` bytes).
fn noise_png(w: u32, h: u32) -> Vec<u8> {
    let mut state = 0x9E37_79B9u32;
    let img = image::RgbImage::from_fn(w, h, |_, _| {
        let mut px = [0u8; 3];
        for c in &mut px {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            *c = state as u8;
        }
        image::Rgb(px)
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn greedy_with_image(img: &[u8]) -> GenerateRequest {
    request("What is in it?", &[img], None, DecodingMode::Greedy, 2)
}

/// Sends `req` unary and returns the status code the client got.
async fn status_of(server: &TestServer, req: GenerateRequest) -> tonic::Status {
    match server.client().await.generate(req).await {
        Ok(_) => tonic::Status::ok(""),
        Err(s) => s,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_before_any_image_is_decoded() {
    let server = TestServer::start(|c| {
        c.runner.scheduler.max_queue = 2;
        c.runner.scheduler.max_batch_delay = Duration::from_secs(60);
    })
    .await;
    let waiting = server.hold_in_queue(2).await;
    let m = server.metrics().await;
    let decoded = m.get("lynx_vision_inputs_decoded_total");
    // A large image with a bad body: decoding it would fail, refusing it must not try.
    let big = noise_png(600, 600);
    let mut refused = Vec::new();
    for _ in 0..20 {
        let t0 = Instant::now();
        let status = status_of(&server, greedy_with_image(&big)).await;
        refused.push(t0.elapsed());
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(status.message().contains("max_queue"), "{status:?}");
    }
    // Refused from its headers: a message that cannot even be decoded (INVALID_ARGUMENT once
    // read) is never read.
    let unread = generate_invalid_utf8(server.grpc, None).await;
    assert_eq!(unread.code(), Code::ResourceExhausted, "{unread:?}");
    assert!(unread.message().contains("max_queue"), "{unread:?}");
    let m = server.metrics().await;
    assert_eq!(
        m.get("lynx_vision_inputs_decoded_total"),
        decoded,
        "a refused request decoded an image"
    );
    assert_eq!(
        m.get("lynx_requests_total{code=\"RESOURCE_EXHAUSTED\"}"),
        21.0
    );
    refused.sort();
    assert!(
        refused[refused.len() - 1] < Duration::from_secs(2),
        "slowest refusal {:?}",
        refused.last()
    );
    for w in waiting {
        w.abort();
    }
    server
        .wait_metrics("queue empty", |m| m.get("lynx_queue_length") == 0.0)
        .await;
}

/// `--max-incoming-requests`: a request whose message is still arriving holds its place, one
/// more is refused from its headers (RESOURCE_EXHAUSTED naming the bound), and the first is
/// answered once its message has arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_still_arriving_are_bounded_by_max_incoming_requests() {
    let server = TestServer::start(|c| c.prepare.max_incoming = 1).await;
    // The unary method called as client streaming: the headers now, the message later.
    let mut grpc = raw_grpc(server.grpc).await;
    let (message, messages) = tokio::sync::mpsc::channel::<GenerateRequest>(1);
    let slow = tokio::spawn(async move {
        let codec: tonic_prost::ProstCodec<GenerateRequest, v1::GenerateResponse> =
            Default::default();
        let body = tokio_stream::wrappers::ReceiverStream::new(messages);
        let path = "/lynx.v1.Lynx/Generate".parse().unwrap();
        grpc.client_streaming(tonic::Request::new(body), path, codec)
            .await
    });
    server
        .wait_metrics("one arriving", |m| m.get("lynx_incoming_requests") == 1.0)
        .await;

    let refused = status_of(&server, request("hi", &[], None, DecodingMode::Greedy, 2)).await;
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("max_incoming_requests"),
        "{refused:?}"
    );

    message
        .send(request("hi", &[], None, DecodingMode::Greedy, 2))
        .await
        .unwrap();
    drop(message);
    let answer = tokio::time::timeout(Duration::from_secs(30), slow)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .into_inner();
    assert!(!answer.token_ids.is_empty(), "{answer:?}");
    let m = server
        .wait_metrics("none arriving", |m| m.get("lynx_incoming_requests") == 0.0)
        .await;
    assert_eq!(
        m.get("lynx_requests_total{code=\"RESOURCE_EXHAUSTED\"}"),
        1.0
    );
    assert_eq!(m.get("lynx_requests_total{code=\"OK\"}"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_limits_refuse_before_tokenizing_or_decoding() {
    let server = TestServer::start(|c| {
        c.limits.max_prompt_bytes = 100;
        c.limits.max_image_bytes = 50_000;
    })
    .await;
    let decoded = server
        .metrics()
        .await
        .get("lynx_vision_inputs_decoded_total");
    let land = input("img_landscape.png");
    let long = "é".repeat(51); // 102 bytes, 51 characters
    let status = status_of(
        &server,
        request(&long, &[&land], None, DecodingMode::Greedy, 2),
    )
    .await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .contains("instruction is 102 bytes, more than max_prompt_bytes = 100"),
        "{status:?}"
    );
    // The second image is over the byte limit: the first is not decoded either.
    let big = noise_png(200, 200);
    assert!(big.len() > 50_000);
    let req = request("hi", &[&land, &big], None, DecodingMode::Greedy, 2);
    let status = status_of(&server, req).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("image 1 is"), "{status:?}");
    assert!(status.message().contains("max_image_bytes"), "{status:?}");
    let m = server.metrics().await;
    assert_eq!(m.get("lynx_vision_inputs_decoded_total"), decoded);
    // Exactly at the limit is fine.
    let at_limit = "é".repeat(50);
    let ok = status_of(
        &server,
        request(&at_limit, &[], None, DecodingMode::Greedy, 2),
    )
    .await;
    assert_eq!(ok.code(), Code::Ok, "{ok:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_message_size_limit_names_itself_and_fits_the_image_limits() {
    // A valid 5 MiB image passes with the default limits (tonic's own default is 4 MiB).
    let server = TestServer::start(|_| {}).await;
    let five_mib = noise_png(1300, 1350);
    assert!(five_mib.len() > 5 << 20, "{}", five_mib.len());
    let ok = status_of(&server, greedy_with_image(&five_mib)).await;
    assert_eq!(ok.code(), Code::Ok, "{ok:?}");
    let info = server
        .client()
        .await
        .get_model_info(v1::GetModelInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let limits = info.limits.unwrap();
    assert_eq!(
        limits.max_request_bytes,
        8 * limits.max_image_bytes + limits.max_prompt_bytes + 8 * 256 + 64 * 1024
    );
    drop(server);

    let server = TestServer::start(|c| c.limits.max_request_bytes = 1 << 20).await;
    for streaming in [false, true] {
        let req = greedy_with_image(&five_mib);
        let status = if streaming {
            match server.client().await.generate_stream(req).await {
                Err(s) => s,
                Ok(s) => s.into_inner().message().await.unwrap_err(),
            }
        } else {
            status_of(&server, req).await
        };
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status
                .message()
                .contains("more than max_request_bytes = 1048576"),
            "{status:?}"
        );
    }
    let m = server.metrics().await;
    assert_eq!(
        m.get("lynx_requests_total{code=\"RESOURCE_EXHAUSTED\"}"),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_over_the_preparation_memory_budget_is_refused_naming_it() {
    let server = TestServer::start(|c| c.prepare.memory_bytes = 1 << 20).await;
    let decoded = server
        .metrics()
        .await
        .get("lynx_vision_inputs_decoded_total");
    // 800 x 800 RGB: 1.9 MB decoded.
    let status = status_of(&server, greedy_with_image(&noise_png(800, 800))).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("prepare_memory_mib"),
        "{status:?}"
    );
    // An image within the budget is decoded, and counted.
    let ok = status_of(&server, greedy_with_image(&input("img_landscape.png"))).await;
    assert_eq!(ok.code(), Code::Ok, "{ok:?}");
    let m = server.metrics().await;
    assert_eq!(m.get("lynx_vision_inputs_decoded_total"), decoded + 1.0);
    assert_eq!(m.get("lynx_prepare_memory_bytes"), 0.0, "reservations leak");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_counted_once_with_the_status_its_client_got() {
    let server = TestServer::start(|c| {
        c.limits.max_request_bytes = 1 << 20;
        c.auth_tokens = vec!["secret".into()];
    })
    .await;
    let channel = tonic::transport::Endpoint::new(format!("http://{}", server.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let token: tonic::metadata::MetadataValue<_> = "bearer secret".parse().unwrap();
    let mut client = v1::lynx_client::LynxClient::with_interceptor(
        channel.clone(),
        move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", token.clone());
            Ok(r)
        },
    );
    let mut seen: Vec<Code> = Vec::new();
    let code = |r: Result<tonic::Response<v1::GenerateResponse>, tonic::Status>| match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    };
    let hi = || request("hi", &[], None, DecodingMode::Greedy, 2);
    // OK, INVALID_ARGUMENT (cheap check, then a corrupt image), RESOURCE_EXHAUSTED (size).
    seen.push(code(client.generate(hi()).await));
    let mut bad = hi();
    bad.priority = 9;
    seen.push(code(client.generate(bad).await));
    seen.push(code(
        client
            .generate(greedy_with_image(b"not an image at all"))
            .await,
    ));
    seen.push(code(
        client
            .generate(greedy_with_image(&noise_png(700, 700)))
            .await,
    ));
    // DEADLINE_EXCEEDED during generation (300 greedy tokens without EOS take the tiny model
    // several times the deadline).
    let land = input("img_landscape.png");
    let long = request("What is in it?", &[&land], None, DecodingMode::Greedy, 300);
    seen.push(code(
        client
            .generate(with_timeout(long.clone(), Duration::from_millis(50)))
            .await,
    ));
    // UNAUTHENTICATED, without a token.
    let mut anonymous = v1::lynx_client::LynxClient::new(channel);
    seen.push(code(anonymous.generate(hi()).await));
    // An undecodable message (the instruction is not UTF-8).
    let status = generate_invalid_utf8(server.grpc, Some("secret")).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    seen.push(status.code());
    // CANCELLED: the client leaves while its request runs.
    let mut leaving = client.clone();
    let task = tokio::spawn(async move { leaving.generate(long).await });
    server
        .wait_metrics("running", |m| m.get("lynx_running_requests") == 1.0)
        .await;
    task.abort();
    seen.push(Code::Cancelled);
    let m = server
        .wait_metrics("the cancelled request counted", |m| {
            m.get_or_zero("lynx_requests_total{code=\"CANCELLED\"}") == 1.0
        })
        .await;
    let mut want = std::collections::BTreeMap::<&str, f64>::new();
    for c in &seen {
        *want.entry(lynx_proto::code_name(*c)).or_default() += 1.0;
    }
    assert_eq!(
        want,
        [
            ("CANCELLED", 1.0),
            ("DEADLINE_EXCEEDED", 1.0),
            ("INVALID_ARGUMENT", 3.0),
            ("OK", 1.0),
            ("RESOURCE_EXHAUSTED", 1.0),
            ("UNAUTHENTICATED", 1.0),
        ]
        .into_iter()
        .collect(),
        "what the clients saw"
    );
    for (label, n) in &want {
        let key = format!("lynx_requests_total{{code=\"{label}\"}}");
        assert_eq!(m.get_or_zero(&key), *n, "{key}");
    }
    let total: f64 =
        m.0.iter()
            .filter(|(k, _)| k.starts_with("lynx_requests_total{"))
            .map(|(_, v)| v)
            .sum();
    // The warm-up request is not a client request and is not counted.
    assert_eq!(total, seen.len() as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_timeout_cuts_off_with_a_message_that_says_so() {
    // 512 greedy tokens of "hi" (no EOS) take the fixture model over twice the drain timeout.
    let mut server = TestServer::start(|c| c.drain_timeout = Duration::from_millis(100)).await;
    let mut client = server.client().await;
    let long = request("hi", &[], None, DecodingMode::Greedy, 512);
    let unary = tokio::spawn(async move { client.generate(long).await });
    let mut stream = server
        .client()
        .await
        .generate_stream(request("hi", &[], None, DecodingMode::Greedy, 512))
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap();
    server.signal_shutdown();
    let status = unary.await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("drain timeout"), "{status:?}");
    let status = loop {
        match stream.message().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the stream ended without a status"),
            Err(s) => break s,
        }
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("drain timeout"), "{status:?}");
    server.stop().await.unwrap();
}
