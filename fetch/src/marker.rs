//! The record of a completed fetch (`.lynx-model.json` in the model folder) and the manifest
//! digest of a folder.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::remote::RemoteFile;
use crate::transfer::hex;

/// File name of the marker inside the model folder.
pub const MARKER: &str = ".lynx-model.json";

/// What was asked for: a later fetch skips the download only when this is equal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Wanted {
    /// The URI as given.
    pub uri: String,
    /// The pinned digest, if any.
    pub sha256: Option<String>,
    /// Whether the release layout was converted.
    pub convert: bool,
    /// The model folder inside the source that was converted.
    pub model_path: String,
}

/// One file of the model folder as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalFile {
    /// Path relative to the model folder.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
}

/// The marker: what was fetched, from which version of the source, and what was written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Marker {
    /// The request.
    pub wanted: Wanted,
    /// The resolved revision (the hub's commit), if the source has one.
    pub revision: Option<String>,
    /// `sha256:<hex>` of the fetched archive or file, or of the folder's manifest.
    pub digest: String,
    /// The source's files as listed (paths, sizes, versions, published digests).
    pub source_files: Vec<RemoteFile>,
    /// The files written to the model folder.
    pub files: Vec<LocalFile>,
    /// Bytes fetched from the source.
    pub bytes: u64,
    /// Seconds the fetch took.
    pub duration_seconds: f64,
    /// Unix time the fetch completed.
    pub fetched_at: u64,
}

impl Marker {
    /// Reads the marker of `folder`, if there is a readable one.
    pub fn read(folder: &Path) -> Option<Self> {
        let bytes = std::fs::read(folder.join(MARKER)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Writes the marker of `folder` atomically (a temporary file renamed into place).
    pub fn write(&self, folder: &Path) -> std::io::Result<()> {
        let tmp = folder.join(format!("{MARKER}.tmp"));
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, folder.join(MARKER))
    }

    /// Whether every file the marker lists is still in `folder` with its size.
    pub fn intact(&self, folder: &Path) -> bool {
        self.files.iter().all(|f| {
            std::fs::metadata(folder.join(&f.path)).is_ok_and(|m| m.is_file() && m.len() == f.size)
        })
    }
}

/// The digest of a folder: sha256 of its manifest, one line `<sha256 hex>  <path>\n` per file
/// in byte order of the paths, which is what
/// `find . -type f -printf '%P\n' | LC_ALL=C sort | xargs -d '\n' sha256sum | sha256sum`
/// prints in that folder.
pub fn manifest_digest<'a>(files: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut lines: Vec<(&str, &str)> = files.into_iter().collect();
    lines.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut hasher = Sha256::new();
    for (path, digest) in lines {
        hasher.update(format!("{digest}  {path}\n"));
    }
    hex(&hasher.finalize())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_manifest_digest_is_what_sha256sum_prints() {
        // printf 'x' > a; printf 'y' > b/c; then the shell line in the doc comment.
        let a = "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881";
        let c = "a1fce4363854ff888cff4b8e7875d600c2682390412a8cf79b37d0b11148b0fa";
        let manifest = format!("{a}  a\n{c}  b/c\n");
        let expected = hex(&Sha256::digest(manifest.as_bytes()));
        assert_eq!(manifest_digest([("b/c", c), ("a", a)]), expected);
    }
}
