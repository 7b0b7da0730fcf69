//! LLaMA / Vicuna tokenizer of the Lynx model.
//!
//! Reproduces the HF transformers 4.28 *slow* `LlamaTokenizer` (SentencePiece BPE, "legacy"
//! behaviour) as used by the official Lynx code (`models/llms/llama/tokenization_llama.py` and
//! `dataset/tokenizers/__init__.py`), on top of a [`tokenizers::Tokenizer`]:
//!
//! * [`LynxTokenizer::tokenize`] splits the text on the added / special tokens (`<s>`, `</s>`,
//!   `<unk>`, `[PAD]`), stripping the whitespace around them as the slow tokenizer does, then
//!   SentencePiece-encodes every remaining chunk on its own (dummy prefix `▁` per chunk, spaces
//!   escaped to `▁`, BPE by piece score, byte fallback `<0xNN>`).
//! * [`LynxTokenizer::decode`] follows `PreTrainedTokenizer._decode` +
//!   `LlamaTokenizer.convert_tokens_to_string` + `SentencePieceProcessor::Decode` (only the first
//!   leading `▁` of a SentencePiece run is dropped; byte pieces are joined and decoded as UTF-8, every
//!   structurally invalid byte becoming one U+FFFD).
//!
//! The BPE model is the SentencePiece vocabulary with merges derived from it: every split of a
//! normal piece into two normal pieces is a merge, ranked by the score of the merged piece (highest
//! first). The normalizer is `Prepend("▁")` + `Replace(" ", "▁")`, there is no pre-tokenizer, and
//! the special tokens are added special tokens (not normalized) carrying the strip flags of the
//! slow tokenizer.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip as DecoderStrip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, Model, NormalizerWrapper, PaddingDirection, PaddingParams, PaddingStrategy,
    Tokenizer,
};

/// The SentencePiece meta symbol that stands for a space.
const SPIECE_UNDERLINE: &str = "\u{2581}";
/// Pad token added by the official Lynx code when the tokenizer has none.
const DEFAULT_PAD_TOKEN: &str = "[PAD]";
/// Default SentencePiece surface of the unknown piece (`TrainerSpec.unk_surface`).
const DEFAULT_UNK_SURFACE: &str = " \u{2047} ";

/// Errors raised while building, loading or saving a [`LynxTokenizer`], or while encoding text.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A file could not be read or written.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// `"read"` or `"write"`.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// An error about the content of a specific file.
    #[error("{}: {source}", path.display())]
    InFile {
        /// The file whose content is wrong.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: Box<TokenizerError>,
    },
    /// The bytes are not a protobuf-encoded SentencePiece `ModelProto` (e.g. a truncated file).
    #[error("not a valid SentencePiece ModelProto: {0}")]
    ModelProto(#[from] prost::DecodeError),
    /// The `ModelProto` decodes but its content is inconsistent (empty or duplicated pieces,
    /// unknown piece types, no unknown piece, malformed byte piece...).
    #[error("invalid SentencePiece model: {0}")]
    InvalidModel(String),
    /// A valid SentencePiece model using a feature this tokenizer does not reproduce (model type
    /// other than BPE, normalization rules, user-defined pieces...).
    #[error("unsupported SentencePiece model: {0}")]
    Unsupported(String),
    /// A JSON configuration file (`special_tokens_map.json`, `tokenizer_config.json`) is not
    /// valid JSON.
    #[error("invalid JSON in {}: {source}", path.display())]
    Json {
        /// The JSON file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A special token entry of a JSON configuration file has an unexpected shape.
    #[error("invalid entry `{key}` in {}: {reason}", path.display())]
    InvalidSpecialToken {
        /// The JSON file.
        path: PathBuf,
        /// The key (`bos_token`, `pad_token`, ...).
        key: String,
        /// What is wrong with the value.
        reason: String,
    },
    /// Neither `tokenizer.json` nor `tokenizer.model` exists in the directory.
    #[error("no tokenizer.json or tokenizer.model in {}", dir.display())]
    NoTokenizerFile {
        /// The directory searched.
        dir: PathBuf,
    },
    /// A required special token (BOS, EOS, UNK) is not in the vocabulary.
    #[error("the {role} token `{token}` is not in the vocabulary")]
    MissingSpecialToken {
        /// `"bos"`, `"eos"` or `"unk"`.
        role: &'static str,
        /// The token text looked for.
        token: String,
    },
    /// An error reported by the `tokenizers` crate.
    #[error("tokenizers error while {context}: {source}")]
    Tokenizers {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: tokenizers::Error,
    },
}

impl TokenizerError {
    fn in_file(self, path: &Path) -> Self {
        TokenizerError::InFile {
            path: path.to_path_buf(),
            source: Box::new(self),
        }
    }

    fn tokenizers(context: impl Into<String>, source: tokenizers::Error) -> Self {
        TokenizerError::Tokenizers {
            context: context.into(),
            source,
        }
    }
}

/// The few SentencePiece protobuf messages / fields this module needs
/// (`sentencepiece_model.proto`, proto2). Unknown fields are skipped by `prost`.
pub mod sp_proto {
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
}

/// A special token as the slow tokenizer sees it: its text and whether the whitespace on its
/// left / right is stripped from the neighbouring text.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SpecialSpec {
    content: String,
    lstrip: bool,
    rstrip: bool,
}

impl SpecialSpec {
    /// A special token given as a plain string: HF 4.28 strips both sides.
    fn plain(content: &str) -> Self {
        SpecialSpec {
            content: content.to_string(),
            lstrip: true,
            rstrip: true,
        }
    }

    /// An `AddedToken(content, lstrip=False, rstrip=False)`.
    fn no_strip(content: &str) -> Self {
        SpecialSpec {
            content: content.to_string(),
            lstrip: false,
            rstrip: false,
        }
    }
}

/// The special tokens of the slow tokenizer after `from_pretrained` + the Lynx `[PAD]` addition.
#[derive(Debug, Clone)]
struct SpecialConfig {
    bos: SpecialSpec,
    eos: SpecialSpec,
    unk: SpecialSpec,
    pad: Option<SpecialSpec>,
    additional: Vec<SpecialSpec>,
}

impl SpecialConfig {
    /// bos / eos / unk as plain strings (a FastChat-style `special_tokens_map.json`), and the
    /// given pad token, if any, as a plain string.
    fn plain(pad_token: Option<&str>) -> Self {
        SpecialConfig {
            bos: SpecialSpec::plain("<s>"),
            eos: SpecialSpec::plain("</s>"),
            unk: SpecialSpec::plain("<unk>"),
            pad: pad_token.map(SpecialSpec::plain),
            additional: Vec::new(),
        }
    }

    /// Special tokens in the order HF registers them (`SPECIAL_TOKENS_ATTRIBUTES` order).
    fn ordered(&self) -> Vec<&SpecialSpec> {
        let mut all = vec![&self.bos, &self.eos, &self.unk];
        all.extend(self.pad.as_ref());
        all.extend(self.additional.iter());
        all
    }
}

/// A special token value of a JSON configuration file.
struct TokenValue {
    content: String,
    /// `(lstrip, rstrip)` of an AddedToken object; `None` for a plain string.
    flags: Option<(bool, bool)>,
}

impl TokenValue {
    /// The token with its flags, or `plain_flags` for a plain string.
    fn into_spec(self, plain_flags: (bool, bool)) -> SpecialSpec {
        let (lstrip, rstrip) = self.flags.unwrap_or(plain_flags);
        SpecialSpec {
            content: self.content,
            lstrip,
            rstrip,
        }
    }
}

/// A parsed JSON configuration file (`special_tokens_map.json` or `tokenizer_config.json`).
struct JsonConfig {
    path: PathBuf,
    value: serde_json::Value,
}

