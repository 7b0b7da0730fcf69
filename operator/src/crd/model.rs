//! The `spec.model` section: where the weights come from, how they reach the workers, and how to
//! read them.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::crd::rules::{
    CACHE_MESSAGE, CACHE_RULE, CONVERT_MESSAGE, CONVERT_RULE, CREDENTIALS_MESSAGE,
    CREDENTIALS_RULE, GS_MESSAGE, GS_RULE, HF_MESSAGE, HF_RULE, HTTP_MESSAGE, HTTP_RULE,
    MODEL_PATH_MESSAGE, MODEL_PATH_RULE, MODEL_SOURCE_MESSAGE, MODEL_SOURCE_RULE, S3_MESSAGE,
    S3_RULE, SCHEME_MESSAGE, SCHEME_RULE,
};

/// The fetcher image the CRD used to default to (a curl image without `lynx-worker`). The API
/// server stored it in every `uri` source created before `fetcherImage` became optional, so it
/// is read as "not set": the worker image fetches.
pub const LEGACY_FETCHER_IMAGE: &str = "curlimages/curl:8.11.1";

/// The model: one source, a directory inside it, its layout and the compute dtype.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(CONVERT_RULE).message(CONVERT_MESSAGE))]
pub struct ModelSpec {
    /// Where the model directory lives; exactly one of `pvc`, `hostPath`, `uri`.
    pub source: ModelSource,
    /// Model directory relative to the root of the source (empty: the root itself).
    #[serde(default)]
    #[x_kube(validation = Rule::new(MODEL_PATH_RULE).message(MODEL_PATH_MESSAGE))]
    pub path: String,
    /// On-disk layout of the model directory (of the source's directory when
    /// `source.uri.convert` is set: then `release`).
    #[serde(default)]
    pub layout: ModelLayout,
    /// Compute dtype of the weights on the GPU.
    #[serde(default)]
    pub dtype: ModelDtype,
}

/// The volume the model directory is read from. Exactly one field is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(MODEL_SOURCE_RULE).message(MODEL_SOURCE_MESSAGE))]
pub struct ModelSource {
    /// An existing PersistentVolumeClaim holding the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<PvcSource>,
    /// A directory on every GPU node (pre-provisioned images, local NVMe).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<HostPathSource>,
    /// A model downloaded by `lynx-worker fetch` (S3, GCS, Hugging Face, HTTP(S)) before the
    /// worker starts: by each worker's init container, or once by a Job into a shared `cache`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<UriSource>,
}

/// A model on an existing PersistentVolumeClaim.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PvcSource {
    /// Name of the claim, in the LynxDeployment's namespace.
    #[schemars(length(min = 1))]
    pub claim_name: String,
    /// Mount the claim read-only (the worker never writes to the model).
    #[serde(default = "default_true")]
    pub read_only: bool,
}

/// A model in a directory of the node's filesystem.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostPathSource {
    /// Absolute directory on the node; mounted read-only.
    #[schemars(length(min = 1))]
    pub path: String,
}

/// A model fetched by `lynx-worker fetch`. Without `cache`, an init container `fetch-model` of
/// every worker pod downloads it into `claimName` or an emptyDir; with `cache`, one Job
/// downloads it into the shared claim and the workers wait for it (init container
/// `wait-model`) and read it from there.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(SCHEME_RULE).message(SCHEME_MESSAGE))]
#[x_kube(validation = Rule::new(S3_RULE).message(S3_MESSAGE))]
#[x_kube(validation = Rule::new(GS_RULE).message(GS_MESSAGE))]
#[x_kube(validation = Rule::new(HF_RULE).message(HF_MESSAGE))]
#[x_kube(validation = Rule::new(HTTP_RULE).message(HTTP_MESSAGE))]
#[x_kube(validation = Rule::new(CREDENTIALS_RULE).message(CREDENTIALS_MESSAGE))]
#[x_kube(validation = Rule::new(CACHE_RULE).message(CACHE_MESSAGE))]
pub struct UriSource {
    /// `s3://BUCKET[/KEY-OR-PREFIX]`, `gs://BUCKET[/KEY-OR-PREFIX]`, `hf://ORG/REPO[@REVISION]`
    /// (Hugging Face hub) or `http(s)://HOST/PATH`. A `.tar`, `.tar.gz` or `.tgz` file is
    /// unpacked; a prefix or repository is copied file by file; any other file is stored under
    /// its name.
    #[schemars(length(min = 1, max = 2048))]
    pub uri: String,
    /// A Secret in the LynxDeployment's namespace whose keys become the fetcher's environment:
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` (and optionally `AWS_SESSION_TOKEN`,
    /// `AWS_REGION`) for `s3://`, `GOOGLE_SERVICE_ACCOUNT_KEY` (the JSON key) for `gs://`,
    /// `HF_TOKEN` for private `hf://` repositories. Required for `s3://` and `gs://`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub credentials_secret: Option<String>,
    /// Endpoint of an S3-compatible server (MinIO, R2, ...) or of a Hugging Face mirror.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), regex(pattern = r"^https?://[^\s]+$"))]
    pub endpoint: Option<String>,
    /// The expected sha256 (64 lowercase hex digits) of the archive or file, or, for a prefix or
    /// repository, of its manifest (sha256sum lines of every file, sorted by path); a mismatch
    /// fails the fetch with `ChecksumMismatch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub sha256: Option<String>,
    /// Convert the release checkpoint at `spec.model.path` (layout `release`) once after the
    /// download; the workers then serve the converted model (`--layout converted`).
    #[serde(default)]
    pub convert: bool,
    /// A ReadWriteMany claim shared by every LynxDeployment that names it: one Job fetches each
    /// source once into `<claim>/<key>` (the key a hash of uri, endpoint, sha256, convert and
    /// path) and the workers mount the claim read-only. Excludes `claimName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<ModelCacheSpec>,
    /// Image of the fetcher (init container or Job); it must provide `lynx-worker`. Default: the
    /// worker image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub fetcher_image: Option<String>,
    /// Where each worker's init container downloads the model: a PersistentVolumeClaim (kept
    /// across restarts; ReadWriteMany when workers share it) or, when absent, an emptyDir that
    /// lives as long as the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_name: Option<String>,
    /// Size limit of the emptyDir (ignored with `claimName` or `cache`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_limit: Option<Quantity>,
}

impl UriSource {
    /// The fetcher's image: `fetcherImage`, or `worker_image` when it is absent or the legacy
    /// default ([`LEGACY_FETCHER_IMAGE`]).
    pub fn fetcher_image<'a>(&'a self, worker_image: &'a str) -> &'a str {
        match self.fetcher_image.as_deref() {
            Some(image) if image != LEGACY_FETCHER_IMAGE => image,
            _ => worker_image,
        }
    }
}

/// The shared model cache of a `uri` source.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelCacheSpec {
    /// A ReadWriteMany PersistentVolumeClaim in the LynxDeployment's namespace: the Job writes
    /// to it, the workers read it.
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: String,
}

fn default_true() -> bool {
    true
}

/// On-disk layout of a model directory (see `lynx-worker convert`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModelLayout {
    /// The official release checkpoint with its YAML config.
    #[default]
    Release,
    /// The safetensors layout written by `lynx-worker convert`.
    Converted,
}

/// Compute dtype of the weights.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModelDtype {
    /// 32-bit float.
    F32,
    /// 16-bit IEEE float.
    F16,
    /// bfloat16.
    #[default]
    Bf16,
}
