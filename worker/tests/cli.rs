//! The `lynx-worker` binary: `generate` on the fixture (release layout, images, video, frame files)
//! and on the embedded default, `convert`, and one-line errors with a non-zero exit.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use base64::Engine;
use common::*;

fn worker(cache: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lynx-worker"));
    c.env("LYNX_CACHE_DIR", cache).env("RUST_LOG", "warn");
    c
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).unwrap()
}

fn input(name: &str) -> String {
    tiny().join("inputs").join(name).display().to_string()
}

#[test]
fn generate_greedy_on_the_release_fixture() {
    let cache = tempfile::tempdir().unwrap();
    let out = worker(cache.path())
        .args(["generate", "--model", model_dir().to_str().unwrap()])
        .args([
            "--image",
            &input("img_landscape.png"),
            &input("img_portrait.jpg"),
        ])
        .args([
            "--prompt",
            "What is in the image?",
            "--decoding",
            "greedy",
            "--max-new-tokens",
            "16",
            "--json",
        ])
        .output()
        .unwrap();
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 2, "one JSON object per image");
    let expected = ref_ids("image0", GREEDY_KEY);
    assert_eq!(ids(&lines[0]["token_ids"]), expected[0][1..].to_vec());
    assert_eq!(
        ids(&lines[0]["prompt_token_ids"]),
        ref_ids("image0", "input_ids")[0]
    );
    assert_eq!(
        lines[0]["text"],
        ref_json()["image0"]["greedy_text"][0]
            .as_str()
            .unwrap()
            .trim()
    );
    assert_eq!(lines[0]["finish_reason"], "length");
    for key in ["vision_ms", "prefill_ms", "decode_ms", "load_ms"] {
        assert!(lines[0]["timings"][key].as_f64().unwrap() >= 0.0, "{key}");
    }
}