impl JsonConfig {
    fn read_optional(path: PathBuf) -> Result<Option<Self>, TokenizerError> {
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|source| TokenizerError::Io {
            op: "read",
            path: path.clone(),
            source,
        })?;
        let value = serde_json::from_str(&text).map_err(|source| TokenizerError::Json {
            path: path.clone(),
            source,
        })?;
        Ok(Some(JsonConfig { path, value }))
    }

    fn invalid(&self, key: &str, reason: &str) -> TokenizerError {
        TokenizerError::InvalidSpecialToken {
            path: self.path.clone(),
            key: key.to_string(),
            reason: reason.to_string(),
        }
    }

    /// Parses one token value: a string, an AddedToken object or null (`None`).
    fn token_value(
        &self,
        key: &str,
        value: &serde_json::Value,
    ) -> Result<Option<TokenValue>, TokenizerError> {
        match value {
            serde_json::Value::Null => Ok(None),
            serde_json::Value::String(s) => Ok(Some(TokenValue {
                content: s.clone(),
                flags: None,
            })),
            serde_json::Value::Object(map) => {
                let content = map
                    .get("content")
                    .and_then(serde_json::Value::as_str)
                    .ok_or_else(|| {
                        self.invalid(key, "AddedToken object without a string `content`")
                    })?;
                let flag = |name: &str| -> Result<bool, TokenizerError> {
                    match map.get(name) {
                        None | Some(serde_json::Value::Null) => Ok(false),
                        Some(serde_json::Value::Bool(b)) => Ok(*b),
                        Some(_) => Err(self.invalid(key, &format!("`{name}` is not a boolean"))),
                    }
                };
                Ok(Some(TokenValue {
                    content: content.to_string(),
                    flags: Some((flag("lstrip")?, flag("rstrip")?)),
                }))
            }
            _ => Err(self.invalid(key, "expected a string, an AddedToken object or null")),
        }
    }

    fn get(&self, key: &str) -> Option<&serde_json::Value> {
        self.value.get(key)
    }
}

/// Resolves the special tokens as HF 4.28 `LlamaTokenizer.from_pretrained` (with the Lynx copy of
/// `tokenization_llama.py`) followed by the Lynx `[PAD]` addition would.
///
/// * `tokenizer_config.json` values are passed to `__init__`, which wraps plain strings into
///   `AddedToken(lstrip=False, rstrip=False)`; defaults are `<s>`, `</s>`, `<unk>`, no pad.
/// * `special_tokens_map.json` values then override them with `setattr`: a plain string is kept as
///   a string, which `tokenize` strips on both sides; a dict becomes an `AddedToken` with its flags.
/// * Without a pad token, `"[PAD]"` is added as a plain-string special token.
fn resolve_special_config(
    map: Option<&JsonConfig>,
    config: Option<&JsonConfig>,
) -> Result<SpecialConfig, TokenizerError> {
    let resolve =
        |key: &str, default: Option<&str>| -> Result<Option<SpecialSpec>, TokenizerError> {
            // special_tokens_map.json (setattr): plain strings are stripped on both sides.
            if let Some(map) = map {
                if let Some(value) = map.get(key) {
                    if let Some(token) = map.token_value(key, value)? {
                        return Ok(Some(token.into_spec((true, true))));
                    }
                }
            }
            // tokenizer_config.json (__init__): plain strings become non-stripping AddedTokens.
            if let Some(config) = config {
                if let Some(value) = config.get(key) {
                    if let Some(token) = config.token_value(key, value)? {
                        return Ok(Some(token.into_spec((false, false))));
                    }
                }
            }
            Ok(default.map(SpecialSpec::no_strip))
        };
    let required = |key: &str, default: &str| -> Result<SpecialSpec, TokenizerError> {
        Ok(resolve(key, Some(default))?.unwrap_or_else(|| SpecialSpec::no_strip(default)))
    };
    let bos = required("bos_token", "<s>")?;
    let eos = required("eos_token", "</s>")?;
    let unk = required("unk_token", "<unk>")?;
    let pad = resolve("pad_token", None)?.unwrap_or_else(|| SpecialSpec::plain(DEFAULT_PAD_TOKEN));

    let mut additional = Vec::new();
    let source = [map, config].into_iter().flatten().find(|c| {
        c.get("additional_special_tokens")
            .is_some_and(|v| !v.is_null())
    });
    if let Some(cfg) = source {
        let key = "additional_special_tokens";
        let list = cfg
            .get(key)
            .and_then(serde_json::Value::as_array)
            .ok_or_else(|| cfg.invalid(key, "expected a list"))?;
        for value in list {
            if let Some(token) = cfg.token_value(key, value)? {
                additional.push(token.into_spec((true, true)));
            }
        }
    }
    Ok(SpecialConfig {
        bos,
        eos,
        unk,
        pad: Some(pad),
        additional,
    })
}

