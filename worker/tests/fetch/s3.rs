//! `s3://` against `moto` in server mode (an S3-compatible server on loopback), filled with boto3.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::*;

/// A moto server on a free loopback port, stopped on drop.
struct Moto {
    child: Child,
    endpoint: String,
}

impl Moto {
    /// Starts moto; `auth` makes it check credentials (unknown keys are refused).
    fn start(packages: &PathBuf, auth: bool) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut command = Command::new("python3");
        command
            .env("PYTHONPATH", packages)
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if auth {
            command.env("INITIAL_NO_AUTH_ACTION_COUNT", "0");
        }
        let child = command.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Creates `bucket` and uploads the fixture model under `prefix`, with boto3.
    fn upload_model(&self, packages: &PathBuf, bucket: &str, prefix: &str) {
        let script = r#"
import os, sys, boto3
endpoint, bucket, prefix, root = sys.argv[1:5]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id="test", aws_secret_access_key="test")
s3.create_bucket(Bucket=bucket)
for folder, _, names in os.walk(root):
    for name in names:
        path = os.path.join(folder, name)
        s3.upload_file(path, bucket, prefix + os.path.relpath(path, root))
"#;
        let status = Command::new("python3")
            .env("PYTHONPATH", packages)
            .args(["-c", script, &self.endpoint, bucket, prefix])
            .arg(common::model_dir())
            .status()
            .unwrap();
        assert!(status.success(), "boto3 upload");
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const CREDENTIALS: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
    ("AWS_REGION", "us-east-1"),
];

#[test]
fn an_s3_prefix_serves_the_official_ids_and_a_second_fetch_skips_the_download() {
    let Some(packages) = common::python_packages(&["moto.server", "boto3"]) else {
        return;
    };
    let moto = Moto::start(&packages, false);
    moto.upload_model(&packages, "models", "lynx/tiny/");
    let (_tmp, out) = out_dir();
    let out_arg = out.to_str().unwrap();
    // The endpoint from the standard environment variable, as the operator's Secret gives it.
    let mut env = CREDENTIALS.to_vec();
    env.push(("AWS_ENDPOINT_URL", moto.endpoint.as_str()));
    let first = fetch(&["--uri", "s3://models/lynx/tiny/", "--out", out_arg], &env);
    let report = first.expect_ok().clone();
    assert_eq!(report["skipped"], false);
    assert_eq!(report["files"], model_files().len());
    assert_eq!(files_in(&out), complete_folder());
    // The folder digest is what sha256sum prints over the sorted file list.
    let shell = Command::new("sh")
        .current_dir(&out)
        .args([
            "-c",
            "find . -type f ! -name '.lynx-*' -printf '%P\\n' | LC_ALL=C sort \
             | xargs -d '\\n' sha256sum | sha256sum | cut -c1-64",
        ])
        .output()
        .unwrap();
    let shell = String::from_utf8(shell.stdout).unwrap();
    assert_eq!(report["digest"], format!("sha256:{}", shell.trim()));
    // Each object's ETag is its MD5 (single-part uploads): recorded and checked as it arrived.
    let marker: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join(".lynx-model.json")).unwrap()).unwrap();
    for file in marker["sourceFiles"].as_array().unwrap() {
        let path = common::model_dir().join(file["path"].as_str().unwrap());
        let md5sum = Command::new("md5sum").arg(&path).output().unwrap();
        let md5sum = String::from_utf8(md5sum.stdout).unwrap();
        assert_eq!(
            file["md5"].as_str(),
            md5sum.split_whitespace().next(),
            "{path:?}"
        );
    }
    assert_official_ids(&out);

    let second = fetch(&["--uri", "s3://models/lynx/tiny/", "--out", out_arg], &env);
    assert_eq!(second.expect_ok()["skipped"], true);
    assert_eq!(second.report["digest"], report["digest"]);

    // The same prefix pinned by its digest, with --endpoint instead of the variable.
    let (_tmp2, out2) = out_dir();
    let digest = report["digest"].as_str().unwrap();
    let pinned = fetch(
        &[
            "--uri",
            "s3://models/lynx/tiny",
            "--out",
            out2.to_str().unwrap(),
            "--endpoint",
            &moto.endpoint,
            "--sha256",
            digest,
        ],
        &CREDENTIALS,
    );
    pinned.expect_ok();

    let missing = fetch(
        &[
            "--uri",
            "s3://models/lynx/none/",
            "--out",
            out_arg,
            "--endpoint",
            &moto.endpoint,
        ],
        &CREDENTIALS,
    );
    let message = missing.expect_reason("NotFound");
    assert!(message.contains("s3://models/lynx/none/"), "{message}");
    let no_bucket = fetch(
        &[
            "--uri",
            "s3://no-such-bucket/x/",
            "--out",
            out_arg,
            "--endpoint",
            &moto.endpoint,
        ],
        &CREDENTIALS,
    );
    let message = no_bucket.expect_reason("NotFound");
    assert!(message.contains("NoSuchBucket"), "{message}");
}

#[test]
fn unknown_s3_credentials_are_access_denied() {
    let Some(packages) = common::python_packages(&["moto.server", "boto3"]) else {
        return;
    };
    let moto = Moto::start(&packages, true);
    let (_tmp, out) = out_dir();
    let fetched = fetch(
        &[
            "--uri",
            "s3://models/lynx/tiny/",
            "--out",
            out.to_str().unwrap(),
            "--endpoint",
            &moto.endpoint,
        ],
        &CREDENTIALS,
    );
    let message = fetched.expect_reason("AccessDenied");
    assert!(message.contains("credentials"), "{message}");
}
