//! The URI forms a model can be fetched from.

use std::fmt;
use std::path::PathBuf;

use crate::error::FetchError;

/// Where the model lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `s3://bucket/key-or-prefix` (AWS or any S3-compatible endpoint).
    S3 {
        /// Bucket name.
        bucket: String,
        /// Object key or prefix (may be empty: the whole bucket).
        key: String,
    },
    /// `gs://bucket/key-or-prefix` (Google Cloud Storage).
    Gcs {
        /// Bucket name.
        bucket: String,
        /// Object key or prefix.
        key: String,
    },
    /// `http://` or `https://`: an archive or a single file.
    Http {
        /// The URL as given (query strings such as presigned signatures are kept).
        url: url::Url,
    },
    /// `hf://org/repo[@revision]`: a model repository of the Hugging Face hub (or a mirror).
    Hub {
        /// `org/repo`.
        repo: String,
        /// Branch, tag or commit (default `main`).
        revision: String,
    },
    /// An absolute local path: a folder, an archive or a single file.
    Local {
        /// The path.
        path: PathBuf,
    },
}

impl Source {
    /// Parses `uri`; the message of an error says which form was expected.
    pub fn parse(uri: &str) -> Result<Self, FetchError> {
        let invalid = |why: &str| FetchError::InvalidUri(format!("{uri:?}: {why}"));
        if uri.starts_with('/') {
            return Ok(Self::Local {
                path: PathBuf::from(uri),
            });
        }
        let Some((scheme, rest)) = uri.split_once("://") else {
            return Err(invalid(
                "expected s3://, gs://, http(s)://, hf:// or an absolute path",
            ));
        };
        match scheme {
            "s3" | "gs" => {
                let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
                if !valid_bucket(bucket) {
                    return Err(invalid(
                        "the bucket name must be 3-63 lowercase letters, digits, '.', '-' or '_'",
                    ));
                }
                let (bucket, key) = (bucket.to_owned(), key.to_owned());
                Ok(if scheme == "s3" {
                    Self::S3 { bucket, key }
                } else {
                    Self::Gcs { bucket, key }
                })
            }
            "http" | "https" => {
                let url = url::Url::parse(uri).map_err(|e| invalid(&e.to_string()))?;
                if url.host_str().is_none_or(str::is_empty) {
                    return Err(invalid("the URL has no host"));
                }
                Ok(Self::Http { url })
            }
            "hf" => {
                let (repo, revision) = rest.split_once('@').unwrap_or((rest, "main"));
                let parts: Vec<&str> = repo.split('/').collect();
                if parts.len() != 2 || parts.iter().any(|p| !valid_hub_name(p)) {
                    return Err(invalid("expected hf://org/repo or hf://org/repo@revision"));
                }
                if revision.is_empty() || revision.contains(char::is_whitespace) {
                    return Err(invalid("the revision after '@' is empty or has spaces"));
                }
                Ok(Self::Hub {
                    repo: repo.to_owned(),
                    revision: revision.to_owned(),
                })
            }
            other => Err(invalid(&format!(
                "unsupported scheme {other}://; expected s3://, gs://, http(s)://, hf:// or an absolute path"
            ))),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::S3 { bucket, key } => write!(f, "s3://{bucket}/{key}"),
            Self::Gcs { bucket, key } => write!(f, "gs://{bucket}/{key}"),
            Self::Http { url } => write!(f, "{}", redacted(url)),
            Self::Hub { repo, revision } => write!(f, "hf://{repo}@{revision}"),
            Self::Local { path } => write!(f, "{}", path.display()),
        }
    }
}

/// The URL without its query and credentials (presigned signatures stay out of logs).
fn redacted(url: &url::Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    // Setting these cannot fail on an http(s) URL with a host.
    let _ = shown.set_password(None);
    let _ = shown.set_username("");
    shown.to_string()
}

fn valid_bucket(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
}

fn valid_hub_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

/// How an archive file is packed, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveKind {
    /// `.tar`
    Tar,
    /// `.tar.gz` or `.tgz`
    TarGz,
}

impl ArchiveKind {
    /// The kind of archive `name` is, if it is one.
    pub fn of(name: &str) -> Option<Self> {
        let name = name.to_ascii_lowercase();
        if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
            Some(Self::TarGz)
        } else if name.ends_with(".tar") {
            Some(Self::Tar)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!(
            Source::parse("s3://models/lynx/7b/").unwrap(),
            Source::S3 {
                bucket: "models".into(),
                key: "lynx/7b/".into()
            }
        );
        assert_eq!(
            Source::parse("gs://my-bucket").unwrap(),
            Source::Gcs {
                bucket: "my-bucket".into(),
                key: String::new()
            }
        );
        assert_eq!(
            Source::parse("hf://bytedance/lynx@v1.0").unwrap(),
            Source::Hub {
                repo: "bytedance/lynx".into(),
                revision: "v1.0".into()
            }
        );
        assert_eq!(
            Source::parse("hf://org/repo").unwrap(),
            Source::Hub {
                repo: "org/repo".into(),
                revision: "main".into()
            }
        );
        assert!(matches!(
            Source::parse("https://x.example/m.tar.gz?X-Amz-Signature=s").unwrap(),
            Source::Http { .. }
        ));
        assert_eq!(
            Source::parse("/data/model").unwrap(),
            Source::Local {
                path: "/data/model".into()
            }
        );
    }

    #[test]
    fn refuses_malformed_uris_with_the_expected_form() {
        for (uri, words) in [
            ("s3://", "bucket name"),
            ("s3://UPPER/x", "bucket name"),
            ("hf://just-a-name", "hf://org/repo"),
            ("hf://a/b/c", "hf://org/repo"),
            ("hf://org/repo@", "revision"),
            ("ftp://host/x", "unsupported scheme"),
            ("model.tar", "absolute path"),
            ("http://", "host"),
        ] {
            let e = Source::parse(uri).unwrap_err();
            assert_eq!(e.reason(), "InvalidUri", "{uri}");
            assert!(e.to_string().contains(words), "{uri}: {e}");
        }
    }

    #[test]
    fn display_hides_presigned_queries_and_passwords() {
        let s = Source::parse("https://u:secret@h.example/m.tar?sig=abc").unwrap();
        assert_eq!(s.to_string(), "https://h.example/m.tar");
    }

    #[test]
    fn archive_kinds() {
        assert_eq!(ArchiveKind::of("m.TAR.GZ"), Some(ArchiveKind::TarGz));
        assert_eq!(ArchiveKind::of("m.tgz"), Some(ArchiveKind::TarGz));
        assert_eq!(ArchiveKind::of("m.tar"), Some(ArchiveKind::Tar));
        assert_eq!(ArchiveKind::of("finetune_lynx.pt"), None);
    }
}
