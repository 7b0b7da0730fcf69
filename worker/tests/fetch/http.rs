//! `http(s)://` sources: an archive unpacked, transfers broken off and resumed, pinned digests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::server::{Reply, Server};
use crate::*;

fn archive_server(
    cut_first: Option<usize>,
    pace_first: Option<Duration>,
) -> (Server, Arc<Vec<u8>>) {
    let tar = Arc::new(model_tar());
    let bytes = tar.clone();
    let server = Server::start(move |seen, _| {
        if seen.path != "/models/tiny.tar" {
            return Reply::Status(404);
        }
        let first_get = seen.method == "GET" && seen.range().is_none();
        Reply::File {
            bytes: bytes.clone(),
            headers: vec![("ETag".into(), "\"v1\"".into())],
            cut_after: cut_first.filter(|_| first_get),
            pace: pace_first.filter(|_| first_get),
        }
    });
    (server, tar)
}

#[test]
fn an_archive_broken_off_mid_transfer_is_resumed_and_serves_the_official_ids() {
    let (server, tar) = archive_server(Some(700_000), None);
    let (_tmp, out) = out_dir();
    let url = server.url("/models/tiny.tar");
    let fetched = fetch(&["--uri", &url, "--out", out.to_str().unwrap()], &[]);
    let report = fetched.expect_ok();
    assert_eq!(report["digest"], format!("sha256:{}", sha256(&tar)));
    assert_eq!(report["skipped"], false);
    let gets = server.gets();
    assert_eq!(gets.len(), 2, "one broken transfer, one resumed: {gets:?}");
    assert_eq!(
        gets[1].range(),
        Some("bytes=700000-"),
        "resumed where it broke off"
    );
    assert_eq!(
        gets[1].headers.get("if-range").map(String::as_str),
        Some("\"v1\"")
    );
    assert_eq!(files_in(&out), complete_folder(), "no partial files left");
    assert_official_ids(&out);
}

#[test]
fn a_killed_fetch_is_resumed_by_the_next_one() {
    let (server, tar) = archive_server(None, Some(Duration::from_millis(40)));
    let (_tmp, out) = out_dir();
    let url = server.url("/models/tiny.tar");
    let log = tempfile::NamedTempFile::new().unwrap();
    let args = ["--uri", url.as_str(), "--out", out.to_str().unwrap()];
    let mut first = fetch_command(&args, &[], log.path()).spawn().unwrap();
    let part = out.join(".lynx-partial/parts/tiny.tar.part");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(&part).map_or(0, |m| m.len()) < 300_000 {
        assert!(Instant::now() < deadline, "the first fetch never got going");
        std::thread::sleep(Duration::from_millis(20));
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let kept = std::fs::metadata(&part).unwrap().len();
    assert!(kept >= 300_000 && (kept as usize) < tar.len(), "{kept}");

    let second = fetch(&args, &[]);
    second.expect_ok();
    let gets = server.gets();
    assert_eq!(gets.len(), 2, "{gets:?}");
    let resumed_from: u64 = gets[1]
        .range()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse().ok())
        .expect("the second fetch asked for a range");
    assert!(resumed_from >= kept, "{resumed_from} < {kept}");
    assert_eq!(second.report["digest"], format!("sha256:{}", sha256(&tar)));
    assert_eq!(files_in(&out), complete_folder());
    assert_official_ids(&out);
}

#[test]
fn a_wrong_pinned_digest_is_refused_and_nothing_is_kept() {
    let (server, tar) = archive_server(None, None);
    let (_tmp, out) = out_dir();
    let url = server.url("/models/tiny.tar");
    let wrong = "0".repeat(64);
    let fetched = fetch(
        &[
            "--uri",
            &url,
            "--out",
            out.to_str().unwrap(),
            "--sha256",
            &wrong,
        ],
        &[],
    );
    let message = fetched.expect_reason("ChecksumMismatch");
    assert!(
        message.contains(&wrong) && message.contains(&sha256(&tar)),
        "{message}"
    );
    assert_eq!(
        files_in(&out),
        vec![".lynx-fetch.lock".to_owned()],
        "nothing kept"
    );

    // The right pin passes.
    let right = sha256(&tar);
    let fetched = fetch(
        &[
            "--uri",
            &url,
            "--out",
            out.to_str().unwrap(),
            "--sha256",
            &right,
        ],
        &[],
    );
    fetched.expect_ok();
    assert_eq!(files_in(&out), complete_folder());
}

#[test]
fn a_missing_file_is_not_found_and_a_malformed_uri_is_invalid() {
    let (server, _) = archive_server(None, None);
    let (_tmp, out) = out_dir();
    let url = server.url("/models/nothing.tar");
    let message =
        fetch(&["--uri", &url, "--out", out.to_str().unwrap()], &[]).expect_reason("NotFound");
    assert!(
        message.contains("nothing.tar") && message.contains("404"),
        "{message}"
    );
    let message = fetch(
        &["--uri", "hf://only-a-name", "--out", out.to_str().unwrap()],
        &[],
    )
    .expect_reason("InvalidUri");
    assert!(message.contains("hf://org/repo"), "{message}");
}
