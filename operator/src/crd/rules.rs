//! The CRD's CEL rules (`x-kubernetes-validations`) and their messages, one constant each.
//!
//! The schema attaches them; `crate::validate` mirrors each rule in Rust with the same message,
//! so the API server and the operator refuse the same specs in the same words.
//!
//! The CEL regular expressions avoid backslashes (CEL string escapes) and nested character
//! classes (the client-side evaluator's regex dialect): `[.]` is a dot, `[!-~]` a printable
//! character other than a space.

/// CEL rule on the whole object: the name is a DNS-1035 label (the Service carries it, and so
/// does every child's `app.kubernetes.io/instance` label value).
pub const NAME_RULE: &str =
    "size(self.metadata.name) <= 63 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')";
/// Message of [`NAME_RULE`].
pub const NAME_MESSAGE: &str = "metadata.name must be at most 63 characters of lowercase letters, \
     digits and '-', start with a letter and end with a letter or digit (a DNS-1035 label: the \
     workers' Service carries this name)";

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

/// CEL rule on `spec.model.source.uri`: a known scheme.
pub const SCHEME_RULE: &str = "['s3://', 'gs://', 'hf://', 'http://', 'https://']\
     .exists(p, self.uri.startsWith(p))";
/// Message of [`SCHEME_RULE`].
pub const SCHEME_MESSAGE: &str = "uri must start with s3://, gs://, hf://, http:// or https://";
/// CEL rule: an `s3://` uri names a bucket.
pub const S3_RULE: &str = "!self.uri.startsWith('s3://') || \
     self.uri.matches('^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$')";
/// Message of [`S3_RULE`].
pub const S3_MESSAGE: &str = "an s3:// uri is s3://BUCKET[/KEY-OR-PREFIX], the bucket 3 to 63 \
     lowercase letters, digits, '.' and '-', starting and ending with a letter or digit";
/// CEL rule: a `gs://` uri names a bucket.
pub const GS_RULE: &str = "!self.uri.startsWith('gs://') || \
     self.uri.matches('^gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9](/.*)?$')";
/// Message of [`GS_RULE`].
pub const GS_MESSAGE: &str = "a gs:// uri is gs://BUCKET[/OBJECT-OR-PREFIX], the bucket 3 to 222 \
     lowercase letters, digits, '.', '_' and '-', starting and ending with a letter or digit";
/// CEL rule: an `hf://` uri names `org/repo` and optionally a revision.
pub const HF_RULE: &str = "!self.uri.startsWith('hf://') || self.uri.matches(\
     '^hf://[A-Za-z0-9]([.]?[A-Za-z0-9_-])*/[A-Za-z0-9]([.]?[A-Za-z0-9_-])*\
     (@[A-Za-z0-9]([./]?[A-Za-z0-9_-])*)?$')";
/// Message of [`HF_RULE`].
pub const HF_MESSAGE: &str = "an hf:// uri is hf://ORG/REPO[@REVISION]: ORG and REPO of \
     letters, digits, '-', '_' and single '.', starting with a letter or digit; the revision a \
     branch, tag or commit of letters, digits, '-', '_' and single '.' or '/'";
/// CEL rule: an `http(s)://` uri names a host and a path.
pub const HTTP_RULE: &str = "!self.uri.startsWith('http') || self.uri.matches(\
     '^https?://[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?([.][A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*\
     (:[0-9]{1,5})?/[!-~]+$')";
/// Message of [`HTTP_RULE`].
pub const HTTP_MESSAGE: &str = "an http(s):// uri is http(s)://HOST[:PORT]/PATH: a DNS name or \
     IPv4 address, then the path of the file, without spaces";
