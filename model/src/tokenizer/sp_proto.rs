//! The few SentencePiece protobuf messages / fields this module needs
//! (`sentencepiece_model.proto`, proto2), decoded with `prost` derive macros (no protoc).
//! Unknown fields are skipped.

/// `ModelProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelProto {
    /// `repeated SentencePiece pieces = 1`.
    #[prost(message, repeated, tag = "1")]
    pub pieces: Vec<SentencePiece>,
    /// `optional TrainerSpec trainer_spec = 2`.
    #[prost(message, optional, tag = "2")]
    pub trainer_spec: Option<TrainerSpec>,
    /// `optional NormalizerSpec normalizer_spec = 3`.
    #[prost(message, optional, tag = "3")]
    pub normalizer_spec: Option<NormalizerSpec>,
    /// `optional NormalizerSpec denormalizer_spec = 5`.
    #[prost(message, optional, tag = "5")]
    pub denormalizer_spec: Option<NormalizerSpec>,
}

/// `ModelProto.SentencePiece`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SentencePiece {
    /// `optional string piece = 1`.
    #[prost(string, optional, tag = "1")]
    pub piece: Option<String>,
    /// `optional float score = 2`.
    #[prost(float, optional, tag = "2")]
    pub score: Option<f32>,
    /// `optional Type type = 3 [default = NORMAL]`.
    #[prost(int32, optional, tag = "3")]
    pub r#type: Option<i32>,
}

/// `TrainerSpec` (subset).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TrainerSpec {
    /// `optional ModelType model_type = 3 [default = UNIGRAM]`.
    #[prost(int32, optional, tag = "3")]
    pub model_type: Option<i32>,
    /// `optional bool treat_whitespace_as_suffix = 24 [default = false]`.
    #[prost(bool, optional, tag = "24")]
    pub treat_whitespace_as_suffix: Option<bool>,
    /// `optional bool byte_fallback = 35 [default = false]`.
    #[prost(bool, optional, tag = "35")]
    pub byte_fallback: Option<bool>,
}

/// `NormalizerSpec` (subset).
#[derive(Clone, PartialEq, prost::Message)]
pub struct NormalizerSpec {
    /// `optional string name = 1`.
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// `optional bytes precompiled_charsmap = 2`.
    #[prost(bytes = "vec", optional, tag = "2")]
    pub precompiled_charsmap: Option<Vec<u8>>,
    /// `optional bool add_dummy_prefix = 3 [default = true]`.
    #[prost(bool, optional, tag = "3")]
    pub add_dummy_prefix: Option<bool>,
    /// `optional bool remove_extra_whitespaces = 4 [default = true]`.
    #[prost(bool, optional, tag = "4")]
    pub remove_extra_whitespaces: Option<bool>,
    /// `optional bool escape_whitespaces = 5 [default = true]`.
    #[prost(bool, optional, tag = "5")]
    pub escape_whitespaces: Option<bool>,
    /// `optional string normalization_rule_tsv = 6`.
    #[prost(string, optional, tag = "6")]
    pub normalization_rule_tsv: Option<String>,
}

/// `SentencePiece.Type.NORMAL`.
pub const TYPE_NORMAL: i32 = 1;
/// `SentencePiece.Type.UNKNOWN`.
pub const TYPE_UNKNOWN: i32 = 2;
/// `SentencePiece.Type.CONTROL`.
pub const TYPE_CONTROL: i32 = 3;
/// `SentencePiece.Type.USER_DEFINED`.
pub const TYPE_USER_DEFINED: i32 = 4;
/// `SentencePiece.Type.UNUSED`.
pub const TYPE_UNUSED: i32 = 5;
/// `SentencePiece.Type.BYTE`.
pub const TYPE_BYTE: i32 = 6;
/// `TrainerSpec.ModelType.UNIGRAM` (the proto default).
pub const MODEL_UNIGRAM: i32 = 1;
/// `TrainerSpec.ModelType.BPE`.
pub const MODEL_BPE: i32 = 2;
