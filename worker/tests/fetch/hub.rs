//! `hf://` against a server that speaks the Hugging Face hub's API on loopback: the revision
//! listing with LFS digests (`/api/models/{repo}/revision/{rev}?blobs=true`) and the file
//! downloads (`/{repo}/resolve/{commit}/{file}` with the hub's headers and ranges).

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::json;

use crate::server::{Reply, Server};
use crate::*;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A hub holding the fixture model as `lynx/tiny` (branch `main` at `COMMIT`); weight files are
/// LFS files whose published sha256 is `lfs_digest(path, bytes)`.
fn hub(lfs_digest: impl Fn(&str, &[u8]) -> String + Send + Sync + 'static) -> Server {
    let files: HashMap<String, Arc<Vec<u8>>> = model_files()
        .into_iter()
        .map(|(p, b)| (p, Arc::new(b)))
        .collect();
    let is_lfs = |path: &str| path.ends_with(".pt") || path.ends_with(".pth");
    let siblings: Vec<_> = model_files()
        .iter()
        .map(|(path, bytes)| {
            let mut sibling = json!({
                "rfilename": path,
                "size": bytes.len(),
                "blobId": format!("blob-{}", &sha256(bytes)[..12]),
            });
            if is_lfs(path) {
                sibling["lfs"] = json!({"sha256": lfs_digest(path, bytes), "size": bytes.len()});
            }
            sibling
        })
        .collect();
    let listing = json!({"id": "lynx/tiny", "sha": COMMIT, "siblings": siblings}).to_string();
    Server::start(move |seen, _| {
        let path = seen.path.split('?').next().unwrap_or_default();
        if path == "/api/models/lynx/tiny/revision/main" {
            return Reply::Json(listing.clone());
        }
        let Some(file) = path.strip_prefix(&format!("/lynx/tiny/resolve/{COMMIT}/")) else {
            return Reply::Status(404);
        };
        let Some(bytes) = files.get(file) else {
            return Reply::Status(404);
        };
        let digest = sha256(bytes);
        let mut headers = vec![
            ("X-Repo-Commit".to_owned(), COMMIT.to_owned()),
            ("ETag".to_owned(), format!("\"blob-{}\"", &digest[..12])),
        ];
        if is_lfs(file) {
            headers.push(("X-Linked-Etag".to_owned(), format!("\"{digest}\"")));
        }
        Reply::File {
            bytes: bytes.clone(),
            headers,
            cut_after: None,
            pace: None,
        }
    })
}

#[test]
fn a_hub_repository_at_a_revision_serves_the_official_ids() {
    let server = hub(|_, bytes| sha256(bytes));
    let (_tmp, out) = out_dir();
    let endpoint = server.url("");
    let fetched = fetch(
        &[
            "--uri",
            "hf://lynx/tiny@main",
            "--out",
            out.to_str().unwrap(),
            "--endpoint",
            &endpoint,
        ],
        &[("HF_TOKEN", "hf_secret")],
    );
    let report = fetched.expect_ok();
    assert_eq!(
        report["revision"], COMMIT,
        "the branch resolved to its commit"
    );
    assert_eq!(
        files_in(&out),
        complete_folder(),
        "no hub cache left behind"
    );
    assert_official_ids(&out);
    let seen = server.seen();
    assert!(
        seen.iter().all(|s| s.headers.get("authorization").map(String::as_str)
            == Some("Bearer hf_secret")),
        "the token goes with every request"
    );
    assert!(
        seen.iter()
            .filter(|s| s.path.contains("/resolve/"))
            .all(|s| s.path.contains(COMMIT)),
        "every file is read at the resolved commit"
    );

    // HF_ENDPOINT names the mirror as well; the second fetch skips the download.
    let again = fetch(
        &[
            "--uri",
            "hf://lynx/tiny@main",
            "--out",
            out.to_str().unwrap(),
        ],
        &[("HF_ENDPOINT", endpoint.as_str())],
    );
    assert_eq!(again.expect_ok()["skipped"], true);
}

#[test]
fn a_hub_file_whose_published_digest_differs_is_refused() {
    let server = hub(|path, bytes| {
        if path == "finetune_lynx.pt" {
            "f".repeat(64)
        } else {
            sha256(bytes)
        }
    });
    let (_tmp, out) = out_dir();
    let fetched = fetch(
        &[
            "--uri",
            "hf://lynx/tiny",
            "--out",
            out.to_str().unwrap(),
            "--endpoint",
            &server.url(""),
        ],
        &[],
    );
    let message = fetched.expect_reason("ChecksumMismatch");
    assert!(message.contains("finetune_lynx.pt"), "{message}");
    assert!(!out.join(".lynx-model.json").exists());
    let missing = fetch(
        &[
            "--uri",
            "hf://lynx/other",
            "--out",
            out.to_str().unwrap(),
            "--endpoint",
            &server.url(""),
        ],
        &[],
    );
    missing.expect_reason("NotFound");
}
