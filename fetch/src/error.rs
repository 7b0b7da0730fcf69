//! Typed fetch failures, each with the reason a Kubernetes condition carries.

use std::path::Path;

/// A fetch that did not complete. Every message names the thing to fix.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URI cannot be parsed or uses an unsupported form.
    #[error("{0}")]
    InvalidUri(String),
    /// The object, prefix, file or repository does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The credentials are missing, wrong, or lack permission.
    #[error("{0}")]
    AccessDenied(String),
    /// The fetched bytes do not have the expected sha256.
    #[error("{what}: expected sha256 {expected}, got {actual}; the download was discarded")]
    ChecksumMismatch {
        /// What was checked (a file or the manifest of a folder).
        what: String,
        /// The pinned or published digest.
        expected: String,
        /// The digest of what arrived.
        actual: String,
    },
    /// No space (or quota) left on the volume.
    #[error("{0}")]
    DiskFull(String),
    /// The source could not be reached or the transfer kept failing.
    #[error("{0}")]
    Network(String),
    /// Anything else (a bad archive, a failed conversion, a local I/O error).
    #[error("{0}")]
    Failed(String),
}

impl FetchError {
    /// The reason word of the failure: `InvalidUri`, `NotFound`, `AccessDenied`,
    /// `ChecksumMismatch`, `DiskFull`, `Network` or `Failed`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidUri(_) => "InvalidUri",
            Self::NotFound(_) => "NotFound",
            Self::AccessDenied(_) => "AccessDenied",
            Self::ChecksumMismatch { .. } => "ChecksumMismatch",
            Self::DiskFull(_) => "DiskFull",
            Self::Network(_) => "Network",
            Self::Failed(_) => "Failed",
        }
    }

    /// A local I/O error while doing `what` on `path`; a full disk or quota is `DiskFull`.
    pub fn io(what: &str, path: &Path, e: std::io::Error) -> Self {
        let message = format!("{what} {}: {e}", path.display());
        if is_disk_full(&e) {
            Self::DiskFull(format!(
                "{message}; free space on the model volume or give it more (sizeLimit / the claim's size)"
            ))
        } else {
            Self::Failed(message)
        }
    }
}

/// Whether `e` means the volume is full (ENOSPC) or the quota is spent (EDQUOT).
fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    ) || matches!(e.raw_os_error(), Some(28) | Some(122))
}

impl From<object_store::Error> for FetchError {
    fn from(e: object_store::Error) -> Self {
        use object_store::Error as E;
        match e {
            E::NotFound { path, .. } => Self::NotFound(format!("{path} does not exist")),
            E::PermissionDenied { path, source } => Self::AccessDenied(format!(
                "access to {path} was denied ({source}); check the credentials Secret"
            )),
            E::Unauthenticated { path, source } => Self::AccessDenied(format!(
                "no valid credentials for {path} ({source}); check the credentials Secret"
            )),
            E::Generic { store, source } => {
                let text = format!("{source}");
                let says = |words: &[&str]| words.iter().any(|w| text.contains(w));
                if says(&["NoSuchBucket", "NoSuchKey", "404 Not Found"]) {
                    Self::NotFound(format!("{store}: {}", first_line(&text)))
                } else if says(&[
                    "403 Forbidden",
                    "401 Unauthorized",
                    "AccessDenied",
                    "InvalidAccessKeyId",
                    "SignatureDoesNotMatch",
                ]) {
                    Self::AccessDenied(format!(
                        "{store} denied access ({}); check the credentials Secret",
                        first_line(&text)
                    ))
                } else {
                    Self::Network(format!("{store}: {text}"))
                }
            }
            other => Self::Failed(other.to_string()),
        }
    }
}

/// The first line of a store's error (the response body, XML, follows on the next lines), with
/// the code the body names when it has one.
fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    match text
        .split_once("<Code>")
        .and_then(|(_, rest)| rest.split_once("</Code>"))
    {
        Some((code, _)) => format!("{line} {code}"),
        None => line.to_owned(),
    }
}

/// Maps an HTTP status to a failure about `what`.
pub(crate) fn from_status(status: reqwest::StatusCode, what: &str) -> FetchError {
    match status.as_u16() {
        404 | 410 => FetchError::NotFound(format!("{what} does not exist (HTTP {status})")),
        401 | 403 => FetchError::AccessDenied(format!(
            "{what}: access denied (HTTP {status}); check the token or credentials"
        )),
        _ => FetchError::Network(format!("{what}: HTTP {status}")),
    }
}

impl From<reqwest::Error> for FetchError {
    fn from(e: reqwest::Error) -> Self {
        match e.status() {
            Some(status) => from_status(status, e.url().map_or("the source", |u| u.as_str())),
            None => Self::Network(format!("{e}")),
        }
    }
}
