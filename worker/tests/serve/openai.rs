//! The OpenAI-compatible API over plain HTTP: models, chat completions whole and streamed (the
//! same greedy answer as gRPC), and errors in OpenAI's shape with their HTTP status.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use lynx_proto::v1::DecodingMode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{input, parse_http, request, TestServer};

/// `POST path` with a JSON `body` (and `token` as bearer); the status and the raw body.
async fn post(addr: SocketAddr, path: &str, body: &str, token: Option<&str>) -> (u16, String) {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    post_with(addr, path, body, &auth).await
}

/// `POST path` with extra header lines `headers` (each ending in CRLF).
pub(crate) async fn post_with(
    addr: SocketAddr,
    path: &str,
    body: &str,
    headers: &str,
) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{headers}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let (status, _, body) = parse_http(raw);
    (status, body)
}

async fn get_json(addr: SocketAddr, path: &str) -> Value {
    let (status, body) = crate::harness::http_get(addr, path).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn data_uri(bytes: &[u8]) -> String {
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

pub(crate) fn chat(model: &str, prompt: &str, image: &[u8], extra: Value) -> String {
    let mut body = json!({
        "model": model,
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": prompt},
            {"type": "image_url", "image_url": {"url": data_uri(image)}},
        ]}],
        "temperature": 0,
        "max_tokens": 8,
    });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    body.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_chat_completions_answer_as_grpc_does_whole_and_streamed() {
    let server = TestServer::start(|_| {}).await;
    let models = get_json(server.http, "/v1/models").await;
    assert_eq!(models["object"], "list");
    let model = models["data"][0]["id"].as_str().unwrap().to_owned();
    let image = input("img_landscape.png");
    let prompt = "What is in the image?";

    let grpc = server
        .client()
        .await
        .generate(request(prompt, &[&image], None, DecodingMode::Greedy, 8))
        .await
        .unwrap()
        .into_inner();
    let grpc_usage = grpc.usage.unwrap();

    let (status, body) = post(
        server.http,
        "/v1/chat/completions",
        &chat(&model, prompt, &image, json!({})),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let whole: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(whole["model"], model.as_str());
    assert_eq!(whole["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        whole["choices"][0]["message"]["content"],
        grpc.text.as_str()
    );
    let usage = &whole["usage"];
    let prompt_tokens = u64::from(grpc_usage.prompt_tokens + grpc_usage.vision_tokens);
    assert_eq!(usage["prompt_tokens"], prompt_tokens);
    assert_eq!(
        usage["completion_tokens"],
        u64::from(grpc_usage.completion_tokens)
    );
    assert_eq!(
        usage["total_tokens"],
        prompt_tokens + u64::from(grpc_usage.completion_tokens)
    );

    let streamed = chat(
        &model,
        prompt,
        &image,
        json!({"stream": true, "stream_options": {"include_usage": true}}),
    );
    let (status, body) = post(server.http, "/v1/chat/completions", &streamed, None).await;
    assert_eq!(status, 200, "{body}");
    let events: Vec<&str> = body
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{body}");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text.trim(), grpc.text.as_str());
    let finish = chunks
        .iter()
        .find_map(|c| c["choices"][0]["finish_reason"].as_str())
        .unwrap();
    assert_eq!(
        finish,
        whole["choices"][0]["finish_reason"].as_str().unwrap()
    );
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"].as_array().map(Vec::len), Some(0));
    assert_eq!(last["usage"], whole["usage"]);

    let m = server.metrics().await;
    assert_eq!(m.get("lynx_openai_requests_total{status=\"200\"}"), 2.0);
    assert_eq!(m.get("lynx_requests_total{code=\"OK\"}"), 3.0);
}

/// Each error in OpenAI's JSON shape, with the HTTP status of the matching gRPC status.
async fn expect_error(
    addr: SocketAddr,
    body: &str,
    token: Option<&str>,
    status: u16,
    type_: &str,
) -> Value {
    let (got, text) = post(addr, "/v1/chat/completions", body, token).await;
    assert_eq!(got, status, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(v["error"]["type"], type_, "{text}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{text}"
    );
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_have_openais_shape_and_status() {
    let server = TestServer::start(|c| {
        c.auth_tokens = vec!["s3cret".into()];
        c.runner.scheduler.max_queue = 1;
        c.runner.scheduler.max_batch_delay = Duration::from_secs(60);
    })
    .await;
    let token = Some("s3cret");
    let (status, _) = crate::harness::http_get(server.http, "/v1/models").await;
    assert_eq!(status, 401, "models need the token too");
    let model = "lynx-vicuna-7b";
    let image = input("img_landscape.png");
    let ok = chat(model, "hi", &image, json!({}));

    expect_error(server.http, &ok, None, 401, "authentication_error").await;
    expect_error(server.http, &ok, Some("wrong"), 401, "authentication_error").await;
    let bad_image = chat(model, "hi", b"not an image", json!({}));
    let v = expect_error(server.http, &bad_image, token, 400, "invalid_request_error").await;
    assert!(
        v["error"]["message"].as_str().unwrap().contains("image 0"),
        "{v}"
    );
    let v = expect_error(
        server.http,
        &chat("gpt-4o", "hi", &image, json!({})),
        token,
        404,
        "invalid_request_error",
    )
    .await;
    assert_eq!(v["error"]["code"], "model_not_found");
    let v = expect_error(
        server.http,
        &chat(model, "hi", &image, json!({"n": 2})),
        token,
        400,
        "invalid_request_error",
    )
    .await;
    assert_eq!(v["error"]["param"], "n");
    expect_error(
        server.http,
        "{not json",
        token,
        400,
        "invalid_request_error",
    )
    .await;
    let long = chat(model, "hi", &image, json!({"max_tokens": 100000}));
    let v = expect_error(server.http, &long, token, 400, "invalid_request_error").await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_new_tokens"),
        "{v}"
    );

    // The queue full: one request waits (the batch delay holds it), the next is refused.
    let waiting = tokio::spawn({
        let addr = server.http;
        let body = ok.clone();
        async move { post(addr, "/v1/chat/completions", &body, Some("s3cret")).await }
    });
    server
        .wait_metrics("one waiting", |m| m.get("lynx_queue_length") == 1.0)
        .await;
    let v = expect_error(server.http, &ok, token, 429, "rate_limit_error").await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_queue"),
        "{v}"
    );
    waiting.abort();

    let m = server.metrics().await;
    assert_eq!(m.get("lynx_openai_requests_total{status=\"401\"}"), 2.0);
    assert_eq!(m.get("lynx_openai_requests_total{status=\"429\"}"), 1.0);
    assert_eq!(m.get("lynx_openai_requests_total{status=\"404\"}"), 1.0);
}

/// `x-request-timeout` is the request's deadline: a request still waiting when it runs out is
/// answered 504 (here the batching delay keeps it waiting).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_timeout_header_is_a_deadline() {
    let server = TestServer::start(|c| {
        c.runner.scheduler.max_batch_delay = Duration::from_secs(60);
    })
    .await;
    let image = input("img_landscape.png");
    let body = chat("lynx-vicuna-7b", "hi", &image, json!({}));
    let started = std::time::Instant::now();
    let (status, text) = post_with(
        server.http,
        "/v1/chat/completions",
        &body,
        "x-request-timeout: 0.3\r\n",
    )
    .await;
    assert_eq!(status, 504, "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["type"], "timeout_error", "{text}");
    let m = server.metrics().await;
    assert_eq!(
        m.get("lynx_requests_total{code=\"DEADLINE_EXCEEDED\"}"),
        1.0
    );
}

/// A client that disconnects while waiting for a whole answer cancels its request: the place and
/// the KV blocks are freed, and the request counts as CANCELLED, not answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_a_whole_answer_cancels_it() {
    let server = TestServer::start(|_| {}).await;
    let image = input("img_landscape.png");
    let body = chat(
        "lynx-vicuna-7b",
        "Describe it.",
        &image,
        json!({"max_tokens": 400}),
    );
    let mut s = tokio::net::TcpStream::connect(server.http).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body.as_bytes()).await.unwrap();
    server
        .wait_metrics("generating", |m| m.get("lynx_running_requests") == 1.0)
        .await;
    drop(s);
    // Freed at the model thread's next step.
    let m = server
        .wait_metrics("cancelled and freed", |m| {
            m.0.get("lynx_requests_total{code=\"CANCELLED\"}").copied() == Some(1.0)
                && m.get("lynx_running_requests") == 0.0
        })
        .await;
    assert_eq!(
        m.0.get("lynx_requests_total{code=\"OK\"}")
            .copied()
            .unwrap_or(0.0),
        0.0
    );
}