/// Parses a byte piece `<0xNN>`.
fn parse_byte_piece(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// Python's `str.isspace` for one character (Rust's `char::is_whitespace` plus U+001C..U+001F).
fn is_python_whitespace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Builds the `tokenizers::Tokenizer` from a parsed SentencePiece model.
fn build_tokenizer(
    proto: &sp_proto::ModelProto,
    specials: &SpecialConfig,
) -> Result<Tokenizer, TokenizerError> {
    if proto.pieces.is_empty() {
        return Err(TokenizerError::InvalidModel("no pieces".to_string()));
    }
    let trainer = proto.trainer_spec.clone().unwrap_or_default();
    let model_type = trainer.model_type.unwrap_or(sp_proto::MODEL_UNIGRAM);
    if model_type != sp_proto::MODEL_BPE {
        return Err(TokenizerError::Unsupported(format!(
            "model_type {model_type} (only BPE = {} is supported)",
            sp_proto::MODEL_BPE
        )));
    }
    if trainer.treat_whitespace_as_suffix.unwrap_or(false) {
        return Err(TokenizerError::Unsupported(
            "treat_whitespace_as_suffix is set".to_string(),
        ));
    }
    let byte_fallback = trainer.byte_fallback.unwrap_or(false);

    let norm = proto.normalizer_spec.clone().unwrap_or_default();
    if norm
        .precompiled_charsmap
        .as_ref()
        .is_some_and(|m| !m.is_empty())
        || norm
            .normalization_rule_tsv
            .as_ref()
            .is_some_and(|t| !t.is_empty())
    {
        return Err(TokenizerError::Unsupported(format!(
            "normalization rules `{}` (only the identity normalizer is supported)",
            norm.name.as_deref().unwrap_or("")
        )));
    }
    if norm.remove_extra_whitespaces.unwrap_or(true) {
        return Err(TokenizerError::Unsupported(
            "remove_extra_whitespaces is set".to_string(),
        ));
    }
    if !norm.escape_whitespaces.unwrap_or(true) {
        return Err(TokenizerError::Unsupported(
            "escape_whitespaces is not set".to_string(),
        ));
    }
    let add_dummy_prefix = norm.add_dummy_prefix.unwrap_or(true);
    if let Some(denorm) = &proto.denormalizer_spec {
        if denorm
            .precompiled_charsmap
            .as_ref()
            .is_some_and(|m| !m.is_empty())
            || denorm
                .normalization_rule_tsv
                .as_ref()
                .is_some_and(|t| !t.is_empty())
        {
            return Err(TokenizerError::Unsupported(
                "a denormalizer is defined".to_string(),
            ));
        }
    }

    let mut vocab: HashMap<String, u32> = HashMap::with_capacity(proto.pieces.len());
    // Normal pieces: id and score (the merge candidates of SentencePiece BPE).
    let mut normal: HashMap<&str, (u32, f32)> = HashMap::new();
    let mut unk_piece: Option<&str> = None;
    for (index, sp) in proto.pieces.iter().enumerate() {
        let id = u32::try_from(index)
            .map_err(|_| TokenizerError::InvalidModel("too many pieces".to_string()))?;
        let piece = sp.piece.as_deref().unwrap_or("");
        if piece.is_empty() {
            return Err(TokenizerError::InvalidModel(format!("piece {id} is empty")));
        }
        if vocab.insert(piece.to_string(), id).is_some() {
            return Err(TokenizerError::InvalidModel(format!(
                "piece `{piece}` (id {id}) is duplicated"
            )));
        }
        match sp.r#type.unwrap_or(sp_proto::TYPE_NORMAL) {
            sp_proto::TYPE_NORMAL => {
                normal.insert(piece, (id, sp.score.unwrap_or(0.0)));
            }
            sp_proto::TYPE_UNKNOWN => {
                if let Some(first) = unk_piece {
                    return Err(TokenizerError::InvalidModel(format!(
                        "two unknown pieces `{first}` and `{piece}`"
                    )));
                }
                unk_piece = Some(piece);
            }
            sp_proto::TYPE_CONTROL => {}
            sp_proto::TYPE_BYTE => {
                if parse_byte_piece(piece).is_none() {
                    return Err(TokenizerError::InvalidModel(format!(
                        "byte piece {id} `{piece}` is not of the form <0xNN>"
                    )));
                }
            }
            sp_proto::TYPE_USER_DEFINED => {
                return Err(TokenizerError::Unsupported(format!(
                    "user-defined piece {id} `{piece}`"
                )));
            }
            sp_proto::TYPE_UNUSED => {
                return Err(TokenizerError::Unsupported(format!(
                    "unused piece {id} `{piece}`"
                )));
            }
            other => {
                return Err(TokenizerError::InvalidModel(format!(
                    "piece {id} `{piece}` has unknown type {other}"
                )));
            }
        }
    }
    let unk_piece =
        unk_piece.ok_or_else(|| TokenizerError::InvalidModel("no unknown piece".to_string()))?;

    // SentencePiece BPE merges the adjacent pair whose concatenation is the normal piece with the
    // highest score. Every split of a normal piece into two normal pieces is a merge, ranked by
    // the score of the merged piece (then its id, then the left part's id, for determinism).
    let mut ranked: Vec<(f32, u32, u32, &str, &str)> = Vec::new();
    for (&piece, &(id, score)) in &normal {
        for (split, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(split);
            if let (Some(&(left_id, _)), Some(_)) = (normal.get(left), normal.get(right)) {
                ranked.push((score, id, left_id, left, right));
            }
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let merges: Vec<(String, String)> = ranked
        .into_iter()
        .map(|(_, _, _, l, r)| (l.to_string(), r.to_string()))
        .collect();

    let bpe = BPE::builder()
        .vocab_and_merges(vocab.into_iter().collect::<Vocab>(), merges)
        .unk_token(unk_piece.to_string())
        .byte_fallback(byte_fallback)
        .fuse_unk(true)
        .build()
        .map_err(|e| TokenizerError::tokenizers("building the BPE model", e))?;

    let mut tok = Tokenizer::new(bpe);
    let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
    if add_dummy_prefix {
        normalizers.push(Prepend::new(SPIECE_UNDERLINE.to_string()).into());
    }
    normalizers.push(
        Replace::new(" ", SPIECE_UNDERLINE)
            .map_err(|e| TokenizerError::tokenizers("building the normalizer", e))?
            .into(),
    );
    tok.with_normalizer(Some(NormalizerSequence::new(normalizers)));
    let decoders: Vec<DecoderWrapper> = vec![
        Replace::new(SPIECE_UNDERLINE, " ")
            .map_err(|e| TokenizerError::tokenizers("building the decoder", e))?
            .into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
        DecoderStrip::new(' ', usize::from(add_dummy_prefix), 0).into(),
    ];
    tok.with_decoder(Some(DecoderSequence::new(decoders)));

    let added: Vec<AddedToken> = specials
        .ordered()
        .into_iter()
        .map(|s| {
            AddedToken::from(s.content.clone(), true)
                .lstrip(s.lstrip)
                .rstrip(s.rstrip)
                .normalized(false)
        })
        .collect();
    tok.add_special_tokens(&added);

    // Lynx pads batches on the left; recording the pad token here also lets
    // `from_tokenizer_json` recover it.
    if let Some(pad) = &specials.pad {
        if let Some(pad_id) = tok.token_to_id(&pad.content) {
            tok.with_padding(Some(PaddingParams {
                strategy: PaddingStrategy::BatchLongest,
                direction: PaddingDirection::Left,
                pad_to_multiple_of: None,
                pad_id,
                pad_type_id: 0,
                pad_token: pad.content.clone(),
            }));
        }
    }

    // Like HF's LLaMA `tokenizer.json`: `encode(text, add_special_tokens=true)` prepends BOS.
    // `LynxTokenizer::encode` never adds it.
    if let Some(bos_id) = tok.token_to_id(&specials.bos.content) {
        let bos = specials.bos.content.clone();
        let template = TemplateProcessing::builder()
            .try_single(format!("{bos} $A:0"))
            .and_then(|b| b.try_pair(format!("{bos} $A:0 {bos} $B:1")))
            .map_err(|e| TokenizerError::InvalidModel(format!("BOS template: {e}")))?
            .special_tokens(vec![(bos.clone(), bos_id)])
            .build()
            .map_err(|e| TokenizerError::InvalidModel(format!("BOS template: {e}")))?;
        tok.with_post_processor(Some(template));
    }
    Ok(tok)
}

/// A token matched as a whole by `tokenize` (HF "no split" token): id and strip flags.
#[derive(Debug, Clone)]
struct SplitToken {
    content: String,
    id: u32,
    lstrip: bool,
    rstrip: bool,
}

/// One piece of text after splitting on the added tokens.
enum Chunk<'a> {
    Text(&'a str),
    Token(usize),
}

/// The LLaMA / Vicuna tokenizer of Lynx: HF transformers 4.28 slow `LlamaTokenizer` semantics on
/// top of a [`tokenizers::Tokenizer`].
#[derive(Debug, Clone)]
pub struct LynxTokenizer {
    tok: Tokenizer,
    bos: u32,
    eos: u32,
    unk: u32,
    pad: Option<u32>,
    /// id -> piece (or added token).
    pieces: HashMap<u32, String>,
    /// id -> byte value for the byte pieces `<0xNN>` of the model vocabulary.
    bytes: HashMap<u32, u8>,
    /// Added tokens that are not pieces of the model (HF `added_tokens_encoder`, e.g. `[PAD]`).
    added: HashSet<u32>,
    /// HF `all_special_ids`.
    special: HashSet<u32>,
    /// Tokens matched as a whole by `tokenize`, longest first.
    split_tokens: Vec<SplitToken>,
    /// SentencePiece `add_dummy_prefix` (decode drops the first leading `▁`).
    add_dummy_prefix: bool,
}

impl LynxTokenizer {
    /// Builds the tokenizer from a directory holding a SentencePiece `tokenizer.model` plus the
    /// optional `special_tokens_map.json` / `tokenizer_config.json`, as the official Lynx
    /// `build_tokenizer` does: `LlamaTokenizer.from_pretrained(dir)`, then `"[PAD]"` is added as a
    /// new special token (id = SentencePiece vocabulary size) when no pad token is defined.
    ///
    /// Special tokens given as plain strings in `special_tokens_map.json` strip the whitespace on
    /// both sides in [`tokenize`](Self::tokenize); AddedToken objects keep their `lstrip` /
    /// `rstrip` flags; tokens only defined in `tokenizer_config.json` (or not at all) strip nothing.
    pub fn from_sentencepiece_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let model_path = dir.join("tokenizer.model");
        let model = std::fs::read(&model_path).map_err(|source| TokenizerError::Io {
            op: "read",
            path: model_path.clone(),
            source,
        })?;
        let map = JsonConfig::read_optional(dir.join("special_tokens_map.json"))?;
        let config = JsonConfig::read_optional(dir.join("tokenizer_config.json"))?;
        let specials = resolve_special_config(map.as_ref(), config.as_ref())?;
        Self::from_sentencepiece_config(&model, &specials).map_err(|e| e.in_file(&model_path))
    }

    /// Builds the tokenizer from the bytes of a SentencePiece `tokenizer.model` (a BPE model
    /// with the identity normalizer, like LLaMA's). `<s>`, `</s>` and `<unk>` are special tokens
    /// given as plain strings (whitespace stripped on both sides by [`tokenize`](Self::tokenize),
    /// as with a FastChat-style `special_tokens_map.json`); `pad_token`, if given, is added the
    /// same way, with a new id after the vocabulary when it is not a piece.
    pub fn from_sentencepiece_bytes(
        model: &[u8],
        pad_token: Option<&str>,
    ) -> Result<Self, TokenizerError> {
        Self::from_sentencepiece_config(model, &SpecialConfig::plain(pad_token))
    }

    fn from_sentencepiece_config(
        model: &[u8],
        specials: &SpecialConfig,
    ) -> Result<Self, TokenizerError> {
        let proto = <sp_proto::ModelProto as prost::Message>::decode(model)?;
        let tok = build_tokenizer(&proto, specials)?;
        Self::from_tokenizer_with_names(
            tok,
            &specials.bos.content,
            &specials.eos.content,
            &specials.unk.content,
            specials.pad.as_ref().map(|p| p.content.as_str()),
        )
    }

    /// Loads a `tokenizer.json` written by [`save_json`](Self::save_json) (or by HF for a LLaMA
    /// tokenizer). The BOS / EOS / UNK / pad tokens are taken from a `special_tokens_map.json`
    /// next to the file when there is one, else they are `<s>`, `</s>` and `<unk>`, and the pad
    /// token is the one of the padding parameters stored in the file (written by `save_json`),
    /// else `[PAD]` when present (no pad token is added). Added tokens keep the strip flags stored
    /// in the file.
    pub fn from_tokenizer_json(path: &Path) -> Result<Self, TokenizerError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenizerError::Io {
            op: "read",
            path: path.to_path_buf(),
            source,
        })?;
        let tok: Tokenizer = text
            .parse()
            .map_err(|e| TokenizerError::tokenizers("parsing tokenizer.json", e).in_file(path))?;
        let map = match path.parent() {
            Some(dir) => JsonConfig::read_optional(dir.join("special_tokens_map.json"))?,
            None => None,
        };
        let name = |key: &str| -> Result<Option<String>, TokenizerError> {
            match &map {
                Some(map) => match map.get(key) {
                    Some(value) => Ok(map.token_value(key, value)?.map(|t| t.content)),
                    None => Ok(None),
                },
                None => Ok(None),
            }
        };
        let bos = name("bos_token")?.unwrap_or_else(|| "<s>".to_string());
        let eos = name("eos_token")?.unwrap_or_else(|| "</s>".to_string());
        let unk = name("unk_token")?.unwrap_or_else(|| "<unk>".to_string());
        let pad = name("pad_token")?;
        Self::from_tokenizer_with_names(tok, &bos, &eos, &unk, pad.as_deref())
            .map_err(|e| e.in_file(path))
    }

    /// Loads `tokenizer.json` from `dir` if present (see
    /// [`from_tokenizer_json`](Self::from_tokenizer_json)), else `tokenizer.model` (see
    /// [`from_sentencepiece_dir`](Self::from_sentencepiece_dir)).
    pub fn from_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            return Self::from_tokenizer_json(&json);
        }
        if dir.join("tokenizer.model").is_file() {
            return Self::from_sentencepiece_dir(dir);
        }
        Err(TokenizerError::NoTokenizerFile {
            dir: dir.to_path_buf(),
        })
    }

    /// Wraps an already-built `tokenizers::Tokenizer` (e.g. a generated toy tokenizer). BOS, EOS
    /// and UNK are `<s>`, `</s>` and `<unk>` (which must exist); the pad token is the one of the
    /// tokenizer's padding parameters, else `[PAD]` if the vocabulary has it. Special ids are
    /// these plus every added token marked special; every added token is matched whole by
    /// [`tokenize`](Self::tokenize), with its own `lstrip` / `rstrip` flags.
    pub fn from_tokenizer(tok: Tokenizer) -> Result<Self, TokenizerError> {
        Self::from_tokenizer_with_names(tok, "<s>", "</s>", "<unk>", None)
    }

    fn from_tokenizer_with_names(
        tok: Tokenizer,
        bos: &str,
        eos: &str,
        unk: &str,
        pad: Option<&str>,
    ) -> Result<Self, TokenizerError> {
        let lookup = |role: &'static str, token: &str| {
            tok.token_to_id(token)
                .ok_or_else(|| TokenizerError::MissingSpecialToken {
                    role,
                    token: token.to_string(),
                })
        };
        let bos_id = lookup("bos", bos)?;
        let eos_id = lookup("eos", eos)?;
        let unk_id = lookup("unk", unk)?;
        // Pad: the given name, else the tokenizer's padding parameters, else `[PAD]` if present.
        let pad_id = match pad {
            Some(p) => tok.token_to_id(p),
            None => tok
                .get_padding()
                .and_then(|params| tok.token_to_id(&params.pad_token))
                .or_else(|| tok.token_to_id(DEFAULT_PAD_TOKEN)),
        };

        let model = tok.get_model();
        let mut pieces: HashMap<u32, String> = HashMap::new();
        let mut bytes: HashMap<u32, u8> = HashMap::new();
        for (piece, id) in model.get_vocab() {
            if let Some(byte) = parse_byte_piece(&piece) {
                bytes.insert(id, byte);
            }
            pieces.insert(id, piece);
        }
        let mut special: HashSet<u32> = [bos_id, eos_id, unk_id].into_iter().collect();
        special.extend(pad_id);
        let mut added = HashSet::new();
        let added_tokens = tok.get_added_tokens_decoder();
        let mut split_tokens = Vec::with_capacity(added_tokens.len());
        for (&id, token) in &added_tokens {
            if model.token_to_id(&token.content) != Some(id) {
                added.insert(id);
                bytes.remove(&id);
            }
            // The added token's content wins, as in `Tokenizer::id_to_token`.
            pieces.insert(id, token.content.clone());
            if token.special {
                special.insert(id);
            }
            if !token.content.is_empty() {
                split_tokens.push(SplitToken {
                    content: token.content.clone(),
                    id,
                    lstrip: token.lstrip,
                    rstrip: token.rstrip,
                });
            }
        }
        // Longest first, so that the first match at a position is the longest one.
        split_tokens.sort_by(|a, b| {
            b.content
                .len()
                .cmp(&a.content.len())
                .then(a.content.cmp(&b.content))
        });
        let add_dummy_prefix = match tok.get_normalizer() {
            Some(n) => serde_json::to_string(n)
                .map(|s| s.contains("Prepend") || s.contains("Metaspace"))
                .unwrap_or(true),
            None => true,
        };
        Ok(LynxTokenizer {
            tok,
            bos: bos_id,
            eos: eos_id,
            unk: unk_id,
            pad: pad_id,
            pieces,
            bytes,
            added,
            special,
            split_tokens,
            add_dummy_prefix,
        })
    }

    /// Writes the tokenizer as a `tokenizer.json` (pretty-printed), readable by
    /// [`from_tokenizer_json`](Self::from_tokenizer_json) and by HF `tokenizers`.
    pub fn save_json(&self, path: &Path) -> Result<(), TokenizerError> {
        let json = self
            .tok
            .to_string(true)
            .map_err(|e| TokenizerError::tokenizers("serializing the tokenizer", e))?;
        std::fs::write(path, json).map_err(|source| TokenizerError::Io {
            op: "write",
            path: path.to_path_buf(),
            source,
        })
    }

    /// Splits `text` on the added tokens as HF 4.28 `PreTrainedTokenizer.tokenize` does
    /// (leftmost-longest match, then `rstrip` / `lstrip` of the neighbouring text chunks with
    /// Python's notion of whitespace; emptied chunks are dropped).
    fn split_on_added<'t>(&self, text: &'t str) -> Vec<Chunk<'t>> {
        let mut raw: Vec<Chunk<'t>> = Vec::new();
        let mut start = 0;
        let mut pos = 0;
        while pos < text.len() {
            let rest = &text[pos..];
            if let Some(index) = self
                .split_tokens
                .iter()
                .position(|t| rest.starts_with(t.content.as_str()))
            {
                if start < pos {
                    raw.push(Chunk::Text(&text[start..pos]));
                }
                raw.push(Chunk::Token(index));
                pos += self.split_tokens[index].content.len();
                start = pos;
            } else {
                pos += rest.chars().next().map_or(1, char::len_utf8);
            }
        }
        if start < text.len() {
            raw.push(Chunk::Text(&text[start..]));
        }
        for i in 0..raw.len() {
            if let Chunk::Token(index) = raw[i] {
                let token = &self.split_tokens[index];
                if token.rstrip {
                    if let Some(Chunk::Text(right)) = raw.get_mut(i + 1) {
                        *right = right.trim_start_matches(is_python_whitespace);
                    }
                }
                if token.lstrip && i > 0 {
                    if let Some(Chunk::Text(left)) = raw.get_mut(i - 1) {
                        *left = left.trim_end_matches(is_python_whitespace);
                    }
                }
            }
        }
        raw.retain(|c| !matches!(c, Chunk::Text(t) if t.is_empty()));
        raw
    }

    /// Tokenizes `text` into (id, piece) pairs, without BOS.
    fn encode_pieces(&self, text: &str) -> Result<Vec<(u32, String)>, TokenizerError> {
        let mut out = Vec::new();
        for chunk in self.split_on_added(text) {
            match chunk {
                Chunk::Token(index) => {
                    let token = &self.split_tokens[index];
                    out.push((token.id, token.content.clone()));
                }
                Chunk::Text(chunk) => {
                    let encoding = self
                        .tok
                        .encode(chunk, false)
                        .map_err(|e| TokenizerError::tokenizers("encoding text", e))?;
                    out.extend(
                        encoding
                            .get_ids()
                            .iter()
                            .copied()
                            .zip(encoding.get_tokens().iter().cloned()),
                    );
                }
            }
        }
        Ok(out)
    }

    /// HF `tokenize(text)`: the SentencePiece pieces of `text` (special tokens kept whole), no BOS.
    pub fn tokenize(&self, text: &str) -> Result<Vec<String>, TokenizerError> {
        Ok(self
            .encode_pieces(text)?
            .into_iter()
            .map(|(_, piece)| piece)
            .collect())
    }

    /// The ids of [`tokenize`](Self::tokenize) (`convert_tokens_to_ids(tokenize(text))`), no BOS.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        Ok(self
            .encode_pieces(text)?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }

    /// HF 4.28 `decode(ids, skip_special_tokens)` (`clean_up_tokenization_spaces=False`).
    ///
    /// With `skip_special_tokens`, the special ids (BOS, EOS, UNK, pad) are dropped and the rest
    /// is SentencePiece-decoded: pieces concatenated, `▁` -> space, only the first leading space
    /// dropped, runs of byte pieces decoded as UTF-8 with one U+FFFD per structurally invalid byte.
    /// Without it, special tokens are written as their text (`LlamaTokenizer.
    /// convert_tokens_to_string`: a space before a special token unless it is first or follows a
    /// special token) and added tokens such as `[PAD]` are joined to their neighbours with spaces.
    /// Ids outside the vocabulary are ignored.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> String {
        let mut sub_texts: Vec<String> = Vec::new();
        let mut current: Vec<u32> = Vec::new();
        for &id in ids {
            if self.piece(id).is_none() || (skip_special_tokens && self.special.contains(&id)) {
                continue;
            }
            if self.added.contains(&id) {
                // An added token that is not a SentencePiece piece.
                if !current.is_empty() {
                    sub_texts.push(self.convert_tokens_to_string(&current));
                    current.clear();
                }
                sub_texts.push(self.piece(id).unwrap_or_default().to_string());
            } else {
                current.push(id);
            }
        }
        if !current.is_empty() {
            sub_texts.push(self.convert_tokens_to_string(&current));
        }
        sub_texts.join(" ")
    }

    /// `LlamaTokenizer.convert_tokens_to_string` of the Lynx copy of `tokenization_llama.py`.
    fn convert_tokens_to_string(&self, ids: &[u32]) -> String {
        let mut out = String::new();
        let mut sub: Vec<u32> = Vec::new();
        let mut prev_is_special = false;
        for (i, &id) in ids.iter().enumerate() {
            if self.special.contains(&id) {
                if !prev_is_special && i != 0 {
                    out.push(' ');
                }
                out.push_str(&self.sp_decode(&sub));
                out.push_str(self.piece(id).unwrap_or_default());
                prev_is_special = true;
                sub.clear();
            } else {
                sub.push(id);
                prev_is_special = false;
            }
        }
        out.push_str(&self.sp_decode(&sub));
        out
    }

    /// `SentencePieceProcessor::Decode` of a list of pieces.
    fn sp_decode(&self, ids: &[u32]) -> String {
        let mut text = String::new();
        let mut byte_run: Vec<u8> = Vec::new();
        let mut is_bos_ws = true;
        let mut bos_ws_seen = false;
        for &id in ids {
            if let Some(&byte) = self.bytes.get(&id) {
                byte_run.push(byte);
                continue;
            }
            push_sp_bytes(&mut text, &byte_run);
            byte_run.clear();
            if bos_ws_seen || !text.is_empty() {
                is_bos_ws = false;
            }
            let piece = self.piece(id).unwrap_or_default();
            bos_ws_seen = false;
            if id == self.unk {
                text.push_str(DEFAULT_UNK_SURFACE);
            } else if self.special.contains(&id) {
                // Control symbols are invisible.
            } else {
                let mut piece = piece;
                if is_bos_ws && self.add_dummy_prefix {
                    if let Some(rest) = piece.strip_prefix(SPIECE_UNDERLINE) {
                        piece = rest;
                        bos_ws_seen = true;
                    }
                }
                text.push_str(&piece.replace(SPIECE_UNDERLINE, " "));
            }
        }
        push_sp_bytes(&mut text, &byte_run);
        text
    }

    fn piece(&self, id: u32) -> Option<&str> {
        self.pieces.get(&id).map(String::as_str)
    }

    /// The piece (or added token) of `id`, if any.
    pub fn id_to_piece(&self, id: u32) -> Option<String> {
        self.piece(id).map(str::to_string)
    }

    /// The id of a piece (or added token), if any.
    pub fn piece_to_id(&self, piece: &str) -> Option<u32> {
        self.tok.token_to_id(piece)
    }

    /// The BOS (`<s>`) id.
    pub fn bos_id(&self) -> u32 {
        self.bos
    }

    /// The EOS (`</s>`) id.
    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// The UNK (`<unk>`) id.
    pub fn unk_id(&self) -> u32 {
        self.unk
    }

    /// The pad id (`[PAD]` added by Lynx), if the tokenizer has a pad token.
    pub fn pad_id(&self) -> Option<u32> {
        self.pad
    }

    /// `len(tokenizer)`: the vocabulary size including added tokens (401 for the tiny fixture,
    /// 32001 for Vicuna-7B).
    pub fn len(&self) -> usize {
        self.tok.get_vocab_size(true)
    }

    /// Whether the vocabulary is empty (never true for a tokenizer that was built successfully).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The underlying `tokenizers::Tokenizer`. Its `encode(text, false)` matches
    /// [`encode`](Self::encode) except for Python-only whitespace (U+001C..U+001F) next to special
    /// tokens; its `decode` does not reproduce the SentencePiece handling of invalid UTF-8.
    pub fn inner(&self) -> &Tokenizer {
        &self.tok
    }
}

