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

mod build;
mod decode;
mod error;
pub mod sp_proto;
mod special;
#[cfg(test)]
mod tests;
pub mod toy;

use build::*;
pub use error::TokenizerError;
use special::*;

/// The SentencePiece meta symbol that stands for a space.
const SPIECE_UNDERLINE: &str = "\u{2581}";
/// Pad token added by the official Lynx code when the tokenizer has none.
const DEFAULT_PAD_TOKEN: &str = "[PAD]";
/// Default SentencePiece surface of the unknown piece (`TrainerSpec.unk_surface`).
const DEFAULT_UNK_SURFACE: &str = " \u{2047} ";

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

/// Python's `str.strip()`: trims every character `str.isspace` accepts (the official code strips
/// prompts and generated texts with it; Rust's `trim` misses U+001C..U+001F).
pub fn python_strip(s: &str) -> &str {
    s.trim_matches(is_python_whitespace)
}
