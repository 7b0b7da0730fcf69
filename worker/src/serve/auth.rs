//! Optional bearer-token authentication of `lynx.v1.Lynx` (checked at [`super::door`]) and of the
//! OpenAI API: without the header `authorization: Bearer <token>` naming one of the configured
//! tokens, UNAUTHENTICATED (the scheme name is case-insensitive, RFC 7235). Health, reflection,
//! metrics and probes stay open (probes and scrapers carry no credentials). Refused generation
//! requests are counted in `lynx_requests_total{code="UNAUTHENTICATED"}`.

use std::sync::Arc;

use tonic::codegen::http::HeaderMap;
use tonic::Status;

/// The accepted tokens.
#[derive(Clone, Default)]
pub struct Tokens(Arc<Vec<Vec<u8>>>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} configured)", self.0.len())
    }
}

/// Equality that takes the same time wherever the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Tokens {
    /// `tokens` (empty: authentication off).
    pub fn new(tokens: impl IntoIterator<Item = String>) -> Self {
        Self(Arc::new(
            tokens.into_iter().map(String::into_bytes).collect(),
        ))
    }

    /// Whether authentication is on.
    pub fn enabled(&self) -> bool {
        !self.0.is_empty()
    }

    /// Checks the `authorization` header of a request.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Status> {
        if !self.enabled() {
            return Ok(());
        }
        let presented = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim_start().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token)
            .ok_or_else(|| Status::unauthenticated("missing bearer token"))?;
        // Compare with every token so that the time does not tell which one matched.
        let matched = self.0.iter().fold(false, |any, t| {
            any | constant_time_eq(t, presented.trim().as_bytes())
        });
        if matched {
            Ok(())
        } else {
            Err(Status::unauthenticated("invalid bearer token"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", auth.parse().expect("ascii"));
        h
    }

    #[test]
    fn only_configured_bearer_tokens_pass() {
        let t = Tokens::new(lynx_proto::tokens_file::parse(
            "# team a\nsecret-1\n\n  secret-2  \n",
        ));
        assert!(t.check(&headers("Bearer secret-1")).is_ok());
        assert!(t.check(&headers("Bearer secret-2")).is_ok());
        for scheme in ["bearer", "BEARER", "bEaReR"] {
            let h = headers(&format!("{scheme} secret-1"));
            assert!(t.check(&h).is_ok(), "scheme {scheme}");
        }
        for bad in [
            "Bearer secret-3",
            "Bearer secret-1x",
            "secret-1",
            "Basic c2VjcmV0LTE=",
            "Bearers secret-1",
        ] {
            let e = t.check(&headers(bad)).map_err(|s| s.code());
            assert_eq!(e, Err(tonic::Code::Unauthenticated), "{bad}");
        }
        assert_eq!(
            t.check(&HeaderMap::new()).map_err(|s| s.code()),
            Err(tonic::Code::Unauthenticated)
        );
        assert!(Tokens::default().check(&HeaderMap::new()).is_ok(), "off");
    }
}