#[test]
fn generate_beam_on_a_video_and_on_its_frame_files() {
    let cache = tempfile::tempdir().unwrap();
    let yaml = model_dir().join("LYNX_video.yaml");
    let base = |c: &mut Command| {
        c.args([
            "generate",
            "--model",
            model_dir().to_str().unwrap(),
            "--config",
            yaml.to_str().unwrap(),
        ])
        .args([
            "--prompt",
            "What happens in the video?",
            "--decoding",
            "beam",
            "--max-new-tokens",
            "16",
            "--json",
        ]);
    };
    let mut c = worker(cache.path());
    base(&mut c);
    let from_json = json_lines(&c.args(["--video", &input("video7.json")]).output().unwrap());
    let expected = ref_ids("video0", BEAM_KEY);
    assert_eq!(ids(&from_json[0]["token_ids"]), expected[0][1..].to_vec());

    // The same frames as separate JPEG files.
    let frames: Vec<String> =
        serde_json::from_slice(&std::fs::read(input("video7.json")).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<String> = frames
        .iter()
        .enumerate()
        .map(|(i, b64)| {
            let p = dir.path().join(format!("frame{i}.jpg"));
            std::fs::write(
                &p,
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .unwrap(),
            )
            .unwrap();
            p.display().to_string()
        })
        .collect();
    let mut c = worker(cache.path());
    base(&mut c);
    let from_files = json_lines(&c.arg("--frames").args(&paths).output().unwrap());
    assert_eq!(from_files[0]["token_ids"], from_json[0]["token_ids"]);
}

#[test]
fn embedded_default_answers_a_multimodal_request() {
    let cache = tempfile::tempdir().unwrap();
    let image = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/example.png");
    let run = |cache: &Path| {
        json_lines(
            &worker(cache)
                .args([
                    "generate",
                    "--image",
                    image,
                    "--prompt",
                    "What is in the image?",
                    "--json",
                ])
                .output()
                .unwrap(),
        )
    };
    let first = run(cache.path());
    assert_eq!(first.len(), 1);
    assert_eq!(first[0]["model"], "lynx-tiny-random");
    assert_eq!(first[0]["decoding"], "lynx");
    assert!(!ids(&first[0]["token_ids"]).is_empty());
    assert!(
        cache.path().join("tiny-v1/lynx.json").is_file(),
        "generated in the converted layout"
    );
    let strip = |v: &[serde_json::Value]| -> Vec<(serde_json::Value, serde_json::Value)> {
        v.iter()
            .map(|o| (o["token_ids"].clone(), o["text"].clone()))
            .collect()
    };
    assert_eq!(
        strip(&run(cache.path())),
        strip(&first),
        "deterministic with the default seed"
    );
    // The generated model is the same whoever generates it.
    let other = tempfile::tempdir().unwrap();
    let again = run(other.path());
    assert_eq!(strip(&again), strip(&first));
}

#[test]
fn convert_then_generate_gives_the_same_ids() {
    let cache = tempfile::tempdir().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let st = worker(cache.path())
        .args([
            "convert",
            "--model",
            model_dir().to_str().unwrap(),
            "--out",
            out_dir.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let gen = |model: &Path| {
        json_lines(
            &worker(cache.path())
                .args([
                    "generate",
                    "--model",
                    model.to_str().unwrap(),
                    "--image",
                    &input("img_gray.png"),
                ])
                .args([
                    "--prompt",
                    "Describe the colors.",
                    "--decoding",
                    "beam",
                    "--max-new-tokens",
                    "16",
                    "--json",
                ])
                .output()
                .unwrap(),
        )
    };
    let a = gen(&model_dir());
    let b = gen(out_dir.path());
    assert_eq!(a[0]["token_ids"], b[0]["token_ids"]);
    assert_eq!(
        ids(&a[0]["token_ids"]),
        ref_ids("image2", BEAM_KEY)[0][1..].to_vec()
    );
}

fn expect_failure(args: &[&str], needle: &str) {
    expect_failure_lines(args, needle, true);
}

fn expect_failure_lines(args: &[&str], needle: &str, one_line: bool) {
    let cache = tempfile::tempdir().unwrap();
    let out = worker(cache.path()).args(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(needle),
        "{args:?}: stderr {err:?} lacks {needle:?}"
    );
    assert!(out.stdout.is_empty(), "{args:?}: nothing on stdout");
    if one_line {
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err:?}");
    }
}

#[test]
fn errors_are_one_clear_line() {
    let model = model_dir().display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.png");
    std::fs::write(&garbage, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let empty_video = dir.path().join("empty.json");
    std::fs::write(&empty_video, b"[]").unwrap();
    let missing = dir.path().join("nope.png").display().to_string();
    expect_failure(
        &[
            "generate", "--model", &model, "--image", &missing, "--prompt", "x",
        ],
        "nope.png",
    );
    expect_failure(
        &[
            "generate",
            "--model",
            &model,
            "--image",
            garbage.to_str().unwrap(),
            "--prompt",
            "x",
        ],
        "garbage.png",
    );
    expect_failure(
        &[
            "generate",
            "--model",
            &model,
            "--video",
            empty_video.to_str().unwrap(),
            "--prompt",
            "x",
        ],
        "empty.json",
    );
    expect_failure(
        &["generate", "--model", "/nonexistent/model", "--prompt", "x"],
        "/nonexistent/model",
    );
    // Argument errors come from clap (message plus usage).
    expect_failure_lines(
        &[
            "generate",
            "--model",
            &model,
            "--prompt",
            "x",
            "--decoding",
            "fancy",
        ],
        "fancy",
        false,
    );
    expect_failure(
        &[
            "generate",
            "--model",
            &model,
            "--prompt",
            "x",
            "--num-beams",
            "0",
        ],
        "num-beams",
    );
    let bad_yaml = dir.path().join("bad.yaml");
    let text = std::fs::read_to_string(model_dir().join("LYNX.yaml")).unwrap();
    std::fs::write(&bad_yaml, text.replace("image_res: 56", "image_res: [56]")).unwrap();
    expect_failure(
        &[
            "generate",
            "--model",
            &model,
            "--config",
            bad_yaml.to_str().unwrap(),
            "--prompt",
            "x",
        ],
        "image_res",
    );
    expect_failure(&["compile-kernels", "--arch", "sm_80,sm90"], "--arch sm90");
}

/// `demo`: the server on loopback ports, one streamed multimodal request through the `lynx`
/// client, the request counted in `/metrics`, a clean drain.
#[test]
fn demo_serves_one_multimodal_request_end_to_end() {
    let cache = tempfile::tempdir().unwrap();
    let image = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/example.png");
    let out = worker(cache.path())
        .args([
            "demo",
            "--image",
            image.to_str().unwrap(),
            "--prompt",
            "Describe it.",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    assert!(
        stderr.contains("worker ready: model lynx-tiny-random"),
        "{stderr}"
    );
    assert!(
        stderr.contains("vision tokens in"),
        "no final usage line: {stderr}"
    );
    assert!(
        stderr.contains("lynx_requests_total{code=\"OK\"} 1"),
        "{stderr}"
    );
    assert!(!out.stdout.is_empty(), "no streamed answer");
}

/// Without a CUDA driver the GPU commands fail with one clear line, not a panic.
#[test]
fn gpu_commands_without_a_driver_say_so() {
    if lynx_kernels::cuda::ensure_driver().is_ok() {
        eprintln!("skipped: a CUDA driver is installed here");
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let fixture = tiny().display().to_string();
    for args in [
        vec!["gpu-selftest"],
        vec!["gpu-check-model", "--fixture", fixture.as_str()],
        vec!["gpu-info"],
    ] {
        let out = worker(cache.path()).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded without a GPU");
        assert!(
            stderr.contains("CUDA library cuda not found"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    }
}

/// `compile-kernels` (NVRTC only, no GPU) fills the folder workers search first; a second run
/// finds every file there and compiles nothing.
#[test]
fn compile_kernels_builds_the_folder_workers_read_first() {
    if lynx_kernels::nvrtc::ensure_loaded().is_err() {
        assert!(
            std::env::var_os("LYNX_REQUIRE_NVRTC").is_none(),
            "LYNX_REQUIRE_NVRTC is set but NVRTC cannot be loaded"
        );
        eprintln!("skipped: NVRTC not found (scripts/install-nvrtc)");
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let out_dir = cache.path().join("kernels");
    let run = || {
        let out = worker(cache.path())
            .args(["compile-kernels", "--arch", "sm_80", "--json", "--out"])
            .arg(&out_dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        json_lines(&out)
    };
    let first = run();
    let files = lynx_kernels::source::ALL.len();
    assert_eq!(first.len(), files);
    assert!(first
        .iter()
        .all(|r| r["origin"] == "compiled" && r["arch"] == "sm_80"));
    assert_eq!(std::fs::read_dir(&out_dir).unwrap().count(), files);
    let second = run();
    assert!(second.iter().all(|r| r["origin"] == "cached"), "{second:?}");
}