/// Appends a run of byte pieces as SentencePiece does: each maximal valid UTF-8 character is
/// copied, every other byte becomes one U+FFFD.
fn push_sp_bytes(text: &mut String, bytes: &[u8]) {
    let mut offset = 0;
    while offset < bytes.len() {
        let lead = bytes[offset];
        let width = match lead {
            0x00..=0x7f => 1,
            _ if lead & 0xe0 == 0xc0 => 2,
            _ if lead & 0xf0 == 0xe0 => 3,
            _ if lead & 0xf8 == 0xf0 => 4,
            _ => 0,
        };
        if width > 0 && offset + width <= bytes.len() {
            if let Ok(s) = std::str::from_utf8(&bytes[offset..offset + width]) {
                text.push_str(s);
                offset += width;
                continue;
            }
        }
        text.push('\u{FFFD}');
        offset += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const FIXTURE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/tiny");

    fn model_dir() -> PathBuf {
        Path::new(FIXTURE_DIR).join("model/vicuna-7b")
    }

    fn refs() -> Value {
        let path = Path::new(FIXTURE_DIR).join("refs/ref.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("fixture {} missing: {e}", path.display()));
        serde_json::from_str(&text).expect("ref.json is valid JSON")
    }

    fn fixture_tokenizer() -> LynxTokenizer {
        LynxTokenizer::from_sentencepiece_dir(&model_dir()).expect("fixture tokenizer loads")
    }

    fn ids_of(value: &Value) -> Vec<u32> {
        value
            .as_array()
            .expect("id list")
            .iter()
            .map(|v| u32::try_from(v.as_u64().expect("id")).expect("u32 id"))
            .collect()
    }

    fn strings_of(value: &Value) -> Vec<String> {
        value
            .as_array()
            .expect("string list")
            .iter()
            .map(|v| v.as_str().expect("string").to_string())
            .collect()
    }

    const CASES: [&str; 7] = [
        "image0",
        "image1",
        "image2",
        "image3",
        "image_batch_1_2_leftpad",
        "video0",
        "video1",
    ];

    /// Every text of the fixtures: tokenizer examples and prompts.
    fn fixture_texts(refs: &Value) -> Vec<String> {
        let mut texts: Vec<String> = refs["tokenizer_examples"]
            .as_array()
            .expect("tokenizer_examples")
            .iter()
            .map(|e| e["text"].as_str().expect("text").to_string())
            .collect();
        for case in CASES {
            if let Some(p) = refs[case]["prompt_text"].as_str() {
                texts.push(p.to_string());
            }
        }
        texts.extend(
            [
                "a </s> b",
                "a</s>b",
                "  two  spaces  ",
                "x<s>\n<unk>\t[PAD] y",
                "tabs\tand\u{1c}odd\u{1f}spaces </s>\u{1d}z",
                "",
                " ",
                "\n",
            ]
            .map(str::to_string),
        );
        texts
    }

    #[test]
    fn tokenizer_examples_match_reference() {
        let tok = fixture_tokenizer();
        let refs = refs();
        let examples = refs["tokenizer_examples"].as_array().expect("examples");
        assert!(!examples.is_empty());
        for example in examples {
            let text = example["text"].as_str().expect("text");
            let pieces = strings_of(&example["tokenize"]);
            let ids = ids_of(&example["ids"]);
            let decoded = example["decode_skip_special"].as_str().expect("decode");
            assert_eq!(
                tok.tokenize(text).expect("tokenize"),
                pieces,
                "tokenize {text:?}"
            );
            assert_eq!(tok.encode(text).expect("encode"), ids, "encode {text:?}");
            assert_eq!(tok.decode(&ids, true), decoded, "decode {text:?}");
            let mapped: Vec<String> = ids
                .iter()
                .map(|&id| tok.id_to_piece(id).expect("piece"))
                .collect();
            assert_eq!(mapped, pieces, "id_to_piece {text:?}");
            for (piece, id) in pieces.iter().zip(&ids) {
                assert_eq!(tok.piece_to_id(piece), Some(*id));
            }
        }
    }

    #[test]
    fn prompts_match_input_ids() {
        let tok = fixture_tokenizer();
        let refs = refs();
        let mut checked = 0;
        for case in CASES {
            let entry = &refs[case];
            let rows = entry["input_ids"].as_array().expect("input_ids rows");
            let token_rows = entry["input_tokens"].as_array().expect("input_tokens rows");
            assert_eq!(rows.len(), token_rows.len());
            for (row, tokens) in rows.iter().zip(token_rows) {
                let ids = ids_of(row);
                let mapped: Vec<String> = ids
                    .iter()
                    .map(|&id| tok.id_to_piece(id).expect("piece"))
                    .collect();
                assert_eq!(mapped, strings_of(tokens), "{case}: input_tokens");
            }
            if let Some(prompt) = entry["prompt_text"].as_str() {
                assert_eq!(rows.len(), 1);
                let mut expected = vec![tok.bos_id()];
                expected.extend(tok.encode(prompt).expect("encode"));
                assert_eq!(ids_of(&rows[0]), expected, "{case}: {prompt:?}");
                let mut pieces = vec!["<s>".to_string()];
                pieces.extend(tok.tokenize(prompt).expect("tokenize"));
                assert_eq!(strings_of(&entry["input_tokens"][0]), pieces);
                checked += 1;
            }
        }
        assert_eq!(checked, 6);

        // The left-padded batch holds the image1 and image2 prompts.
        let batch = refs["image_batch_1_2_leftpad"]["input_ids"]
            .as_array()
            .expect("batch");
        let pad = tok.pad_id().expect("pad");
        for (row, case) in batch.iter().zip(["image1", "image2"]) {
            let ids: Vec<u32> = ids_of(row)
                .into_iter()
                .skip_while(|&id| id == pad)
                .collect();
            assert_eq!(ids, ids_of(&refs[case]["input_ids"][0]));
        }

        // text_only_greedy: decoding the prompt and re-encoding it gives the same ids.
        let ids = ids_of(&refs["text_only_greedy"]["input_ids"]);
        let text = tok.decode(&ids, true);
        let mut again = vec![tok.bos_id()];
        again.extend(tok.encode(&text).expect("encode"));
        assert_eq!(again, ids, "{text:?}");
    }

    #[test]
    fn generated_texts_match_reference_decode() {
        let tok = fixture_tokenizer();
        let refs = refs();
        let mut checked = 0;
        for case in CASES {
            let entry = refs[case].as_object().expect("case");
            for (ids_key, text_key) in [("greedy_ids", "greedy_text"), ("beam5_ids", "beam5_text")]
            {
                let key = entry
                    .keys()
                    .find(|k| k.starts_with(&format!("{ids_key}(")))
                    .unwrap_or_else(|| panic!("{case}: no {ids_key}"));
                let rows = entry[key].as_array().expect("rows");
                let texts = strings_of(&entry[text_key]);
                assert_eq!(rows.len(), texts.len());
                for (row, text) in rows.iter().zip(&texts) {
                    let ids = ids_of(row);
                    assert_eq!(ids[0], tok.bos_id());
                    assert_eq!(&tok.decode(&ids, true), text, "{case} {key}");
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 16);
    }

    #[test]
    fn special_ids_and_len() {
        let tok = fixture_tokenizer();
        let refs = refs();
        let special = &refs["special_ids"];
        let get = |k: &str| u32::try_from(special[k].as_u64().expect(k)).expect("u32");
        assert_eq!(tok.bos_id(), get("bos"));
        assert_eq!(tok.eos_id(), get("eos"));
        assert_eq!(tok.unk_id(), get("unk"));
        assert_eq!(tok.pad_id(), Some(get("pad")));
        assert_eq!(
            tok.len(),
            special["len_tokenizer"].as_u64().expect("len") as usize
        );
        assert_eq!(tok.len(), 401);
        assert!(!tok.is_empty());
        assert_eq!(tok.id_to_piece(400).as_deref(), Some("[PAD]"));
        assert_eq!(tok.piece_to_id("[PAD]"), Some(400));
        assert_eq!(tok.id_to_piece(401), None);
        assert_eq!(tok.inner().get_vocab_size(false), 400);
    }

    #[test]
    fn special_tokens_strip_surrounding_whitespace() {
        let tok = fixture_tokenizer();
        for text in ["a </s> b", "a</s>b", "a \n</s>\t b"] {
            assert_eq!(
                tok.tokenize(text).expect("tokenize"),
                ["▁a", "</s>", "▁b"],
                "{text:?}"
            );
        }
        assert_eq!(
            tok.tokenize("</s> <s> [PAD] <unk>").expect("tokenize"),
            ["</s>", "<s>", "[PAD]", "<unk>"]
        );
        // Python's str.strip also strips U+001C..U+001F.
        assert_eq!(
            tok.tokenize("a\u{1f}</s>\u{1c}b").expect("tokenize"),
            ["▁a", "</s>", "▁b"]
        );
        assert_eq!(tok.encode("").expect("encode"), Vec::<u32>::new());
        assert_eq!(tok.encode("   ").expect("encode"), [347, 347, 347, 347]);
    }

    #[test]
    fn decode_without_skipping_special_tokens() {
        let tok = fixture_tokenizer();
        // "▁user" ":" -> "user:"
        assert_eq!(tok.decode(&[1, 271, 360, 2], false), "<s> user:</s>");
        assert_eq!(tok.decode(&[271, 360, 2], false), " user:</s>");
        assert_eq!(tok.decode(&[1, 2, 271], false), "<s></s>user");
        assert_eq!(tok.decode(&[0, 271], false), "<unk>user");
        // [PAD] is an added token: sub-texts are joined with spaces.
        assert_eq!(
            tok.decode(&[400, 400, 1, 271], false),
            "[PAD] [PAD] <s>user"
        );
        assert_eq!(tok.decode(&[271, 400, 360], false), "user [PAD] :");
        assert_eq!(tok.decode(&[400, 400, 1, 271, 2, 400], true), "user");
        // Unknown ids are ignored.
        assert_eq!(tok.decode(&[271, 5000], true), "user");
    }

    #[test]
    fn decode_sentencepiece_semantics() {
        let tok = fixture_tokenizer();
        let byte = |b: u8| u32::from(b) + 3;
        // Only the first leading "▁" is dropped.
        assert_eq!(tok.decode(&[347, 347, 271], true), "  user");
        assert_eq!(tok.decode(&[347, 271], true), " user");
        assert_eq!(tok.decode(&[271, 271], true), "user user");
        // A leading byte piece makes the text non-empty: later "▁" is kept.
        assert_eq!(tok.decode(&[byte(b'U'), 271], true), "U user");
        // Complete UTF-8 sequences are decoded.
        let smile = [byte(0xF0), byte(0x9F), byte(0x99), byte(0x82)];
        assert_eq!(tok.decode(&smile, true), "🙂");
        // A truncated sequence gives one U+FFFD per byte (SentencePiece), not one per sequence.
        assert_eq!(tok.decode(&smile[..3], true), "\u{FFFD}\u{FFFD}\u{FFFD}");
        assert_eq!(
            tok.decode(&[smile[0], smile[1], 348, smile[3]], true),
            "\u{FFFD}\u{FFFD}e\u{FFFD}"
        );
        // Overlong, surrogate and out-of-range encodings are invalid byte by byte.
        assert_eq!(
            tok.decode(&[byte(0xC0), byte(0x80)], true),
            "\u{FFFD}\u{FFFD}"
        );
        assert_eq!(
            tok.decode(&[byte(0xED), byte(0xA0), byte(0x80)], true),
            "\u{FFFD}\u{FFFD}\u{FFFD}"
        );
        assert_eq!(
            tok.decode(&[byte(0xF4), byte(0x90), byte(0x80), byte(0x80)], true),
            "\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}"
        );
        // U+FFFD itself, encoded, stays one character; runs are split by non-byte pieces.
        assert_eq!(
            tok.decode(&[byte(0xEF), byte(0xBF), byte(0xBD)], true),
            "\u{FFFD}"
        );
        assert_eq!(
            tok.decode(&[byte(0xC3), 348, byte(0xA9)], true),
            "\u{FFFD}e\u{FFFD}"
        );
        assert_eq!(tok.decode(&[byte(0x0A), byte(0x7F)], true), "\n\u{7f}");
    }

    #[test]
    fn save_json_round_trip() {
        let tok = fixture_tokenizer();
        let refs = refs();
        let dir = std::env::temp_dir().join(format!("lynx-tokenizer-rt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("tokenizer.json");
        tok.save_json(&path).expect("save_json");
        let loaded = LynxTokenizer::from_tokenizer_json(&path).expect("from_tokenizer_json");
        let via_dir = LynxTokenizer::from_dir(&dir).expect("from_dir picks tokenizer.json");
        for other in [&loaded, &via_dir] {
            assert_eq!(other.bos_id(), tok.bos_id());
            assert_eq!(other.eos_id(), tok.eos_id());
            assert_eq!(other.unk_id(), tok.unk_id());
            assert_eq!(other.pad_id(), tok.pad_id());
            assert_eq!(other.len(), tok.len());
            for text in fixture_texts(&refs) {
                let ids = tok.encode(&text).expect("encode");
                assert_eq!(other.encode(&text).expect("encode"), ids, "{text:?}");
                assert_eq!(
                    other.tokenize(&text).expect("tokenize"),
                    tok.tokenize(&text).expect("tokenize")
                );
                for skip in [true, false] {
                    assert_eq!(other.decode(&ids, skip), tok.decode(&ids, skip));
                }
            }
        }
        let wrapped =
            LynxTokenizer::from_tokenizer(loaded.inner().clone()).expect("from_tokenizer");
        assert_eq!(wrapped.pad_id(), Some(400));
        assert_eq!(wrapped.encode("a </s> b").expect("encode"), [273, 2, 262]);
        // The inner tokenizer alone agrees on plain text and adds BOS on request.
        let enc = tok
            .inner()
            .encode("user: what?", true)
            .expect("inner encode");
        let mut expected = vec![1];
        expected.extend(tok.encode("user: what?").expect("encode"));
        assert_eq!(enc.get_ids(), expected.as_slice());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn from_dir_uses_sentencepiece_model_without_json() {
        let tok = LynxTokenizer::from_dir(&model_dir()).expect("from_dir");
        assert_eq!(tok.len(), 401);
        let missing =
            std::env::temp_dir().join(format!("lynx-tokenizer-none-{}", std::process::id()));
        std::fs::create_dir_all(&missing).expect("temp dir");
        let err = LynxTokenizer::from_dir(&missing).expect_err("no tokenizer files");
        assert!(
            matches!(err, TokenizerError::NoTokenizerFile { .. }),
            "{err}"
        );
        std::fs::remove_dir_all(&missing).expect("cleanup");
    }

    #[test]
    fn from_sentencepiece_bytes_matches_dir() {
        let bytes = std::fs::read(model_dir().join("tokenizer.model")).expect("fixture model");
        let tok = LynxTokenizer::from_sentencepiece_bytes(&bytes, Some("[PAD]")).expect("bytes");
        let reference = fixture_tokenizer();
        for text in fixture_texts(&refs()) {
            assert_eq!(
                tok.encode(&text).expect("encode"),
                reference.encode(&text).expect("encode")
            );
        }
        let no_pad = LynxTokenizer::from_sentencepiece_bytes(&bytes, None).expect("bytes");
        assert_eq!(no_pad.pad_id(), None);
        assert_eq!(no_pad.len(), 400);
    }

    #[test]
    fn special_token_config_files_are_honoured() {
        let bytes = std::fs::read(model_dir().join("tokenizer.model")).expect("fixture model");
        let dir = std::env::temp_dir().join(format!("lynx-tokenizer-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("tokenizer.model"), &bytes).expect("write model");
        // AddedToken dicts without stripping, and a pad token defined in the map.
        std::fs::write(
            dir.join("special_tokens_map.json"),
            r#"{"bos_token": {"content": "<s>", "lstrip": false, "rstrip": false},
                "eos_token": {"content": "</s>", "lstrip": false, "rstrip": false},
                "unk_token": "<unk>", "pad_token": "<unk>"}"#,
        )
        .expect("write map");
        let tok = LynxTokenizer::from_sentencepiece_dir(&dir).expect("load");
        assert_eq!(tok.pad_id(), Some(0));
        assert_eq!(tok.len(), 400);
        // The pad role survives save_json / from_tokenizer_json through the padding parameters.
        let json_dir = dir.join("json");
        std::fs::create_dir_all(&json_dir).expect("json dir");
        tok.save_json(&json_dir.join("tokenizer.json"))
            .expect("save");
        let loaded = LynxTokenizer::from_dir(&json_dir).expect("reload");
        assert_eq!(loaded.pad_id(), Some(0));
        assert_eq!(
            loaded.tokenize("a </s> b").expect("tokenize"),
            ["▁a", "▁", "</s>", "▁", "▁b"]
        );
        assert_eq!(
            tok.tokenize("a </s> b").expect("tokenize"),
            ["▁a", "▁", "</s>", "▁", "▁b"]
        );
        assert_eq!(
            tok.tokenize("a <unk> b").expect("tokenize"),
            ["▁a", "<unk>", "▁b"]
        );
        // Invalid JSON is reported with the file name.
        std::fs::write(dir.join("special_tokens_map.json"), "{").expect("write map");
        let err = LynxTokenizer::from_sentencepiece_dir(&dir).expect_err("bad json");
        assert!(matches!(err, TokenizerError::Json { .. }), "{err}");
        assert!(err.to_string().contains("special_tokens_map.json"), "{err}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn corrupt_model_is_an_error() {
        let bytes = std::fs::read(model_dir().join("tokenizer.model")).expect("fixture model");
        for cut in [1, 7, bytes.len() / 2, bytes.len() - 1] {
            let result = LynxTokenizer::from_sentencepiece_bytes(&bytes[..cut], Some("[PAD]"));
            assert!(result.is_err(), "truncated at {cut}");
        }
        let err = LynxTokenizer::from_sentencepiece_bytes(b"\xff\xff\xff\xff", None)
            .expect_err("garbage");
        assert!(matches!(err, TokenizerError::ModelProto(_)), "{err}");
        let err = LynxTokenizer::from_sentencepiece_bytes(&[], None).expect_err("empty");
        assert!(matches!(err, TokenizerError::InvalidModel(_)), "{err}");

        let dir = std::env::temp_dir().join(format!("lynx-tokenizer-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("tokenizer.model"), &bytes[..bytes.len() / 3]).expect("write");
        let err = LynxTokenizer::from_sentencepiece_dir(&dir).expect_err("truncated file");
        assert!(err.to_string().contains("tokenizer.model"), "{err}");
        std::fs::write(dir.join("tokenizer.json"), "{ not json").expect("write");
        let err = LynxTokenizer::from_dir(&dir).expect_err("bad tokenizer.json");
        assert!(err.to_string().contains("tokenizer.json"), "{err}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
        let err = LynxTokenizer::from_sentencepiece_dir(&dir).expect_err("missing dir");
        assert!(matches!(err, TokenizerError::Io { .. }), "{err}");
    }

    #[test]
    fn wraps_a_hand_built_tokenizer() {
        let vocab: Vocab = [
            ("<unk>", 0),
            ("<s>", 1),
            ("</s>", 2),
            ("<0x0A>", 3),
            ("\u{2581}", 4),
            ("a", 5),
            ("b", 6),
            ("\u{2581}a", 7),
        ]
        .into_iter()
        .map(|(p, id)| (p.to_string(), id))
        .collect();
        let merges = vec![("\u{2581}".to_string(), "a".to_string())];
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .unk_token("<unk>".to_string())
            .byte_fallback(true)
            .fuse_unk(true)
            .build()
            .expect("bpe");
        let mut inner = Tokenizer::new(bpe);
        inner.with_normalizer(Some(NormalizerSequence::new(vec![
            Prepend::new(SPIECE_UNDERLINE.to_string()).into(),
            Replace::new(" ", SPIECE_UNDERLINE).expect("replace").into(),
        ])));
        inner.add_special_tokens(&[
            AddedToken::from("<s>", true),
            AddedToken::from("</s>", true),
            AddedToken::from("<unk>", true),
            AddedToken::from("[PAD]", true).lstrip(true).rstrip(true),
        ]);
        let tok = LynxTokenizer::from_tokenizer(inner).expect("wrap");
        assert_eq!((tok.bos_id(), tok.eos_id(), tok.unk_id()), (1, 2, 0));
        assert_eq!(tok.pad_id(), Some(8));
        assert_eq!(tok.len(), 9);
        assert_eq!(tok.encode("a b\n").expect("encode"), [7, 4, 6, 3]);
        assert_eq!(tok.encode("a [PAD] a</s>").expect("encode"), [7, 8, 7, 2]);
        assert_eq!(tok.decode(&[1, 7, 4, 6, 3, 2], true), "a b\n");
        assert_eq!(tok.decode(&[1, 7, 2, 8], false), "<s> a</s> [PAD]");
        let err =
            LynxTokenizer::from_tokenizer(Tokenizer::new(BPE::default())).expect_err("no bos");
        assert!(
            matches!(err, TokenizerError::MissingSpecialToken { role: "bos", .. }),
            "{err}"
        );
    }

    /// Straightforward SentencePiece BPE (`bpe_model.cc` semantics): repeatedly merge the
    /// leftmost adjacent pair whose concatenation is the normal piece with the highest score,
    /// then byte-fall-back the symbols that are not pieces.
    fn reference_sp_encode(proto: &sp_proto::ModelProto, text: &str) -> Vec<u32> {
        if text.is_empty() {
            return Vec::new();
        }
        let mut normal: HashMap<&str, (u32, f32)> = HashMap::new();
        let mut all: HashMap<&str, u32> = HashMap::new();
        for (id, p) in proto.pieces.iter().enumerate() {
            let piece = p.piece.as_deref().expect("piece");
            all.insert(piece, id as u32);
            if p.r#type.unwrap_or(1) == sp_proto::TYPE_NORMAL {
                normal.insert(piece, (id as u32, p.score.unwrap_or(0.0)));
            }
        }
        let normalized = format!("{SPIECE_UNDERLINE}{}", text.replace(' ', SPIECE_UNDERLINE));
        let mut symbols: Vec<String> = normalized.chars().map(String::from).collect();
        loop {
            let mut best: Option<(usize, f32)> = None;
            for i in 0..symbols.len().saturating_sub(1) {
                let merged = format!("{}{}", symbols[i], symbols[i + 1]);
                if let Some(&(_, score)) = normal.get(merged.as_str()) {
                    if best.is_none_or(|(_, s)| score > s) {
                        best = Some((i, score));
                    }
                }
            }
            let Some((i, _)) = best else { break };
            let right = symbols.remove(i + 1);
            symbols[i].push_str(&right);
        }
        let mut ids = Vec::new();
        for s in &symbols {
            match normal.get(s.as_str()) {
                Some(&(id, _)) => ids.push(id),
                None => {
                    for b in s.bytes() {
                        ids.push(all[format!("<0x{b:02X}>").as_str()]);
                    }
                }
            }
        }
        ids
    }

    #[test]
    fn bpe_matches_reference_sentencepiece_algorithm() {
        let bytes = std::fs::read(model_dir().join("tokenizer.model")).expect("fixture model");
        let proto =
            <sp_proto::ModelProto as prost::Message>::decode(bytes.as_slice()).expect("proto");
        let tok = fixture_tokenizer();
        let normal_pieces: Vec<String> = proto
            .pieces
            .iter()
            .filter(|p| p.r#type.unwrap_or(1) == sp_proto::TYPE_NORMAL)
            .map(|p| {
                p.piece
                    .clone()
                    .expect("piece")
                    .replace(SPIECE_UNDERLINE, " ")
            })
            .collect();
        let extra = ["U", "1", "é", "🙂", "\n", "  ", "ü", "？"];
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        for round in 0..3000 {
            let len = 1 + next(12);
            let mut text = String::new();
            for _ in 0..len {
                if next(8) == 0 {
                    text.push_str(extra[next(extra.len())]);
                } else {
                    text.push_str(&normal_pieces[next(normal_pieces.len())]);
                }
            }
            assert_eq!(
                tok.encode(&text).expect("encode"),
                reference_sp_encode(&proto, &text),
                "round {round}: {text:?}"
            );
        }
    }
}
