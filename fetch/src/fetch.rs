//! One fetch from start to marker: lock, list, skip or download, verify, unpack, convert, swap
//! into place.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::archive;
use crate::error::FetchError;
use crate::folder::{self, FolderLock};
use crate::http::HttpOrigin;
use crate::hub::HubOrigin;
use crate::marker::{manifest_digest, Marker, Wanted};
use crate::object::StoreOrigin;
use crate::progress::Progress;
use crate::remote::Listing;
use crate::source::Source;
use crate::transfer::{self, Ranged};

/// What to fetch, where to, and how.
#[derive(Debug, Clone)]
pub struct Request {
    /// The source URI (`s3://`, `gs://`, `http(s)://`, `hf://` or an absolute path).
    pub uri: String,
    /// The model folder to fill.
    pub out: PathBuf,
    /// Pinned digest (64 hex digits): of the archive or file, or of a folder's manifest.
    pub sha256: Option<String>,
    /// Endpoint of an S3-compatible store or of a hub mirror.
    pub endpoint: Option<String>,
    /// Convert the release layout at `model_path` to the converted layout.
    pub convert: bool,
    /// The model folder inside the fetched tree (empty: its root).
    pub model_path: String,
    /// How often progress is logged.
    pub progress_every: Duration,
}

/// Converts the release-layout model in the first folder into the converted layout in the
/// second (which it creates).
pub type Converter = dyn Fn(&Path, &Path) -> Result<(), String> + Send + Sync;

/// A fetch that completed, as reported (the termination message's success form).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    /// The URI (credentials and presigned queries left out).
    pub uri: String,
    /// The resolved revision, if the source has one.
    pub revision: Option<String>,
    /// `sha256:<hex>` of the archive or file, or of the folder's manifest.
    pub digest: String,
    /// Bytes of the source.
    pub bytes: u64,
    /// Files in the model folder.
    pub files: usize,
    /// Seconds this run took.
    pub duration_seconds: f64,
    /// The folder already held this fetch: nothing was downloaded.
    pub skipped: bool,
}

impl Request {
    fn wanted(&self) -> Result<Wanted, FetchError> {
        let sha256 = match &self.sha256 {
            None => None,
            Some(hex) => {
                let hex = hex
                    .strip_prefix("sha256:")
                    .unwrap_or(hex)
                    .to_ascii_lowercase();
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(FetchError::InvalidUri(format!(
                        "--sha256 {hex:?}: expected 64 hex digits"
                    )));
                }
                Some(hex)
            }
        };
        Ok(Wanted {
            uri: self.uri.clone(),
            sha256,
            convert: self.convert,
            model_path: self.model_path.trim_matches('/').to_owned(),
        })
    }
}

/// The source behind a request, connected.
enum Origin {
    Ranged(Ranged),
    Hub(HubOrigin),
}

impl Origin {
    fn new(source: &Source, request: &Request, staging: &Path) -> Result<Self, FetchError> {
        let endpoint = request.endpoint.as_deref();
        Ok(match source {
            Source::Http { url } => Self::Ranged(Ranged::Http(HttpOrigin::new(
                url.clone(),
                source.to_string(),
            )?)),
            Source::Hub { repo, revision } => Self::Hub(HubOrigin::new(
                repo,
                revision,
                endpoint,
                staging.join("hub"),
            )?),
            _ => Self::Ranged(Ranged::Store(StoreOrigin::new(source, endpoint)?)),
        })
    }

    async fn list(&mut self) -> Result<Listing, FetchError> {
        match self {
            Self::Ranged(Ranged::Http(o)) => o.list().await,
            Self::Ranged(Ranged::Store(o)) => o.list().await,
            Self::Hub(o) => o.list().await,
        }
    }
}

