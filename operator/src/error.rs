//! The operator's error type and the metric label of each kind.

use crate::desired::DesiredError;

/// Why a reconcile failed. Every variant is retried with backoff by the error policy; an invalid
/// spec is not an error (it is reported in the status and waits for a spec change).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request to the Kubernetes API failed.
    #[error("{}", api_sentence(.0))]
    Kube(#[from] kube::Error),
    /// A child could not be applied or pruned.
    #[error("cannot {action} the {kind} {name}: {}", api_sentence(.source))]
    Child {
        /// `apply` or `delete`.
        action: &'static str,
        /// Kind of the child.
        kind: String,
        /// Its name.
        name: String,
        /// The API error.
        source: kube::Error,
    },
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
            Self::Kube(kube::Error::Api(_))
            | Self::Child {
                source: kube::Error::Api(_),
                ..
            } => "api_error",
            Self::Kube(_) | Self::Child { .. } => "client_error",
            Self::Identity(_) => "missing_identity",
            Self::Serialize { .. } => "serialize_error",
        }
    }
}

/// A Kubernetes client error as a sentence for conditions and events: the API server's own
/// message with its code and reason, never a debug dump.
pub fn api_sentence(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => {
            let reason = if status.reason.is_empty() {
                String::new()
            } else {
                format!(" {}", status.reason)
            };
            format!(
                "the API server answered {}{reason}: {}",
                status.code, status.message
            )
        }
        other => format!("the API server could not be reached: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_read_as_sentences_naming_the_child() {
        let status = kube::core::Status::failure("Service \"x\" is invalid: ports", "Invalid")
            .with_code(422);
        let error = Error::Child {
            action: "apply",
            kind: "Service".to_owned(),
            name: "x".to_owned(),
            source: kube::Error::Api(Box::new(status)),
        };
        assert_eq!(
            error.to_string(),
            "cannot apply the Service x: the API server answered 422 Invalid: \
             Service \"x\" is invalid: ports"
        );
        assert_eq!(error.metric_label(), "api_error");
    }
}
