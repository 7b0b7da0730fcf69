//! `lynx-worker fetch` against real servers on loopback: a plain HTTP server (with transfers
//! broken off), an S3-compatible server (`moto` in server mode), and a server that speaks the
//! Hugging Face hub's API. Each fetch is followed by `generate` on the fetched fixture model,
//! which must give the official token ids.
#![allow(clippy::unwrap_used)]

#[path = "../common.rs"]
mod common;
mod folder;
mod http;
mod hub;
mod s3;
mod server;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The `lynx-worker` binary with quiet logs.
pub fn worker() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lynx-worker"));
    c.env("RUST_LOG", "info")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("HF_ENDPOINT")
        .env_remove("HF_TOKEN");
    c
}

/// A finished `fetch`: its exit, what it printed, and its termination log.
pub struct Fetched {
    /// Exit status, stdout and stderr.
    pub output: Output,
    /// The termination log's JSON (`Null` when none was written).
    pub report: Value,
}

impl Fetched {
    /// Whether the process exited 0.
    pub fn ok(&self) -> bool {
        self.output.status.success()
    }

    /// Panics with the logs unless the fetch succeeded.
    pub fn expect_ok(&self) -> &Value {
        assert!(
            self.ok(),
            "fetch failed: {}\n{}",
            self.report,
            String::from_utf8_lossy(&self.output.stderr)
        );
        &self.report
    }

    /// Panics unless the fetch failed with `reason`; returns the message.
    pub fn expect_reason(&self, reason: &str) -> String {
        assert!(!self.ok(), "fetch should fail with {reason}");
        assert_eq!(
            self.report["reason"],
            reason,
            "{}\n{}",
            self.report,
            String::from_utf8_lossy(&self.output.stderr)
        );
        self.report["message"].as_str().unwrap().to_owned()
    }
}

/// Runs `lynx-worker fetch ARGS` with `env`, the termination log in a temporary file.
pub fn fetch(args: &[&str], env: &[(&str, &str)]) -> Fetched {
    let log = tempfile::NamedTempFile::new().unwrap();
    let output = fetch_command(args, env, log.path()).output().unwrap();
    let report = read_report(log.path());
    Fetched { output, report }
}

/// The command of a fetch that writes its termination log to `log`.
pub fn fetch_command(args: &[&str], env: &[(&str, &str)], log: &Path) -> Command {
    let mut c = worker();
    c.arg("fetch")
        .args(args)
        .arg("--termination-log")
        .arg(log)
        .envs(env.iter().copied());
    c
}

/// The JSON in a termination log.
pub fn read_report(log: &Path) -> Value {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// Greedy `generate` on one fixture image with the model in `dir`: the official ids.
pub fn assert_official_ids(dir: &Path) {
    let image = common::tiny().join("inputs/img_landscape.png");
    let out = worker()
        .env("RUST_LOG", "warn")
        .args(["generate", "--model", dir.to_str().unwrap(), "--image"])
        .arg(&image)
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
    assert!(
        out.status.success(),
        "generate on {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let line: Value = serde_json::from_slice(out.stdout.split(|b| *b == b'\n').next().unwrap())
        .expect("one JSON line");
    let ids: Vec<u32> = serde_json::from_value(line["token_ids"].clone()).unwrap();
    let expected = common::ref_ids("image0", common::GREEDY_KEY);
    assert_eq!(ids, expected[0][1..].to_vec(), "official greedy ids");
}

/// Every file of the fixture model: path relative to the model folder, and its bytes.
pub fn model_files() -> Vec<(String, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let relative = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_owned();
                out.push((relative, std::fs::read(&path).unwrap()));
            }
        }
    }
    let mut files = Vec::new();
    walk(&common::model_dir(), &common::model_dir(), &mut files);
    files.sort();
    files
}

/// The fixture model as a tar archive (`tar` of the model folder's content).
pub fn model_tar() -> Vec<u8> {
    let out = Command::new("tar")
        .arg("-C")
        .arg(common::model_dir())
        .args(["-cf", "-", "."])
        .output()
        .unwrap();
    assert!(out.status.success());
    out.stdout
}

/// Lowercase hex sha256.
pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The files under `dir`, relative, sorted (the marker and lock included).
pub fn files_in(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(
                    path.strip_prefix(root)
                        .unwrap()
                        .to_str()
                        .unwrap()
                        .to_owned(),
                );
            }
        }
    }
    let mut files = Vec::new();
    if dir.is_dir() {
        walk(dir, dir, &mut files);
    }
    files.sort();
    files
}

/// The fixture's files plus the marker and the lock: a complete fetched folder.
pub fn complete_folder() -> Vec<String> {
    let mut expected: Vec<String> = model_files().into_iter().map(|(p, _)| p).collect();
    expected.extend([".lynx-fetch.lock".to_owned(), ".lynx-model.json".to_owned()]);
    expected.sort();
    expected
}

/// A fresh output folder (inside a temporary folder that lives as long as the guard).
pub fn out_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("model");
    (tmp, out)
}
