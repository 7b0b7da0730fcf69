//! Every limit and every kind of bad input is INVALID_ARGUMENT naming the limit or the problem,
//! answered at once, and the worker goes on serving.

use lynx_proto::v1::{DecodingMode, DecodingParameters, GenerateRequest};
use tonic::Code;

use crate::harness::{generate_invalid_utf8, input, request, video_frames, TestServer};

/// A PNG whose header announces `w` x `h` pixels and whose data is one empty zlib stream: a
/// decompression bomb must be refused from the header.
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]); // 8-bit RGB
    let idat = b"IDAT\x78\x9c\x03\x00\x00\x00\x00\x01".to_vec();
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    for chunk in [ihdr, idat, b"IEND".to_vec()] {
        png.extend((chunk.len() as u32 - 4).to_be_bytes());
        png.extend(&chunk);
        png.extend(crc32(&chunk).to_be_bytes());
    }
    png
}

fn with(mut r: GenerateRequest, f: impl FnOnce(&mut DecodingParameters)) -> GenerateRequest {
    f(r.parameters.get_or_insert_with(Default::default));
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_limit_and_bad_input_is_invalid_argument_naming_it() {
    let server = TestServer::start(|c| {
        c.limits.max_image_bytes = 100_000;
        c.limits.max_image_pixels = 10_000;
        c.limits.max_images_per_request = 2;
        c.limits.max_video_frames = 5;
        c.limits.max_prompt_tokens = 30;
        c.limits.max_new_tokens = 32;
        c.limits.max_stop_strings = 2;
        c.runner.scheduler.max_batch_total_tokens = 600;
    })
    .await;
    let mut client = server.client().await;
    let land = input("img_landscape.png");
    let greedy =
        |images: &[&[u8]]| request("What is in it?", images, None, DecodingMode::Greedy, 8);
    let truncated = &land[..land.len() / 2];
    let cases: Vec<(&str, GenerateRequest, &str)> = vec![
        (
            "image bytes",
            greedy(&[&input("img_big.png")]),
            "max_image_bytes",
        ),
        (
            "pixels from the header",
            greedy(&[&png_header_only(50_000, 50_000)]),
            "max_image_pixels",
        ),
        (
            "images per request",
            greedy(&[&land, &land, &land]),
            "max_images_per_request",
        ),
        (
            "frames per video",
            request(
                "What?",
                &[],
                Some(video_frames("video7.json")),
                DecodingMode::Greedy,
                8,
            ),
            "max_video_frames",
        ),
        (
            "prompt tokens",
            request(
                &"describe it again and again ".repeat(10),
                &[],
                None,
                DecodingMode::Greedy,
                8,
            ),
            "max_prompt_tokens",
        ),
        (
            "new tokens",
            with(greedy(&[]), |p| p.max_new_tokens = Some(33)),
            "max_new_tokens",
        ),
        (
            "stop strings",
            with(greedy(&[]), |p| {
                p.stop = vec!["a".into(), "b".into(), "c".into()]
            }),
            "max_stop_strings",
        ),
        (
            "empty stop string",
            with(greedy(&[]), |p| p.stop = vec![String::new()]),
            "stop strings must not be empty",
        ),
        (
            "token budget",
            with(
                request("What?", &[&land], None, DecodingMode::Beam, 32),
                |p| p.num_beams = Some(16),
            ),
            "max_batch_total_tokens",
        ),
        (
            "corrupt image",
            greedy(&[b"definitely not an image"]),
            "image 0 cannot be decoded",
        ),
        (
            "truncated image",
            greedy(&[truncated]),
            "image 0 cannot be decoded",
        ),
        ("empty image", greedy(&[b""]), "image 0 is empty"),
        (
            "empty request",
            request("  ", &[], None, DecodingMode::Greedy, 8),
            "empty request",
        ),
        (
            "unknown decoding mode",
            with(greedy(&[]), |p| p.mode = 42),
            "unknown decoding mode",
        ),
        (
            "bad sampling parameter",
            with(greedy(&[]), |p| {
                p.mode = DecodingMode::Sample as i32;
                p.temperature = Some(0.0);
            }),
            "temperature",
        ),
        (
            "zero new tokens",
            with(greedy(&[]), |p| p.max_new_tokens = Some(0)),
            "max_new_tokens",
        ),
        (
            "images and a video",
            request(
                "What?",
                &[&land],
                Some(video_frames("video3.json")),
                DecodingMode::Greedy,
                8,
            ),
            "not both",
        ),
        (
            "video without frames",
            request("What?", &[], Some(Vec::new()), DecodingMode::Greedy, 8),
            "no frames",
        ),
        (
            "unknown priority",
            GenerateRequest {
                priority: 9,
                ..greedy(&[])
            },
            "unknown priority",
        ),
    ];
    for (what, req, needle) in cases {
        for streaming in [false, true] {
            let status = if streaming {
                // The status comes with the response headers or as the stream's first item.
                match client.generate_stream(req.clone()).await {
                    Err(s) => Some(s),
                    Ok(stream) => stream.into_inner().message().await.err(),
                }
            } else {
                client.generate(req.clone()).await.err()
            };
            let status = status.unwrap_or_else(|| panic!("{what}: accepted"));
            assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
            assert!(
                status.message().contains(needle),
                "{what}: message {:?} does not name {needle:?}",
                status.message()
            );
        }
    }
    // Still serving, and within the limits everything works.
    let ok = client
        .generate(greedy(&[&land, &land]))
        .await
        .unwrap()
        .into_inner();
    assert!(!ok.token_ids.is_empty());
    let ok = client
        .generate(request(
            "What?",
            &[],
            Some(video_frames("video3.json")),
            DecodingMode::Greedy,
            4,
        ))
        .await
        .unwrap();
    assert_eq!(ok.get_ref().usage.unwrap().vision_tokens, 8);
    let m = server.metrics().await;
    assert_eq!(
        m.get("lynx_requests_total{code=\"INVALID_ARGUMENT\"}"),
        38.0
    );
    assert_eq!(m.get("lynx_queue_length"), 0.0);
}

/// The instruction is a protobuf string: bytes that are not UTF-8 are INVALID_ARGUMENT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_is_invalid_argument() {
    let server = TestServer::start(|_| {}).await;
    let status = generate_invalid_utf8(server.grpc, None).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("UTF-8"), "{status:?}");
}
