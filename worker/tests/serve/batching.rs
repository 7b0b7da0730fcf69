//! Batching never changes results: concurrent clients get the tokens they get alone, and the
//! official tokens of the fixture.

use std::time::Duration;

use lynx_proto::v1::{DecodingMode, GenerateRequest, GenerateResponse};

use crate::common::{ref_ids, release_model, tiny, BEAM_KEY, GREEDY_KEY};
use crate::harness::{input, request, video_frames, TestServer};

/// 32 requests mixing single images, two images, videos and text only, prompts of different
/// lengths, greedy and beam search, 4 to 23 new tokens.
fn mixed_requests() -> Vec<GenerateRequest> {
    let land = input("img_landscape.png");
    let portrait = input("img_portrait.jpg");
    let gray = input("img_gray.png");
    let big = input("img_big.png");
    let v7 = video_frames("video7.json");
    let v3 = video_frames("video3.json");
    let prompts = [
        "What is in the image?",
        "How many people are there? Answer briefly.",
        "Describe the colors.",
        "Tell me, in as many words as you like, everything you can see and what it could mean.",
        "hi",
    ];
    (0..32u32)
        .map(|i| {
            let mode = if i % 3 == 2 {
                DecodingMode::Beam
            } else {
                DecodingMode::Greedy
            };
            let max_new = 4 + (i * 7) % 20;
            let p = prompts[i as usize % prompts.len()];
            match i % 6 {
                0 => request(p, &[&land], None, mode, max_new),
                1 => request(p, &[&portrait], None, mode, max_new),
                2 => request(p, &[], Some(v7.clone()), mode, max_new),
                3 => request(p, &[], None, mode, max_new),
                4 => request(p, &[&gray, &big], None, mode, max_new),
                _ => request(p, &[], Some(v3.clone()), mode, max_new),
            }
        })
        .collect()
}

