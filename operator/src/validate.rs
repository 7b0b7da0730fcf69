//! Spec validation that mirrors the CRD's CEL rules.
//!
//! Each rule exists twice: as a CEL expression in the CRD (`x-kubernetes-validations`, enforced by
//! the API server) and as Rust in [`LynxDeploymentSpec::validate`], so the operator refuses the
//! same specs when it is handed an object that bypassed admission (tests, older CRDs). The CEL
//! text and message live here as constants so the two cannot drift in wording.

mod uri;

pub use uri::{
    uri_error, GS_MESSAGE, GS_RULE, HF_MESSAGE, HF_RULE, HTTP_MESSAGE, HTTP_RULE, S3_MESSAGE,
    S3_RULE, SCHEME_MESSAGE, SCHEME_RULE,
};

use crate::crd::{AutoscalingMetric, LynxDeployment, LynxDeploymentSpec, ModelLayout, ModelSpec};

/// CEL rule on the whole object: the name is a DNS-1035 label (the Service carries it, and so
/// does every child's `app.kubernetes.io/instance` label value).
pub const NAME_RULE: &str =
    "size(self.metadata.name) <= 63 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')";
/// Message of [`NAME_RULE`].
pub const NAME_MESSAGE: &str = "metadata.name must be at most 63 characters of lowercase letters, \
     digits and '-', start with a letter and end with a letter or digit (a DNS-1035 label: the \
     workers' Service carries this name)";
/// The GPUs a worker uses (the OpenAPI schema's maximum of `spec.worker.gpus`).
pub const MAX_GPUS: i32 = 1;

/// CEL rule on `spec.model.source`: exactly one source is set.
pub const MODEL_SOURCE_RULE: &str =
    "[has(self.pvc), has(self.hostPath), has(self.uri)].filter(x, x).size() == 1";
/// Message of [`MODEL_SOURCE_RULE`].
pub const MODEL_SOURCE_MESSAGE: &str = "exactly one of pvc, hostPath or uri must be set";
/// CEL rule on `spec.model.path`: relative, without `..`.
pub const MODEL_PATH_RULE: &str = "!self.startsWith('/') && !self.contains('..')";
/// Message of [`MODEL_PATH_RULE`].
pub const MODEL_PATH_MESSAGE: &str =
    "path must be relative to the source root and must not contain '..'";
/// CEL rule on `spec.model.source.uri`: `s3://` and `gs://` need credentials.
pub const CREDENTIALS_RULE: &str = "!(self.uri.startsWith('s3://') || \
     self.uri.startsWith('gs://')) || has(self.credentialsSecret)";
/// Message of [`CREDENTIALS_RULE`].
pub const CREDENTIALS_MESSAGE: &str = "s3:// and gs:// sources need credentialsSecret: a Secret \
     whose keys (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or GOOGLE_SERVICE_ACCOUNT_KEY) \
     become the fetcher's environment";
/// CEL rule on `spec.model.source.uri`: not both `cache` and `claimName`.
pub const CACHE_RULE: &str = "!has(self.cache) || !has(self.claimName)";
/// Message of [`CACHE_RULE`].
pub const CACHE_MESSAGE: &str = "set at most one of cache (one Job fetches into a shared claim) \
     and claimName (each worker's init container fetches into the claim)";
/// CEL rule on `spec.model`: `convert` converts a release checkpoint.
pub const CONVERT_RULE: &str = "!has(self.source.uri) || !has(self.source.uri.convert) || \
     !self.source.uri.convert || !has(self.layout) || self.layout == 'release'";
/// Message of [`CONVERT_RULE`].
pub const CONVERT_MESSAGE: &str = "source.uri.convert converts a release checkpoint: layout must \
     be release (the layout of the fetched model; the workers then serve the converted one)";
/// CEL rule on `spec.autoscaling`: `minReplicas <= maxReplicas`.
pub const REPLICAS_RULE: &str = "!has(self.minReplicas) || self.minReplicas <= self.maxReplicas";
/// Message of [`REPLICAS_RULE`].
pub const REPLICAS_MESSAGE: &str = "minReplicas must not exceed maxReplicas";
/// CEL rule on `spec.autoscaling`: the custom metric needs a non-empty query.
pub const CUSTOM_QUERY_RULE: &str =
    "!has(self.metric) || self.metric != 'custom' || (has(self.query) && size(self.query) > 0)";
/// Message of [`CUSTOM_QUERY_RULE`].
pub const CUSTOM_QUERY_MESSAGE: &str = "metric custom requires a PromQL query";
/// CEL rule on `spec.podDisruptionBudget`: not both bounds.
pub const PDB_RULE: &str = "!(has(self.minAvailable) && has(self.maxUnavailable))";
/// Message of [`PDB_RULE`].
pub const PDB_MESSAGE: &str = "set at most one of minAvailable and maxUnavailable";

/// CEL rule on `spec`: a router in front of TLS workers is not supported yet.
pub const ROUTER_TLS_RULE: &str = "!has(self.router) || !has(self.tls) || \
     (has(self.router.enabled) && !self.router.enabled)";
/// Message of [`ROUTER_TLS_RULE`].
pub const ROUTER_TLS_MESSAGE: &str = "spec.router and spec.tls cannot be set together yet: the \
     router does not speak TLS to clients or workers; remove spec.tls, or spec.router (or set \
     spec.router.enabled: false)";

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