/// Images by `http(s)` URL: fetched from the hosts of `--image-url-hosts` only, the same answer
/// as the same image in a `data:` URI; another host, a redirect to another host and an image over
/// `max_image_bytes` are 400 naming why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_urls_come_from_the_allowed_hosts_only() {
    use axum::response::{IntoResponse, Redirect};
    use axum::routing::get;
    let image = input("img_landscape.png");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = image.clone();
    let app =
        axum::Router::new()
            .route(
                "/img.png",
                get(move || async move { served.clone().into_response() }),
            )
            .route(
                "/elsewhere",
                get(move || async move {
                    Redirect::temporary(&format!("http://localhost:{port}/img.png"))
                }),
            )
            .route(
                "/same-host",
                get(|| async { Redirect::temporary("/img.png") }),
            )
            .route("/big", get(|| async { vec![0u8; 3 << 20].into_response() }));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let server = TestServer::start(|c| {
        c.image_url_hosts = vec!["127.0.0.1".into()];
        c.limits.max_image_bytes = 2 << 20;
    })
    .await;
    let model = "lynx-vicuna-7b";
    let by_url = |url: String| {
        json!({
            "model": model,
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "What is in the image?"},
                {"type": "image_url", "image_url": {"url": url}},
            ]}],
            "temperature": 0,
            "max_tokens": 8,
        })
        .to_string()
    };
    let answer = |body: String| async move {
        let (status, text) = post(server.http, "/v1/chat/completions", &body, None).await;
        (
            status,
            serde_json::from_str::<Value>(&text).unwrap_or(Value::Null),
        )
    };
    let (status, inline) = answer(chat(model, "What is in the image?", &image, json!({}))).await;
    assert_eq!(status, 200, "{inline}");
    for path in ["img.png", "same-host"] {
        let (status, fetched) = answer(by_url(format!("http://127.0.0.1:{port}/{path}"))).await;
        assert_eq!(status, 200, "{path}: {fetched}");
        assert_eq!(
            fetched["choices"][0]["message"]["content"], inline["choices"][0]["message"]["content"],
            "{path}"
        );
    }
    for (url, says) in [
        (
            format!("http://localhost:{port}/img.png"),
            "image_url_hosts",
        ),
        (format!("http://127.0.0.1:{port}/elsewhere"), "another host"),
        (format!("http://127.0.0.1:{port}/big"), "max_image_bytes"),
        (format!("http://127.0.0.1:{port}/missing"), "404"),
    ] {
        let (status, error) = answer(by_url(url.clone())).await;
        assert_eq!(status, 400, "{url}: {error}");
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{url}: {message}");
    }
}

