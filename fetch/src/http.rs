//! `http://` and `https://` sources: one archive or one file, read with ranges to resume.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use reqwest::header::{CONTENT_LENGTH, ETAG, IF_RANGE, LAST_MODIFIED, RANGE};
use reqwest::StatusCode;

use crate::error::{from_status, FetchError};
use crate::remote::{Listing, RemoteFile};
use crate::transfer::Body;

/// A URL and the client that reads it.
pub(crate) struct HttpOrigin {
    client: reqwest::Client,
    url: url::Url,
    shown: String,
}

impl HttpOrigin {
    /// A client for `url`; `shown` is the URL as logs may print it.
    pub(crate) fn new(url: url::Url, shown: String) -> Result<Self, FetchError> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| FetchError::Failed(format!("HTTP client: {e}")))?;
        Ok(Self { client, url, shown })
    }

    /// The file behind the URL: its name (the last path segment), size and version.
    pub(crate) async fn list(&self) -> Result<Listing, FetchError> {
        let response = self
            .client
            .head(self.url.clone())
            .send()
            .await
            .map_err(|e| FetchError::Network(format!("{}: {e}", self.shown)))?;
        let status = response.status();
        let (size, version) = if status.is_success() {
            let headers = response.headers();
            let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
            let size = header(CONTENT_LENGTH).and_then(|v| v.parse().ok());
            let version = header(ETAG).or_else(|| header(LAST_MODIFIED));
            (size, version.map(str::to_owned))
        } else if matches!(
            status,
            StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_IMPLEMENTED
        ) {
            // No HEAD: the size is learnt from the download itself.
            (None, None)
        } else {
            return Err(from_status(status, &self.shown));
        };
        Ok(Listing::file(RemoteFile {
            path: self.file_name(),
            size,
            sha256: None,
            md5: None,
            version,
        }))
    }

    /// The last path segment, percent-decoded (`model` when the path ends in `/`).
    fn file_name(&self) -> String {
        let segment = self
            .url
            .path_segments()
            .and_then(|mut s| s.next_back())
            .unwrap_or_default();
        let decoded = percent_encoding::percent_decode_str(segment).decode_utf8_lossy();
        match decoded.as_ref() {
            "" | "." | ".." => "model".to_owned(),
            _ => decoded.replace('/', "_"),
        }
    }

    /// The bytes from `offset` on; a server that ignores the range (or whose file changed, per
    /// `If-Range`) sends everything again, and the body says it starts at 0.
    pub(crate) async fn open(&self, file: &RemoteFile, offset: u64) -> Result<Body, FetchError> {
        let mut request = self.client.get(self.url.clone());
        if offset > 0 {
            request = request.header(RANGE, format!("bytes={offset}-"));
            if let Some(version) = file.version.as_deref().filter(|v| !v.starts_with("W/")) {
                request = request.header(IF_RANGE, version);
            }
        }
        let response = request
            .send()
            .await
            .map_err(|e| FetchError::Network(format!("{}: {e}", self.shown)))?;
        let from = match response.status() {
            StatusCode::PARTIAL_CONTENT => offset,
            StatusCode::OK => 0,
            status => return Err(from_status(status, &self.shown)),
        };
        let shown = self.shown.clone();
        let stream = response
            .bytes_stream()
            .map_err(move |e| FetchError::Network(format!("{shown}: transfer broke off: {e}")))
            .boxed();
        Ok(Body { stream, from })
    }
}