async fn concurrently(server: &TestServer, reqs: &[GenerateRequest]) -> Vec<GenerateResponse> {
    let mut tasks = Vec::new();
    for r in reqs {
        let mut client = server.client().await;
        let r = r.clone();
        tasks.push(tokio::spawn(async move {
            client.generate(r).await.map(tonic::Response::into_inner)
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap().unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_get_exactly_the_tokens_they_get_alone() {
    let server = TestServer::start(|c| {
        c.runner.scheduler.max_batch_delay = Duration::from_millis(20);
    })
    .await;
    let reqs = mixed_requests();
    let mut client = server.client().await;
    let mut alone = Vec::new();
    for r in &reqs {
        alone.push(client.generate(r.clone()).await.unwrap().into_inner());
    }
    let before = server.metrics().await;
    let together = concurrently(&server, &reqs).await;
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert!(!a.token_ids.is_empty(), "request {i} generated nothing");
        assert_eq!(
            a.token_ids, t.token_ids,
            "request {i}: batched tokens differ"
        );
        assert_eq!(a.text, t.text, "request {i}");
        assert_eq!(a.finish_reason, t.finish_reason, "request {i}");
        let usage = t.usage.unwrap();
        let items = reqs[i].images.len() + usize::from(reqs[i].video.is_some());
        assert_eq!(
            usage.vision_tokens as usize,
            items * 8,
            "request {i}: 8 latents per item"
        );
        assert_eq!(usage.completion_tokens as usize, t.token_ids.len());
    }
    // The concurrent run really batched: more than one request per decode step on average.
    let after = server.metrics().await;
    let steps = after.get("lynx_batch_size_count") - before.get("lynx_batch_size_count");
    let rows = after.get("lynx_batch_size_sum") - before.get("lynx_batch_size_sum");
    assert!(
        rows / steps > 2.0,
        "{rows} requests over {steps} steps: no batching"
    );
    // Every image and video had been seen alone: the concurrent run hit the encoder cache only.
    let misses = after.get("lynx_encoder_cache_misses_total")
        - before.get("lynx_encoder_cache_misses_total");
    assert_eq!(
        misses, 0.0,
        "repeated inputs must come from the encoder cache"
    );
    assert_eq!(after.get("lynx_requests_total{code=\"OK\"}"), 64.0);
}

/// The fixture's cases, sent concurrently in both modes, get the official tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_tokens_are_the_official_ones() {
    #[derive(serde::Deserialize)]
    struct Line {
        question: String,
        image: Option<String>,
        video: Option<String>,
    }
    let lines = |file: &str| -> Vec<Line> {
        std::fs::read_to_string(tiny().join("inputs").join(file))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let images = lines("tiny_images.jsonl");
    let videos = lines("tiny_videos.jsonl");
    let eos = release_model().config.tokens.eos;
    let server = TestServer::start(|_| {}).await;
    let mut reqs = Vec::new();
    let mut want = Vec::new();
    for (mode, key) in [
        (DecodingMode::Greedy, GREEDY_KEY),
        (DecodingMode::Beam, BEAM_KEY),
    ] {
        let cases = (0..4).map(|i| (format!("image{i}"), &images[i]));
        let cases = cases.chain((0..2).map(|i| (format!("video{i}"), &videos[i])));
        for (case, line) in cases {
            let file = |rel: &String| std::fs::read(crate::common::model_dir().join(rel)).unwrap();
            let r = match (&line.image, &line.video) {
                (Some(img), _) => request(&line.question, &[&file(img)], None, mode, 16),
                (None, Some(v)) => {
                    let frames = lynx_worker::vision::parse_video_json(&file(v)).unwrap();
                    request(&line.question, &[], Some(frames), mode, 16)
                }
                (None, None) => unreachable!("every fixture line has an input"),
            };
            reqs.push(r);
            let row = ref_ids(&case, key).remove(0);
            let new: Vec<u32> = row[1..].iter().copied().take_while(|&t| t != eos).collect();
            want.push((format!("{case} {mode:?}"), new));
        }
    }
    let got = concurrently(&server, &reqs).await;
    for ((what, want), got) in want.iter().zip(&got) {
        assert_eq!(&got.token_ids, want, "{what}");
    }
}

/// Streaming: the deltas add up to the final answer's tokens, and the final message comes last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_deltas_add_up_to_the_final_answer() {
    use lynx_proto::v1::generate_stream_response::Event;
    let server = TestServer::start(|_| {}).await;
    let mut client = server.client().await;
    let img = input("img_landscape.png");
    for mode in [DecodingMode::Greedy, DecodingMode::Beam] {
        let r = request("What is in the image?", &[&img], None, mode, 20);
        let unary = client.generate(r.clone()).await.unwrap().into_inner();
        let mut stream = client.generate_stream(r).await.unwrap().into_inner();
        let (mut ids, mut text, mut deltas, mut last) = (Vec::new(), String::new(), 0, None);
        while let Some(msg) = stream.message().await.unwrap() {
            assert!(last.is_none(), "nothing may follow the final message");
            match msg.event.unwrap() {
                Event::Delta(d) => {
                    ids.extend(d.token_ids);
                    text.push_str(&d.text);
                    deltas += 1;
                }
                Event::Final(f) => last = Some(f),
            }
        }
        let last = last.expect("a final message");
        assert_eq!(last.token_ids, unary.token_ids, "{mode:?}");
        assert_eq!(ids, last.token_ids, "{mode:?}: deltas add up to the tokens");
        assert_eq!(
            text.trim(),
            last.text,
            "{mode:?}: deltas add up to the text"
        );
        if mode == DecodingMode::Greedy {
            assert!(deltas > 1, "greedy streams token by token");
        }
    }
}

/// A stop string ends generation where it first appears; the answer is cut before it, in the
/// unary answer and in every streamed delta.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_strings_cut_the_answer() {
    use lynx_proto::v1::generate_stream_response::Event;
    use lynx_proto::v1::FinishReason;
    let server = TestServer::start(|_| {}).await;
    let mut client = server.client().await;
    let img = input("img_landscape.png");
    let plain = request(
        "What is in the image?",
        &[&img],
        None,
        DecodingMode::Greedy,
        40,
    );
    let alone = client.generate(plain.clone()).await.unwrap().into_inner();
    let words: Vec<&str> = alone.text.split_whitespace().collect();
    assert!(words.len() > 4, "need a few words: {:?}", alone.text);
    let stop = words[words.len() / 2].to_owned();
    let at = alone.text.find(&stop).unwrap();
    let mut with_stop = plain;
    with_stop.parameters.as_mut().unwrap().stop = vec![stop.clone()];

    let cut = client
        .generate(with_stop.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cut.finish_reason, FinishReason::Stop as i32);
    assert_eq!(cut.text, alone.text[..at].trim());
    assert!(alone.token_ids.starts_with(&cut.token_ids));
    assert!(cut.token_ids.len() < alone.token_ids.len());

    let mut stream = client
        .generate_stream(with_stop)
        .await
        .unwrap()
        .into_inner();
    let mut text = String::new();
    while let Some(msg) = stream.message().await.unwrap() {
        match msg.event.unwrap() {
            Event::Delta(d) => text.push_str(&d.text),
            Event::Final(f) => assert_eq!(f.text, cut.text),
        }
    }
    assert!(
        !text.contains(&stop),
        "streamed text {text:?} shows the stop string"
    );
    assert_eq!(text.trim(), cut.text);
}

/// The forward program (the GPU's kernel-call sequence, on its host mirror) behind the same
/// server: concurrent mixed requests get exactly the CPU model's tokens, and the cache blocks of
/// finished, beam-pruned and cancelled rows all come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_program_serves_the_cpu_models_tokens() {
    use lynx_worker::cli::device::{load_served, DeviceArg, DeviceFlags};
    use lynx_worker::cli::{EmbeddedArg, ModelArgs, StoreDtype};
    let model = ModelArgs {
        model: Some(crate::common::model_dir()),
        config: None,
        embedded: EmbeddedArg::Tiny,
    };
    let flags = DeviceFlags {
        device: DeviceArg::Mirror,
        random_weights: None,
    };
    let mirror = TestServer::start_with(
        |c| c.runner.scheduler.max_batch_delay = Duration::from_millis(20),
        move || load_served(&model, &flags, StoreDtype::F32, 4096, 16).map_err(|e| e.0),
    )
    .await;
    let cpu = TestServer::start(|c| {
        c.runner.scheduler.max_batch_delay = Duration::from_millis(20);
    })
    .await;
    let reqs: Vec<GenerateRequest> = mixed_requests().into_iter().step_by(2).collect();
    let want = concurrently(&cpu, &reqs).await;
    let got = concurrently(&mirror, &reqs).await;
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        assert!(!w.token_ids.is_empty(), "request {i} generated nothing");
        assert_eq!(
            w.token_ids, g.token_ids,
            "request {i}: device program tokens differ"
        );
        assert_eq!(w.text, g.text, "request {i}");
    }
    let m = mirror.metrics().await;
    assert_eq!(m.get("lynx_requests_total{code=\"OK\"}"), reqs.len() as f64);
}