/// A body over 4/3 of `max_request_bytes` is 413; a draining worker answers 503 (a long
/// streamed answer keeps it draining meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_413_and_a_draining_worker_503() {
    let mut server = TestServer::start(|c| c.limits.max_request_bytes = 64 << 10).await;
    let model = "lynx-vicuna-7b";
    let image = input("img_landscape.png");
    let over = chat(model, "hi", &vec![7u8; 100 << 10], json!({}));
    let v = expect_error(server.http, &over, None, 413, "invalid_request_error").await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_request_bytes"),
        "{v}"
    );

    let long = chat(
        model,
        "Describe it.",
        &image,
        json!({"max_tokens": 300, "stream": true}),
    );
    let streaming = tokio::spawn({
        let addr = server.http;
        async move { post(addr, "/v1/chat/completions", &long, None).await }
    });
    server
        .wait_metrics("generating", |m| m.get("lynx_running_requests") == 1.0)
        .await;
    server.signal_shutdown();
    let t0 = std::time::Instant::now();
    while crate::harness::http_get(server.http, "/readyz").await.0 != 503 {
        assert!(t0.elapsed() < Duration::from_secs(2), "never draining");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let short = chat(model, "hi", &image, json!({}));
    expect_error(server.http, &short, None, 503, "service_unavailable").await;
    let (status, body) = streaming.await.unwrap();
    assert_eq!(status, 200);
    assert!(
        body.ends_with("data: [DONE]\n\n"),
        "the admitted stream finished"
    );
    server.stop().await.unwrap();
}
