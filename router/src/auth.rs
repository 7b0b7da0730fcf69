//! Bearer tokens: with any configured, a request must carry `authorization: Bearer <one of
//! them>`; the header is forwarded to the workers, which check it again.

use sha2::{Digest, Sha256};

/// The accepted tokens (none: no authentication).
#[derive(Debug, Clone, Default)]
pub struct Tokens(Vec<[u8; 32]>);

impl Tokens {
    /// Tokens from `tokens` (stored as SHA-256 digests, compared whole).
    pub fn new(tokens: &[String]) -> Self {
        Self(
            tokens
                .iter()
                .map(|t| Sha256::digest(t.as_bytes()).into())
                .collect(),
        )
    }

    /// Whether `authorization` (the header's value) is accepted.
    pub fn accepts(&self, authorization: Option<&str>) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let Some(token) = authorization.and_then(|v| v.strip_prefix("Bearer ")) else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        self.0.contains(&digest)
    }

    /// The gRPC check: UNAUTHENTICATED without an accepted token.
    pub fn check_grpc(&self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let value = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if self.accepts(value) {
            Ok(req)
        } else {
            Err(tonic::Status::unauthenticated(
                "a valid `authorization: Bearer <token>` is required",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configured_tokens_pass() {
        assert!(Tokens::default().accepts(None));
        let t = Tokens::new(&lynx_proto::tokens_file::parse(
            "# team a\nsecret-1\n\n secret-2 \n",
        ));
        assert!(t.accepts(Some("Bearer secret-1")));
        assert!(t.accepts(Some("Bearer secret-2")));
        assert!(!t.accepts(Some("Bearer secret-3")));
        assert!(!t.accepts(Some("secret-1")));
        assert!(!t.accepts(None));
    }
}
