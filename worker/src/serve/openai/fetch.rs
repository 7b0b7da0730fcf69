//! Images given by `http(s)` URL in OpenAI requests, fetched only from the hosts of
//! `--image-url-hosts` (none by default: `data:` URIs only), with the image byte limit enforced
//! while reading, a timeout, and redirects followed only within the same host.

use std::time::Duration;

use super::error::ApiError;

/// How long one image may take to fetch.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Fetches images from the allowed hosts.
#[derive(Debug, Clone)]
pub struct ImageFetcher {
    hosts: Vec<String>,
    client: reqwest::Client,
}

impl ImageFetcher {
    /// A fetcher for `hosts` (host names or addresses, compared case-insensitively; empty: none).
    ///
    /// # Errors
    /// The HTTP client cannot be built (its TLS roots).
    pub fn new(hosts: Vec<String>) -> Result<Self, String> {
        let policy = reqwest::redirect::Policy::custom(|attempt| {
            let same_host = attempt
                .previous()
                .first()
                .is_some_and(|first| first.host_str() == attempt.url().host_str());
            if same_host && attempt.previous().len() < 5 {
                attempt.follow()
            } else {
                attempt.stop()
            }
        });
        let client = reqwest::Client::builder()
            .redirect(policy)
            .timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|e| format!("the image URL client: {e}"))?;
        Ok(Self {
            hosts: hosts.into_iter().map(|h| h.to_ascii_lowercase()).collect(),
            client,
        })
    }

    /// The bytes of the image at `url` (content part `part`), at most `max_bytes`.
    ///
    /// # Errors
    /// 400 naming the cause: a host not in `--image-url-hosts`, a failed or non-2xx fetch, a
    /// redirect to another host, a body over `max_image_bytes`.
    pub async fn fetch(
        &self,
        url: &str,
        part: usize,
        max_bytes: usize,
    ) -> Result<Vec<u8>, ApiError> {
        let refused = |why: String| {
            ApiError::invalid(format!("content part {part}: {why}"), Some("messages"))
        };
        let parsed = reqwest::Url::parse(url).map_err(|e| refused(format!("bad URL: {e}")))?;
        let host = parsed.host_str().unwrap_or_default().to_ascii_lowercase();
        if !self.hosts.contains(&host) {
            return Err(refused(format!(
                "the host `{host}` is not in image_url_hosts (--image-url-hosts); send the image \
                 as a data: URI"
            )));
        }
        let mut response = self
            .client
            .get(parsed)
            .send()
            .await
            .map_err(|e| refused(format!("cannot fetch {url}: {e}")))?;
        let status = response.status();
        if status.is_redirection() {
            return Err(refused(format!(
                "{url} redirects to another host; only redirects within the host are followed"
            )));
        }
        if !status.is_success() {
            return Err(refused(format!("fetching {url} answered {status}")));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| refused(format!("cannot read {url}: {e}")))?
        {
            if bytes.len() + chunk.len() > max_bytes {
                return Err(refused(format!(
                    "the image at {url} is more than max_image_bytes = {max_bytes}"
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }
}
