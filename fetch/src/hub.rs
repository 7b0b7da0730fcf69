//! `hf://org/repo[@revision]`: a model repository of the Hugging Face hub, or of a mirror that
//! speaks its API. Files are listed with their LFS digests and downloaded by `hf-hub` (pinned to
//! the resolved commit, resumable), then verified and moved out of its cache layout.

use std::path::{Path, PathBuf};

use hf_hub::api::tokio::{Api, ApiBuilder, ApiRepo};
use hf_hub::{Repo, RepoType};
use serde::Deserialize;

use crate::error::{from_status, FetchError};
use crate::progress::Progress;
use crate::remote::{Listing, RemoteFile};
use crate::transfer::sha256_file;

/// The public hub, when neither `--endpoint` nor `HF_ENDPOINT` names another.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// A repository at a revision, with the client for it.
pub(crate) struct HubOrigin {
    api: Api,
    repo: String,
    revision: String,
    shown: String,
}

/// The hub's answer to `GET /api/models/{repo}/revision/{revision}?blobs=true`.
#[derive(Debug, Deserialize)]
struct RepoInfo {
    sha: String,
    siblings: Vec<Sibling>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Sibling {
    rfilename: String,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    blob_id: Option<String>,
    #[serde(default)]
    lfs: Option<Lfs>,
}

#[derive(Debug, Deserialize)]
struct Lfs {
    sha256: String,
}

impl HubOrigin {
    /// A client for `repo` at `revision`; the token comes from `HF_TOKEN`, the endpoint from
    /// `endpoint`, else `HF_ENDPOINT`, else the public hub; `cache` holds partial downloads.
    pub(crate) fn new(
        repo: &str,
        revision: &str,
        endpoint: Option<&str>,
        cache: PathBuf,
    ) -> Result<Self, FetchError> {
        let endpoint = endpoint
            .map(str::to_owned)
            .or_else(|| std::env::var("HF_ENDPOINT").ok())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned());
        let token = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty());
        let api = ApiBuilder::new()
            .with_endpoint(endpoint.trim_end_matches('/').to_owned())
            .with_cache_dir(cache)
            .with_token(token)
            .with_progress(false)
            .build()
            .map_err(|e| FetchError::Failed(format!("hub client: {e}")))?;
        Ok(Self {
            api,
            repo: repo.to_owned(),
            revision: revision.to_owned(),
            shown: format!("hf://{repo}@{revision}"),
        })
    }

    fn at(&self, revision: &str) -> ApiRepo {
        self.api.repo(Repo::with_revision(
            self.repo.clone(),
            RepoType::Model,
            revision.to_owned(),
        ))
    }

    /// Every file of the repository at the revision, with sizes and LFS digests; the revision
    /// is resolved to its commit.
    pub(crate) async fn list(&self) -> Result<Listing, FetchError> {
        let response = self
            .at(&self.revision)
            .info_request()
            .query(&[("blobs", "true")])
            .send()
            .await
            .map_err(|e| FetchError::Network(format!("{}: {e}", self.shown)))?;
        if !response.status().is_success() {
            return Err(from_status(response.status(), &self.shown));
        }
        let info: RepoInfo = response
            .json()
            .await
            .map_err(|e| FetchError::Network(format!("{}: bad listing: {e}", self.shown)))?;
        let files = info
            .siblings
            .into_iter()
            .map(|s| RemoteFile {
                path: s.rfilename,
                size: s.size,
                sha256: s.lfs.map(|l| l.sha256.to_ascii_lowercase()),
                md5: None,
                version: s.blob_id,
            })
            .collect();
        Ok(Listing::folder(files, Some(info.sha)))
    }

    /// Downloads every file of `listing` (at its commit) into `tree`; returns each file's sha256.
    pub(crate) async fn download(
        &self,
        listing: &Listing,
        tree: &Path,
        progress: &Progress,
    ) -> Result<Vec<String>, FetchError> {
        let commit = listing.revision.as_deref().unwrap_or(&self.revision);
        let repo = self.at(commit);
        let mut digests = Vec::with_capacity(listing.files.len());
        for file in &listing.files {
            let pointer = repo
                .download_with_progress(&file.path, Counter(progress.clone()))
                .await
                .map_err(|e| self.error(&file.path, e))?;
            // The snapshot entry links to the blob; the blob is what moves out of the cache.
            let blob = tokio::fs::canonicalize(&pointer)
                .await
                .map_err(|e| FetchError::io("cannot resolve", &pointer, e))?;
            let digest = sha256_file(&blob).await?;
            if let Some(expected) = file.sha256.as_ref().filter(|e| **e != digest) {
                let _ = tokio::fs::remove_file(&blob).await;
                return Err(FetchError::ChecksumMismatch {
                    what: file.path.clone(),
                    expected: expected.clone(),
                    actual: digest,
                });
            }
            let dest = tree.join(&file.path);
            if let Some(parent) = dest.parent() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(|e| FetchError::io("cannot create", parent, e))?;
            }
            tokio::fs::rename(&blob, &dest)
                .await
                .map_err(|e| FetchError::io("cannot move", &blob, e))?;
            digests.push(digest);
        }
        Ok(digests)
    }

    fn error(&self, file: &str, e: hf_hub::api::tokio::ApiError) -> FetchError {
        use hf_hub::api::tokio::ApiError;
        let what = format!("{}: {file}", self.shown);
        match e {
            ApiError::RequestError(e) => match e.status() {
                Some(status) => from_status(status, &what),
                None => FetchError::Network(format!("{what}: {e}")),
            },
            ApiError::IoError(e) => FetchError::io("cannot write", Path::new(file), e),
            other => FetchError::Network(format!("{what}: {other}")),
        }
    }
}

/// Counts hf-hub's progress into ours.
#[derive(Clone)]
struct Counter(Progress);

impl hf_hub::api::tokio::Progress for Counter {
    async fn init(&mut self, _size: usize, _filename: &str) {}
    async fn update(&mut self, size: usize) {
        self.0.add(size as u64);
    }
    async fn finish(&mut self) {}
}
