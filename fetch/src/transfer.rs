//! One file downloaded to a `.part` file: resumed from what an earlier try left, hashed as it
//! arrives, retried when the transfer breaks off, verified at the end.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use md5::Md5;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};

use crate::error::FetchError;
use crate::http::HttpOrigin;
use crate::object::StoreOrigin;
use crate::progress::Progress;
use crate::remote::RemoteFile;

/// How many times a broken-off transfer is resumed before the fetch fails.
const RETRIES: u32 = 5;

/// A response body and the offset it starts at (0 when the source sent everything again).
pub(crate) struct Body {
    /// The bytes.
    pub stream: BoxStream<'static, Result<bytes::Bytes, FetchError>>,
    /// Offset of the first byte.
    pub from: u64,
}

/// A source that serves byte ranges of its files.
pub(crate) enum Ranged {
    /// An object store or local folder.
    Store(StoreOrigin),
    /// One URL.
    Http(HttpOrigin),
}

impl Ranged {
    async fn open(&self, file: &RemoteFile, offset: u64) -> Result<Body, FetchError> {
        match self {
            Self::Store(origin) => origin.open(file, offset).await,
            Self::Http(origin) => origin.open(file, offset).await,
        }
    }
}

/// What a `.part` file was written from, kept beside it so that a later run resumes only the
/// same version of the same file.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct PartOf {
    size: Option<u64>,
    version: Option<String>,
}

/// The digests computed as bytes arrive: always sha256, MD5 when the source publishes one.
struct Hashes {
    sha256: Sha256,
    md5: Option<Md5>,
}

impl Hashes {
    fn new(file: &RemoteFile) -> Self {
        Self {
            sha256: Sha256::new(),
            md5: file.md5.as_ref().map(|_| Md5::new()),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        self.sha256.update(bytes);
        if let Some(md5) = &mut self.md5 {
            md5.update(bytes);
        }
    }
}

/// Downloads `file` into `part` (resuming it when it holds the start of the same version) and
/// returns its sha256 (lowercase hex), checked against the digest the source publishes.
pub(crate) async fn download(
    origin: &Ranged,
    file: &RemoteFile,
    part: &Path,
    progress: &Progress,
) -> Result<String, FetchError> {
    if let Some(parent) = part.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| FetchError::io("cannot create", parent, e))?;
    }
    let of = PartOf {
        size: file.size,
        version: file.version.clone(),
    };
    let meta = meta_path(part);
    let same = tokio::fs::read(&meta)
        .await
        .ok()
        .and_then(|b| serde_json::from_slice::<PartOf>(&b).ok())
        .is_some_and(|old| old == of && of.version.is_some());
    if !same {
        remove_if_present(part).await?;
        let json = serde_json::to_vec(&of).map_err(|e| FetchError::Failed(e.to_string()))?;
        tokio::fs::write(&meta, json)
            .await
            .map_err(|e| FetchError::io("cannot write", &meta, e))?;
    }
    let mut counted = 0;
    let mut attempt = 0;
    let (digest, md5) = loop {
        match download_once(origin, file, part, progress, &mut counted).await {
            Ok(digests) => break digests,
            Err(FetchError::Network(message)) if attempt < RETRIES => {
                attempt += 1;
                let wait = Duration::from_millis(500 << attempt.min(5));
                tracing::warn!(
                    target: "lynx_fetch",
                    "{message}; resuming {} in {:.1} s (try {attempt} of {RETRIES})",
                    file.path,
                    wait.as_secs_f64()
                );
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    };
    if let Some(expected) = file.sha256.as_ref().filter(|e| **e != digest) {
        remove_if_present(part).await?;
        return Err(FetchError::ChecksumMismatch {
            what: file.path.clone(),
            expected: expected.clone(),
            actual: digest,
        });
    }
    if let (Some(expected), Some(actual)) = (&file.md5, md5) {
        if *expected != actual {
            remove_if_present(part).await?;
            return Err(FetchError::ChecksumMismatch {
                what: format!("{} (the MD5 of its ETag, not sha256)", file.path),
                expected: expected.clone(),
                actual,
            });
        }
    }
    let _ = tokio::fs::remove_file(&meta).await;
    Ok(digest)
}

/// One try: continue from the end of `part`, hash everything, fail with `Network` when the
/// transfer breaks off (what arrived stays for the next try). Returns the sha256 and, when the
/// source publishes one, the MD5.
async fn download_once(
    origin: &Ranged,
    file: &RemoteFile,
    part: &Path,
    progress: &Progress,
    counted: &mut u64,
) -> Result<(String, Option<String>), FetchError> {
    let mut hasher = Hashes::new(file);
    let mut offset = hash_prefix(part, &mut hasher).await?;
    if file.size.is_some_and(|size| offset > size) {
        remove_if_present(part).await?;
        hasher = Hashes::new(file);
        offset = 0;
    }
    let complete = file.size.is_some_and(|size| offset == size && size > 0);
    if !complete {
        let body = origin.open(file, offset).await?;
        if body.from != offset {
            // The source sent the whole file again.
            remove_if_present(part).await?;
            hasher = Hashes::new(file);
            offset = 0;
        }
        let handle = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(part)
            .await
            .map_err(|e| FetchError::io("cannot open", part, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, handle);
        let mut stream = body.stream;
        let mut broke = None;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => {
                    out.write_all(&bytes)
                        .await
                        .map_err(|e| FetchError::io("cannot write", part, e))?;
                    hasher.update(&bytes);
                    offset += bytes.len() as u64;
                    if offset > *counted {
                        progress.add(offset - *counted);
                        *counted = offset;
                    }
                }
                Err(e) => {
                    broke = Some(e);
                    break;
                }
            }
        }
        out.flush()
            .await
            .map_err(|e| FetchError::io("cannot write", part, e))?;
        if let Some(e) = broke {
            return Err(e);
        }
    }
    if let Some(size) = file.size.filter(|size| offset != *size) {
        return Err(FetchError::Network(format!(
            "{}: the transfer ended at {offset} of {size} bytes",
            file.path
        )));
    }
    Ok((
        hex(&hasher.sha256.finalize()),
        hasher.md5.map(|m| hex(&m.finalize())),
    ))
}

/// Feeds what `part` already holds into `hasher`; returns its length (0 when absent).
async fn hash_prefix(part: &Path, hasher: &mut Hashes) -> Result<u64, FetchError> {
    let mut f = match tokio::fs::File::open(part).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(FetchError::io("cannot read", part, e)),
    };
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        let n = f
            .read(&mut buf)
            .await
            .map_err(|e| FetchError::io("cannot read", part, e))?;
        if n == 0 {
            return Ok(total);
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
}

async fn remove_if_present(path: &Path) -> Result<(), FetchError> {
    match tokio::fs::remove_file(path).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(FetchError::io("cannot remove", path, e))
        }
        _ => Ok(()),
    }
}

fn meta_path(part: &Path) -> PathBuf {
    let mut name = part.as_os_str().to_owned();
    name.push(".json");
    PathBuf::from(name)
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The sha256 of a file on disk, lowercase hex.
pub(crate) async fn sha256_file(path: &Path) -> Result<String, FetchError> {
    let mut hasher = Hashes {
        sha256: Sha256::new(),
        md5: None,
    };
    hash_prefix(path, &mut hasher).await?;
    Ok(hex(&hasher.sha256.finalize()))
}
