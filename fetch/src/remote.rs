//! What a source holds, before anything is downloaded.

use serde::{Deserialize, Serialize};

use crate::source::ArchiveKind;

/// One file of a source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteFile {
    /// Path relative to the source root, `/`-separated.
    pub path: String,
    /// Size in bytes, when the source says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The sha256 the source publishes (the hub's LFS files), lowercase hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The MD5 the source publishes (an S3 ETag of a single-part upload), lowercase hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub md5: Option<String>,
    /// A version tag (ETag, blob id, modification time): a change means new content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// Everything a source holds at one point in time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// The files, sorted by path.
    pub files: Vec<RemoteFile>,
    /// The source is one file rather than a folder.
    pub single: bool,
    /// The single file is an archive of this kind, to unpack.
    pub archive: Option<ArchiveKind>,
    /// The resolved revision (the hub's commit), when the source has one.
    pub revision: Option<String>,
}

impl Listing {
    /// A folder of files (sorted here).
    pub fn folder(mut files: Vec<RemoteFile>, revision: Option<String>) -> Self {
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Self {
            files,
            single: false,
            archive: None,
            revision,
        }
    }

    /// One file, unpacked when its name says it is an archive.
    pub fn file(file: RemoteFile) -> Self {
        let archive = ArchiveKind::of(&file.path);
        Self {
            files: vec![file],
            single: true,
            archive,
            revision: None,
        }
    }

    /// Bytes to download in all, when every size is known.
    pub fn total_bytes(&self) -> Option<u64> {
        self.files.iter().map(|f| f.size).sum()
    }
}
