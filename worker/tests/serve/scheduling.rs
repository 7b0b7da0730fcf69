//! Queue, deadlines, cancellation and priorities through the real server.

use std::time::{Duration, Instant};

use lynx_proto::v1::generate_stream_response::Event;
use lynx_proto::v1::{DecodingMode, FinishReason, GenerateRequest, Priority};
use tokio::sync::mpsc;
use tonic::Code;

use crate::harness::{input, request, with_timeout, TestServer};

/// A greedy request that runs to its `max_new_tokens` (the fixture model does not stop early
/// within 300 tokens on this input: checked by `long_requests_really_are_long`).
/// A request that decodes long enough for the tests below to act while it runs: 450 greedy
/// tokens (the fixture model says EOS after 455 on this image), about 250 ms on the CPU kernels.
fn long_request() -> GenerateRequest {
    let img = input("img_landscape.png");
    request(
        "What is in the image?",
        &[&img],
        None,
        DecodingMode::Greedy,
        LONG_TOKENS,
    )
}

const LONG_TOKENS: u32 = 450;

fn short_request(p: Priority) -> GenerateRequest {
    let mut r = request("hi", &[], None, DecodingMode::Greedy, 2);
    r.priority = p as i32;
    r.client_request_id = format!("{p:?}");
    r
}

/// Starts a streamed long request and waits for its first delta (it is running then).
async fn running_stream(
    server: &TestServer,
) -> tonic::Streaming<lynx_proto::v1::GenerateStreamResponse> {
    let mut stream = server
        .client()
        .await
        .generate_stream(long_request())
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(matches!(first.event, Some(Event::Delta(_))));
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_requests_really_are_long() {
    let server = TestServer::start(|_| {}).await;
    let r = server
        .client()
        .await
        .generate(long_request())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.finish_reason, FinishReason::Length as i32);
    assert_eq!(r.token_ids.len(), LONG_TOKENS as usize);
    let t = r.timings.unwrap();
    // Twice the longest deadline the tests below give a long request.
    assert!(t.decode_ms > 150.0, "decoding took only {} ms", t.decode_ms);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_resource_exhausted_at_once() {
    // A long batching delay keeps the first requests waiting in the queue.
    let server = TestServer::start(|c| {
        c.runner.scheduler.max_queue = 2;
        c.runner.scheduler.max_batch_delay = Duration::from_secs(60);
    })
    .await;
    let waiting = server.hold_in_queue(2).await;
    let t0 = Instant::now();
    let status = server
        .client()
        .await
        .generate(short_request(Priority::High))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("max_queue"), "{status:?}");
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "refused after {:?}",
        t0.elapsed()
    );
    // Clients that leave free their places in the queue.
    for w in waiting {
        w.abort();
    }
    server
        .wait_metrics("queue empty", |m| m.get("lynx_queue_length") == 0.0)
        .await;
    let m = server.metrics().await;
    assert_eq!(
        m.get("lynx_requests_total{code=\"RESOURCE_EXHAUSTED\"}"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_in_the_queue_are_deadline_exceeded_and_free_the_place() {
    let server = TestServer::start(|c| {
        c.runner.scheduler.max_batch_delay = Duration::from_secs(60);
    })
    .await;
    let mut client = server.client().await;
    let t0 = Instant::now();
    let status = client
        .generate(with_timeout(
            short_request(Priority::Normal),
            Duration::from_millis(200),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(t0.elapsed() < Duration::from_secs(2));
    let stream = client
        .generate_stream(with_timeout(
            short_request(Priority::Normal),
            Duration::from_millis(200),
        ))
        .await;
    let status = match stream {
        Err(s) => s,
        Ok(s) => s.into_inner().message().await.unwrap_err(),
    };
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("queue"), "{status:?}");
    server
        .wait_metrics("queue empty", |m| m.get("lynx_queue_length") == 0.0)
        .await;
    let m = server.metrics().await;
    assert_eq!(
        m.get("lynx_requests_total{code=\"DEADLINE_EXCEEDED\"}"),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_during_generation_stop_it_and_free_the_kv_blocks() {
    let server = TestServer::start(|_| {}).await;
    let mut client = server.client().await;
    let t0 = Instant::now();
    let status = client
        .generate(with_timeout(long_request(), Duration::from_millis(50)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(t0.elapsed() < Duration::from_secs(1));
    server
        .wait_metrics("nothing running", |m| {
            m.get("lynx_running_sequences") == 0.0 && m.get("lynx_kv_cache_usage") == 0.0
        })
        .await;
    // Streaming: tokens arrive, then the deadline ends the stream.
    let mut stream = client
        .generate_stream(with_timeout(long_request(), Duration::from_millis(75)))
        .await
        .unwrap()
        .into_inner();
    let mut deltas = 0;
    let status = loop {
        match stream.message().await {
            Ok(Some(msg)) => {
                assert!(
                    matches!(msg.event, Some(Event::Delta(_))),
                    "no final message"
                );
                deltas += 1;
            }
            Ok(None) => panic!("stream ended without a status"),
            Err(s) => break s,
        }
    };
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("during generation"), "{status:?}");
    assert!(deltas > 0, "tokens were streamed before the deadline");
    server
        .wait_metrics("nothing running", |m| {
            m.get("lynx_running_sequences") == 0.0 && m.get("lynx_kv_cache_usage") == 0.0
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_cancels_frees_its_slot_at_the_next_step() {
    let server = TestServer::start(|_| {}).await;
    let stream = running_stream(&server).await;
    let m = server.metrics().await;
    assert_eq!(m.get("lynx_running_sequences"), 1.0);
    assert!(m.get("lynx_kv_cache_usage") > 0.0);
    drop(stream);
    server
        .wait_metrics("slot freed", |m| {
            m.get("lynx_running_sequences") == 0.0
                && m.get("lynx_kv_cache_usage") == 0.0
                && m.get_or_zero("lynx_requests_total{code=\"CANCELLED\"}") == 1.0
        })
        .await;
    // The worker goes on serving.
    let r = server
        .client()
        .await
        .generate(short_request(Priority::Normal))
        .await
        .unwrap();
    assert_eq!(r.get_ref().token_ids.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priorities_are_served_first_fifo_within_a_level() {
    let server = TestServer::start(|c| c.runner.scheduler.max_batch_size = 1).await;
    let blocker = running_stream(&server).await;
    let order = [
        Priority::Low,
        Priority::Normal,
        Priority::High,
        Priority::Low,
        Priority::High,
    ];
    let (done_tx, mut done_rx) = mpsc::channel(order.len());
    for (i, p) in order.into_iter().enumerate() {
        let mut client = server.client().await;
        let done = done_tx.clone();
        tokio::spawn(async move {
            // Long enough (20 tokens) that completions are far apart: completion order is
            // admission order.
            let img = input("img_landscape.png");
            let mut r = request("hi", &[&img], None, DecodingMode::Greedy, 20);
            r.priority = p as i32;
            r.client_request_id = format!("{i}:{p:?}");
            let answer = client.generate(r).await.unwrap().into_inner();
            done.send(answer.client_request_id).await.unwrap();
        });
        // Arrival order is the order of submission.
        server
            .wait_metrics("queued", |m| m.get("lynx_queue_length") == (i + 1) as f64)
            .await;
    }
    drop(blocker);
    let mut served = Vec::new();
    for _ in 0..order.len() {
        served.push(done_rx.recv().await.unwrap());
    }
    assert_eq!(served, ["2:High", "4:High", "1:Normal", "0:Low", "3:Low"]);
}
