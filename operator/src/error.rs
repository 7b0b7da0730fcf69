//! The operator's error type and the metric label of each kind.

use crate::desired::DesiredError;

/// Why a reconcile failed. Every variant is retried with backoff by the error policy; an invalid
/// spec is not an error (it is reported in the status and waits for a spec change).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request to the Kubernetes API failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The object cannot own children (no namespace, name or uid).
    #[error(transparent)]
    Identity(DesiredError),
    /// A child object could not be serialized for server-side apply.
    #[error("cannot serialize {kind}: {source}")]
    Serialize {
        /// Kind of the child.
        kind: &'static str,
        /// The serde error.
        source: serde_json::Error,
    },
}

impl Error {
    /// The value of the `outcome` label of `lynx_operator_reconciliations_total` for this error.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(kube::Error::Api(_)) => "api_error",
            Self::Kube(_) => "client_error",
            Self::Identity(_) => "missing_identity",
            Self::Serialize { .. } => "serialize_error",
        }
    }
}
