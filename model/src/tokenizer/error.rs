//! Errors of the tokenizer.

use super::*;

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
    pub(super) fn in_file(self, path: &Path) -> Self {
        TokenizerError::InFile {
            path: path.to_path_buf(),
            source: Box::new(self),
        }
    }

    pub(super) fn tokenizers(context: impl Into<String>, source: tokenizers::Error) -> Self {
        TokenizerError::Tokenizers {
            context: context.into(),
            source,
        }
    }
}
