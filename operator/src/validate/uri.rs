//! The grammar of `spec.model.source.uri.uri`: the Rust mirror of its CEL rules.

use crate::crd::rules::{GS_MESSAGE, HF_MESSAGE, HTTP_MESSAGE, S3_MESSAGE, SCHEME_MESSAGE};

/// The message of the first rule of this module that `uri` breaks, if any.
pub fn uri_error(uri: &str) -> Option<&'static str> {
    if let Some(rest) = uri.strip_prefix("s3://") {
        return (!bucket(rest, 63, b".-")).then_some(S3_MESSAGE);
    }
    if let Some(rest) = uri.strip_prefix("gs://") {
        return (!bucket(rest, 222, b"._-")).then_some(GS_MESSAGE);
    }
    if let Some(rest) = uri.strip_prefix("hf://") {
        return (!hub_repository(rest)).then_some(HF_MESSAGE);
    }
    let http = uri
        .strip_prefix("http://")
        .or_else(|| uri.strip_prefix("https://"));
    if let Some(rest) = http {
        return (!host_and_path(rest)).then_some(HTTP_MESSAGE);
    }
    Some(SCHEME_MESSAGE)
}

/// `BUCKET[/ANYTHING]`: a bucket of 3 to `max` characters, `[a-z0-9]` at both ends and
/// `[a-z0-9]` or `inner` between; the rest without a line break.
fn bucket(rest: &str, max: usize, inner: &[u8]) -> bool {
    let (name, key) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, ""),
    };
    let bytes = name.as_bytes();
    let edge = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    (3..=max).contains(&bytes.len())
        && edge(&bytes[0])
        && edge(&bytes[bytes.len() - 1])
        && bytes.iter().all(|b| edge(b) || inner.contains(b))
        && !key.contains('\n')
}

/// `ORG/REPO[@REVISION]` of [`HF_RULE`].
fn hub_repository(rest: &str) -> bool {
    let Some((org, rest)) = rest.split_once('/') else {
        return false;
    };
    let (repo, revision) = match rest.split_once('@') {
        Some((repo, revision)) => (repo, Some(revision)),
        None => (rest, None),
    };
    segment(org, b".") && segment(repo, b".") && revision.is_none_or(|r| segment(r, b"./"))
}

/// `[A-Za-z0-9]([SEP]?[A-Za-z0-9_-])*`: a letter or digit, then letters, digits, `_`, `-`, each
/// possibly preceded by one separator.
fn segment(text: &str, separators: &[u8]) -> bool {
    let bytes = text.as_bytes();
    let Some((first, rest)) = bytes.split_first() else {
        return false;
    };
    let word = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-';
    let mut after_separator = false;
    for b in rest {
        if separators.contains(b) {
            if after_separator {
                return false;
            }
            after_separator = true;
        } else if word(b) {
            after_separator = false;
        } else {
            return false;
        }
    }
    first.is_ascii_alphanumeric() && !after_separator
}

/// `HOST[:PORT]/PATH` of [`HTTP_RULE`].
fn host_and_path(rest: &str) -> bool {
    let Some((authority, path)) = rest.split_once('/') else {
        return false;
    };
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    let label = |label: &str| {
        let bytes = label.as_bytes();
        !bytes.is_empty()
            && bytes[0].is_ascii_alphanumeric()
            && bytes[bytes.len() - 1].is_ascii_alphanumeric()
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
    };
    host.split('.').all(label)
        && port.is_none_or(|p| (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
        && !path.is_empty()
        && path.bytes().all(|b| (b'!'..=b'~').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grammar_accepts_each_scheme_and_refuses_malformed_uris() {
        for ok in [
            "s3://models/lynx-7b/",
            "s3://my.bucket-1",
            "gs://my_bucket/lynx.tar.gz",
            "hf://lynx-ai/lynx-7b",
            "hf://lynx-ai/lynx.7b@v1.0",
            "hf://lynx-ai/lynx-7b@refs/pr/3",
            "https://models.example.com/lynx.tar",
            "http://127.0.0.1:8080/model.tar?sig=x",
        ] {
            assert_eq!(uri_error(ok), None, "{ok}");
        }
        for (bad, message) in [
            ("s3://", S3_MESSAGE),
            ("s3:///key", S3_MESSAGE),
            ("s3://UPPER/key", S3_MESSAGE),
            ("gs://a", GS_MESSAGE),
            ("hf://lynx-7b", HF_MESSAGE),
            ("hf://org/", HF_MESSAGE),
            ("hf://org/repo@", HF_MESSAGE),
            ("hf://org/repo@v1..2", HF_MESSAGE),
            ("hf://org/repo@main/", HF_MESSAGE),
            ("hf://org/repo/extra", HF_MESSAGE),
            ("https://", HTTP_MESSAGE),
            ("https://host", HTTP_MESSAGE),
            ("https://host/", HTTP_MESSAGE),
            ("https://-host/x", HTTP_MESSAGE),
            ("http://host:port/x", HTTP_MESSAGE),
            ("https://host/a b", HTTP_MESSAGE),
            ("ftp://host/x", SCHEME_MESSAGE),
            ("/models/lynx", SCHEME_MESSAGE),
        ] {
            assert_eq!(uri_error(bad), Some(message), "{bad}");
        }
    }
}