/// Fetches `request` into its folder, or skips the download when the folder's marker shows the
/// same request from the same version of the source and every file is intact. Concurrent
/// fetches into one folder run one after the other.
pub async fn fetch(request: &Request, convert: Option<&Converter>) -> Result<Outcome, FetchError> {
    let started = Instant::now();
    let wanted = request.wanted()?;
    let source = Source::parse(&request.uri)?;
    if request.convert && convert.is_none() {
        return Err(FetchError::Failed("this build cannot convert".to_owned()));
    }
    let out = &request.out;
    let _lock = FolderLock::acquire(out).await?;
    let staging = folder::staging(out);
    let mut origin = Origin::new(&source, request, &staging)?;
    let previous = Marker::read(out).filter(|m| m.wanted == wanted && m.intact(out));
    let listing = match origin.list().await {
        Ok(listing) => listing,
        Err(e) => match previous {
            // The copy on the volume still serves when the source is out of reach.
            Some(marker) if matches!(e, FetchError::Network(_)) => {
                tracing::warn!(target: "lynx_fetch", "{e}; serving the copy fetched before");
                return Ok(outcome(&source, &marker, started, true));
            }
            _ => return Err(e),
        },
    };
    if let Some(marker) = previous.filter(|m| m.source_files == listing.files) {
        tracing::info!(
            target: "lynx_fetch",
            "{} already holds {source} ({}); nothing to download",
            out.display(),
            marker.digest
        );
        return Ok(outcome(&source, &marker, started, true));
    }

    let progress = Progress::new(source.to_string());
    progress.set_total(listing.total_bytes().unwrap_or(0));
    let logger = progress.log_every(request.progress_every);
    let tree = staging.join("tree");
    folder::remove_all(&tree)?;
    std::fs::create_dir_all(&tree).map_err(|e| FetchError::io("cannot create", &tree, e))?;
    let digest = download(&origin, &listing, &staging, &tree, &progress).await?;
    drop(logger);
    tracing::info!(target: "lynx_fetch", "{}", progress.line());

    if let Some(expected) = &wanted.sha256 {
        if *expected != digest {
            folder::remove_all(&staging)?;
            return Err(FetchError::ChecksumMismatch {
                what: source.to_string(),
                expected: expected.clone(),
                actual: digest,
            });
        }
    }
    let result = match convert.filter(|_| request.convert) {
        Some(convert) => {
            let converted = staging.join("converted");
            folder::remove_all(&converted)?;
            let model = tree.join(&wanted.model_path);
            tracing::info!(target: "lynx_fetch", "converting {} to the converted layout", model.display());
            convert(&model, &converted).map_err(|e| {
                FetchError::Failed(format!("converting the fetched model failed: {e}"))
            })?;
            converted
        }
        None => tree,
    };
    let files = folder::swap_in(out, &result)?;
    let marker = Marker {
        wanted,
        revision: listing.revision.clone(),
        digest: format!("sha256:{digest}"),
        source_files: listing.files.clone(),
        files,
        bytes: progress.done().max(listing.total_bytes().unwrap_or(0)),
        duration_seconds: started.elapsed().as_secs_f64(),
        fetched_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    marker
        .write(out)
        .map_err(|e| FetchError::io("cannot write the marker in", out, e))?;
    folder::remove_all(&staging)?;
    Ok(outcome(&source, &marker, started, false))
}

/// Downloads every file of `listing` into `tree` (unpacking an archive); returns the hex digest
/// that a pin is checked against.
async fn download(
    origin: &Origin,
    listing: &Listing,
    staging: &Path,
    tree: &Path,
    progress: &Progress,
) -> Result<String, FetchError> {
    let digests = match origin {
        Origin::Hub(hub) => hub.download(listing, tree, progress).await?,
        Origin::Ranged(ranged) => {
            let mut digests = Vec::with_capacity(listing.files.len());
            for file in &listing.files {
                let part = staging.join("parts").join(format!("{}.part", file.path));
                digests.push(transfer::download(ranged, file, &part, progress).await?);
                if let Some(kind) = listing.archive {
                    let (part, tree) = (part.clone(), tree.to_owned());
                    tokio::task::spawn_blocking(move || archive::unpack(&part, kind, &tree))
                        .await
                        .map_err(|e| FetchError::Failed(format!("unpack task: {e}")))??;
                } else {
                    let dest = tree.join(&file.path);
                    if let Some(parent) = dest.parent() {
                        std::fs::create_dir_all(parent)
                            .map_err(|e| FetchError::io("cannot create", parent, e))?;
                    }
                    std::fs::rename(&part, &dest)
                        .map_err(|e| FetchError::io("cannot move", &part, e))?;
                }
            }
            digests
        }
    };
    Ok(if listing.single {
        digests.first().cloned().unwrap_or_default()
    } else {
        manifest_digest(
            listing
                .files
                .iter()
                .zip(&digests)
                .map(|(f, d)| (f.path.as_str(), d.as_str())),
        )
    })
}

/// Waits until the folder's marker shows `request` fetched and intact (another process, such as
/// the fetch Job, writes it); never downloads and never writes, so a read-only mount serves.
pub async fn wait(
    request: &Request,
    poll: Duration,
    timeout: Option<Duration>,
) -> Result<Outcome, FetchError> {
    let started = Instant::now();
    let wanted = request.wanted()?;
    let source = Source::parse(&request.uri)?;
    let out = &request.out;
    let ready = || Marker::read(out).is_some_and(|m| m.wanted == wanted && m.intact(out));
    let what = format!("{source} in {}", out.display());
    if !folder::poll_until(ready, poll, timeout, &what).await {
        return Err(FetchError::Failed(format!(
            "{what} was not fetched within {} s",
            timeout.map_or(0, |t| t.as_secs())
        )));
    }
    let marker = Marker::read(out)
        .ok_or_else(|| FetchError::Failed(format!("the marker of {what} went away")))?;
    Ok(outcome(&source, &marker, started, true))
}

fn outcome(source: &Source, marker: &Marker, started: Instant, skipped: bool) -> Outcome {
    Outcome {
        uri: source.to_string(),
        revision: marker.revision.clone(),
        digest: marker.digest.clone(),
        bytes: marker.bytes,
        files: marker.files.len(),
        duration_seconds: if skipped {
            started.elapsed().as_secs_f64()
        } else {
            marker.duration_seconds
        },
        skipped,
    }
}
