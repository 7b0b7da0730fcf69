//! `s3://`, `gs://` and local paths through `object_store`: listing and ranged reads.

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{GetOptions, GetRange, ObjectMeta, ObjectStore};

use crate::error::FetchError;
use crate::remote::{Listing, RemoteFile};
use crate::source::Source;
use crate::transfer::Body;

/// A bucket (or local folder) and the key or prefix inside it.
pub(crate) struct StoreOrigin {
    store: Arc<dyn ObjectStore>,
    key: String,
    /// The prefix the listed paths are relative to (set by `list`).
    base: String,
    uri: String,
    /// The store's ETags of single-part objects are their MD5 (S3).
    etag_is_md5: bool,
}

impl StoreOrigin {
    /// Connects to the store of `source` (`S3`, `Gcs` or `Local`); credentials come from the
    /// standard environment variables, `endpoint` overrides the S3 endpoint.
    pub(crate) fn new(source: &Source, endpoint: Option<&str>) -> Result<Self, FetchError> {
        let uri = source.to_string();
        let (store, key): (Arc<dyn ObjectStore>, String) = match source {
            Source::S3 { bucket, key } => {
                let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
                let env_endpoint = std::env::var("AWS_ENDPOINT_URL")
                    .or_else(|_| std::env::var("AWS_ENDPOINT"))
                    .ok();
                if let Some(endpoint) = endpoint {
                    builder = builder.with_endpoint(endpoint);
                }
                // Plain HTTP only when the endpoint itself says http://.
                if endpoint
                    .or(env_endpoint.as_deref())
                    .is_some_and(|e| e.starts_with("http://"))
                {
                    builder = builder.with_allow_http(true);
                }
                let store = builder.build().map_err(|e| {
                    FetchError::AccessDenied(format!(
                        "cannot configure S3 for {uri}: {e}; set AWS_REGION and the credentials"
                    ))
                })?;
                (Arc::new(store), key.clone())
            }
            Source::Gcs { bucket, key } => {
                if endpoint.is_some() {
                    return Err(FetchError::InvalidUri(
                        "a custom endpoint for gs:// goes into the service account key \
                         (gcs_base_url), not --endpoint"
                            .to_owned(),
                    ));
                }
                let store = GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(bucket)
                    .build()
                    .map_err(|e| {
                        FetchError::AccessDenied(format!(
                            "cannot configure Google Cloud Storage for {uri}: {e}; \
                             set GOOGLE_SERVICE_ACCOUNT_KEY"
                        ))
                    })?;
                (Arc::new(store), key.clone())
            }
            Source::Local { path } => {
                let meta = std::fs::metadata(path)
                    .map_err(|e| FetchError::NotFound(format!("{}: {e}", path.display())))?;
                let (root, key) = if meta.is_dir() {
                    (path.as_path(), String::new())
                } else {
                    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
                    (path.parent().unwrap_or(path), name.unwrap_or_default())
                };
                let store = LocalFileSystem::new_with_prefix(root)
                    .map_err(|e| FetchError::Failed(format!("{}: {e}", root.display())))?;
                (Arc::new(store), key)
            }
            Source::Http { .. } | Source::Hub { .. } => {
                return Err(FetchError::Failed(format!(
                    "{uri} is not an object store source"
                )))
            }
        };
        Ok(Self {
            store,
            key,
            base: String::new(),
            uri,
            etag_is_md5: matches!(source, Source::S3 { .. }),
        })
    }

    /// One object when the key names one, otherwise every object under the key as a prefix.
    pub(crate) async fn list(&mut self) -> Result<Listing, FetchError> {
        let key = self.key.trim_end_matches('/');
        if !key.is_empty() && !self.key.ends_with('/') {
            match self.store.head(&StorePath::from(key)).await {
                Ok(meta) => {
                    let (base, name) = key.rsplit_once('/').unwrap_or(("", key));
                    self.base = base.to_owned();
                    return Ok(Listing::file(remote_file(name, &meta, self.etag_is_md5)));
                }
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.base = key.to_owned();
        let prefix = (!key.is_empty()).then(|| StorePath::from(key));
        let metas: Vec<ObjectMeta> = self.store.list(prefix.as_ref()).try_collect().await?;
        let files: Vec<RemoteFile> = metas
            .iter()
            .filter_map(|meta| {
                let location = meta.location.as_ref();
                let relative = if key.is_empty() {
                    location
                } else {
                    location.strip_prefix(key)?.strip_prefix('/')?
                };
                (!relative.is_empty()).then(|| remote_file(relative, meta, self.etag_is_md5))
            })
            .collect();
        if files.is_empty() {
            return Err(FetchError::NotFound(format!(
                "{} does not exist or holds no object",
                self.uri
            )));
        }
        Ok(Listing::folder(files, None))
    }

    /// The bytes of `file` from `offset` on (the same version, when the store can tell).
    pub(crate) async fn open(&self, file: &RemoteFile, offset: u64) -> Result<Body, FetchError> {
        let location = if self.base.is_empty() {
            StorePath::from(file.path.as_str())
        } else {
            StorePath::from(format!("{}/{}", self.base, file.path).as_str())
        };
        let mut options = GetOptions::default();
        if offset > 0 {
            options.range = Some(GetRange::Offset(offset));
            options.if_match = file.version.clone();
        }
        let result = match self.store.get_opts(&location, options).await {
            Err(object_store::Error::Precondition { .. }) => {
                // Changed since the part was written: start over.
                return self.open_from_start(&location).await;
            }
            other => other?,
        };
        let from = result.range.start;
        let stream = result.into_stream().map_err(FetchError::from).boxed();
        Ok(Body { stream, from })
    }

    async fn open_from_start(&self, location: &StorePath) -> Result<Body, FetchError> {
        let result = self.store.get(location).await?;
        let stream = result.into_stream().map_err(FetchError::from).boxed();
        Ok(Body { stream, from: 0 })
    }
}

fn remote_file(path: &str, meta: &ObjectMeta, etag_is_md5: bool) -> RemoteFile {
    RemoteFile {
        path: path.to_owned(),
        size: Some(meta.size),
        sha256: None,
        md5: meta
            .e_tag
            .as_deref()
            .filter(|_| etag_is_md5)
            .and_then(md5_of_etag),
        version: meta
            .e_tag
            .clone()
            .or_else(|| Some(meta.last_modified.to_rfc3339())),
    }
}

/// The MD5 an S3 ETag carries: 32 hex digits in quotes (a multipart upload's ETag has a `-N`
/// suffix and is no digest of the content).
fn md5_of_etag(etag: &str) -> Option<String> {
    let hex = etag.trim_matches('"');
    (hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| hex.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::md5_of_etag;

    #[test]
    fn only_single_part_etags_are_digests() {
        assert_eq!(
            md5_of_etag("\"9E107D9D372BB6826BD81D3542A419D6\"").as_deref(),
            Some("9e107d9d372bb6826bd81d3542a419d6")
        );
        assert_eq!(md5_of_etag("\"9e107d9d372bb6826bd81d3542a419d6-4\""), None);
        assert_eq!(md5_of_etag("W/\"abc\""), None);
    }
}
