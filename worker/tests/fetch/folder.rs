//! The model folder shared by several fetchers: one download, waiting, conversion.

use std::sync::Arc;
use std::time::Duration;

use crate::server::{Reply, Server};
use crate::*;

#[test]
fn two_concurrent_fetches_into_one_folder_leave_one_complete_copy() {
    let tar = Arc::new(model_tar());
    let bytes = tar.clone();
    let server = Server::start(move |_, _| Reply::File {
        bytes: bytes.clone(),
        headers: vec![("ETag".into(), "\"v1\"".into())],
        cut_after: None,
        pace: Some(Duration::from_millis(5)),
    });
    let (_tmp, out) = out_dir();
    let url = server.url("/tiny.tar");
    let args = ["--uri", url.as_str(), "--out", out.to_str().unwrap()];
    let logs = [
        tempfile::NamedTempFile::new().unwrap(),
        tempfile::NamedTempFile::new().unwrap(),
    ];
    let children: Vec<_> = logs
        .iter()
        .map(|log| fetch_command(&args, &[], log.path()).spawn().unwrap())
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    let reports: Vec<_> = logs.iter().map(|l| read_report(l.path())).collect();
    let skipped: Vec<bool> = reports.iter().map(|r| r["skipped"] == true).collect();
    assert_eq!(
        skipped.iter().filter(|s| **s).count(),
        1,
        "one downloads, the other finds its copy: {reports:?}"
    );
    assert_eq!(reports[0]["digest"], reports[1]["digest"]);
    assert_eq!(server.gets().len(), 1, "the archive was downloaded once");
    assert_eq!(files_in(&out), complete_folder());
    assert_official_ids(&out);
}

#[test]
fn wait_returns_once_the_fetch_lands_and_gives_up_after_its_timeout() {
    let (_tmp, out) = out_dir();
    let model = common::model_dir();
    let uri = model.to_str().unwrap();
    let out_arg = out.to_str().unwrap();
    let gave_up = fetch(
        &[
            "--uri",
            uri,
            "--out",
            out_arg,
            "--wait",
            "--wait-timeout-seconds",
            "1",
        ],
        &[],
    );
    gave_up.expect_reason("Failed");
    assert!(!out.exists(), "waiting writes nothing");

    let log = tempfile::NamedTempFile::new().unwrap();
    let mut waiter = fetch_command(&["--uri", uri, "--out", out_arg, "--wait"], &[], log.path())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(waiter.try_wait().unwrap().is_none(), "still waiting");
    let fetched = fetch(&["--uri", uri, "--out", out_arg], &[]);
    let digest = fetched.expect_ok()["digest"].clone();
    assert!(waiter.wait().unwrap().success());
    assert_eq!(read_report(log.path())["digest"], digest);

    // A wait for another source keeps waiting on this folder.
    let other = fetch(
        &[
            "--uri",
            "/elsewhere",
            "--out",
            out_arg,
            "--wait",
            "--wait-timeout-seconds",
            "1",
        ],
        &[],
    );
    other.expect_reason("Failed");
}

#[test]
fn convert_leaves_the_converted_layout_which_serves_the_official_ids() {
    let (_tmp, out) = out_dir();
    let model = common::model_dir();
    let fetched = fetch(
        &[
            "--uri",
            model.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--convert",
        ],
        &[],
    );
    fetched.expect_ok();
    let files = files_in(&out);
    assert!(
        files.iter().any(|f| f.ends_with(".safetensors"))
            && !files.contains(&"finetune_lynx.pt".to_owned()),
        "{files:?}"
    );
    assert_official_ids(&out);
}
