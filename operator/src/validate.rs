//! Spec validation that mirrors the CRD's CEL rules.
//!
//! Each rule exists twice: as a CEL expression in the CRD (`x-kubernetes-validations`, enforced by
//! the API server) and as Rust in [`LynxDeploymentSpec::validate`], so the operator refuses the
//! same specs when it is handed an object that bypassed admission (tests, older CRDs). The CEL
//! text and message are constants in `crate::crd::rules` (re-exported here) so the two cannot
//! drift in wording.

mod uri;

pub use crate::crd::rules::*;
pub use uri::uri_error;

use crate::crd::{AutoscalingMetric, LynxDeployment, LynxDeploymentSpec, ModelLayout, ModelSpec};

/// The GPUs a worker uses (the OpenAPI schema's maximum of `spec.worker.gpus`).
pub const MAX_GPUS: i32 = 1;

/// Why a spec is invalid. The messages are the CEL rules' messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// Zero or several model sources are set.
    #[error("spec.model.source: {MODEL_SOURCE_MESSAGE}")]
    ModelSource,
    /// The model uri breaks its scheme's grammar (the message of the rule).
    #[error("spec.model.source.uri.uri: {0}")]
    Uri(&'static str),
    /// An `s3://` or `gs://` source without `credentialsSecret`.
    #[error("spec.model.source.uri: {CREDENTIALS_MESSAGE}")]
    Credentials,
    /// Both `cache` and `claimName`.
    #[error("spec.model.source.uri: {CACHE_MESSAGE}")]
    CacheAndClaim,
    /// `convert` with a model that is not a release checkpoint.
    #[error("spec.model: {CONVERT_MESSAGE}")]
    ConvertLayout,
    /// `sha256` is not 64 lowercase hex digits (the OpenAPI pattern).
    #[error("spec.model.source.uri.sha256 must be 64 lowercase hexadecimal digits")]
    Sha256,
    /// The model path is absolute or climbs out of the source.
    #[error("spec.model.path: {MODEL_PATH_MESSAGE}")]
    ModelPath,
    /// `autoscaling.minReplicas > autoscaling.maxReplicas`.
    #[error("spec.autoscaling: {REPLICAS_MESSAGE}")]
    MinAboveMax,
    /// `metric: custom` without a query.
    #[error("spec.autoscaling: {CUSTOM_QUERY_MESSAGE}")]
    CustomWithoutQuery,
    /// Both PDB bounds are set.
    #[error("spec.podDisruptionBudget: {PDB_MESSAGE}")]
    PdbBothBounds,
    /// A count the OpenAPI schema bounds below by zero is negative.
    #[error("{0} must not be negative")]
    Negative(&'static str),
    /// The name cannot name a Service.
    #[error("{NAME_MESSAGE}")]
    Name,
    /// An enabled router together with TLS.
    #[error("{ROUTER_TLS_MESSAGE}")]
    RouterWithTls,
    /// More GPUs than a worker uses.
    #[error(
        "spec.worker.gpus: a worker runs the model on one GPU; set gpus to 1 (or 0 for CPU) \
         and scale with replicas"
    )]
    TooManyGpus,
}

/// Whether `name` is a DNS-1035 label ([`NAME_RULE`]).
pub fn is_dns_1035_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[bytes.len() - 1] != b'-'
}

impl LynxDeployment {
    /// [`LynxDeploymentSpec::validate`] plus the rule on the name ([`NAME_RULE`]).
    pub fn validate(&self) -> Result<(), ValidationError> {
        if !self.metadata.name.as_deref().is_some_and(is_dns_1035_label) {
            return Err(ValidationError::Name);
        }
        self.spec.validate()
    }
}

impl LynxDeploymentSpec {
    /// Checks the rules the CRD enforces with CEL, plus the non-negative counts its OpenAPI
    /// schema bounds.
    ///
    /// # Guarantees
    /// Returns `Ok` exactly when the CEL rules of the generated CRD accept the spec (for specs
    /// that already passed the schema's type checks), and then [`crate::desired::desired`] can
    /// build every child object. The first violated rule is reported.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.replicas < 0 {
            return Err(ValidationError::Negative("spec.replicas"));
        }
        if self.worker.gpus < 0 {
            return Err(ValidationError::Negative("spec.worker.gpus"));
        }
        if self.worker.gpus > MAX_GPUS {
            return Err(ValidationError::TooManyGpus);
        }
        let source = &self.model.source;
        let sources = [
            source.pvc.is_some(),
            source.host_path.is_some(),
            source.uri.is_some(),
        ];
        if sources.iter().filter(|set| **set).count() != 1 {
            return Err(ValidationError::ModelSource);
        }
        if self.model.path.starts_with('/') || self.model.path.contains("..") {
            return Err(ValidationError::ModelPath);
        }
        validate_uri_source(&self.model)?;
        if let Some(autoscaling) = &self.autoscaling {
            if autoscaling.min_replicas < 0 {
                return Err(ValidationError::Negative("spec.autoscaling.minReplicas"));
            }
            if autoscaling.min_replicas > autoscaling.max_replicas {
                return Err(ValidationError::MinAboveMax);
            }
            let has_query = autoscaling.query.as_deref().is_some_and(|q| !q.is_empty());
            if autoscaling.metric == AutoscalingMetric::Custom && !has_query {
                return Err(ValidationError::CustomWithoutQuery);
            }
        }
        let service = &self.service;
        if service.max_connection_age_seconds < 0 {
            return Err(ValidationError::Negative(
                "spec.service.maxConnectionAgeSeconds",
            ));
        }
        if service.max_connection_age_grace_seconds < 0 {
            return Err(ValidationError::Negative(
                "spec.service.maxConnectionAgeGraceSeconds",
            ));
        }
        if let Some(router) = self.router.as_ref().filter(|router| router.enabled) {
            if self.tls.is_some() {
                return Err(ValidationError::RouterWithTls);
            }
            if router.max_held_requests < 0 {
                return Err(ValidationError::Negative("spec.router.maxHeldRequests"));
            }
            if router.hold_timeout_seconds < 0 {
                return Err(ValidationError::Negative("spec.router.holdTimeoutSeconds"));
            }
        }
        if let Some(pdb) = &self.pod_disruption_budget {
            if pdb.min_available.is_some() && pdb.max_unavailable.is_some() {
                return Err(ValidationError::PdbBothBounds);
            }
        }
        Ok(())
    }
}

/// The rules on `spec.model.source.uri` and the convert rule on `spec.model`.
fn validate_uri_source(model: &ModelSpec) -> Result<(), ValidationError> {
    let Some(source) = &model.source.uri else {
        return Ok(());
    };
    if let Some(message) = uri_error(&source.uri) {
        return Err(ValidationError::Uri(message));
    }
    let needs_credentials = source.uri.starts_with("s3://") || source.uri.starts_with("gs://");
    if needs_credentials && source.credentials_secret.is_none() {
        return Err(ValidationError::Credentials);
    }
    if source.cache.is_some() && source.claim_name.is_some() {
        return Err(ValidationError::CacheAndClaim);
    }
    if source.convert && model.layout != ModelLayout::Release {
        return Err(ValidationError::ConvertLayout);
    }
    let hex = |digest: &str| {
        digest.len() == 64
            && digest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if source.sha256.as_deref().is_some_and(|digest| !hex(digest)) {
        return Err(ValidationError::Sha256);
    }
    Ok(())
}
