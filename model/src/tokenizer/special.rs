//! Special tokens as the HF 4.28 slow tokenizer configures them: which tokens, and whether the
//! whitespace around them is stripped (from `special_tokens_map.json` / `tokenizer_config.json`).

use super::*;

/// A special token as the slow tokenizer sees it: its text and whether the whitespace on its
/// left / right is stripped from the neighbouring text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SpecialSpec {
    pub(super) content: String,
    pub(super) lstrip: bool,
    pub(super) rstrip: bool,
}

impl SpecialSpec {
    /// A special token given as a plain string: HF 4.28 strips both sides.
    pub(super) fn plain(content: &str) -> Self {
        SpecialSpec {
            content: content.to_string(),
            lstrip: true,
            rstrip: true,
        }
    }

    /// An `AddedToken(content, lstrip=False, rstrip=False)`.
    pub(super) fn no_strip(content: &str) -> Self {
        SpecialSpec {
            content: content.to_string(),
            lstrip: false,
            rstrip: false,
        }
    }
}

/// The special tokens of the slow tokenizer after `from_pretrained` + the Lynx `[PAD]` addition.
#[derive(Debug, Clone)]
pub(super) struct SpecialConfig {
    pub(super) bos: SpecialSpec,
    pub(super) eos: SpecialSpec,
    pub(super) unk: SpecialSpec,
    pub(super) pad: Option<SpecialSpec>,
    pub(super) additional: Vec<SpecialSpec>,
}

impl SpecialConfig {
    /// bos / eos / unk as plain strings (a FastChat-style `special_tokens_map.json`), and the
    /// given pad token, if any, as a plain string.
    pub(super) fn plain(pad_token: Option<&str>) -> Self {
        SpecialConfig {
            bos: SpecialSpec::plain("<s>"),
            eos: SpecialSpec::plain("</s>"),
            unk: SpecialSpec::plain("<unk>"),
            pad: pad_token.map(SpecialSpec::plain),
            additional: Vec::new(),
        }
    }

    /// Special tokens in the order HF registers them (`SPECIAL_TOKENS_ATTRIBUTES` order).
    pub(super) fn ordered(&self) -> Vec<&SpecialSpec> {
        let mut all = vec![&self.bos, &self.eos, &self.unk];
        all.extend(self.pad.as_ref());
        all.extend(self.additional.iter());
        all
    }
}

/// A special token value of a JSON configuration file.
pub(super) struct TokenValue {
    pub(super) content: String,
    /// `(lstrip, rstrip)` of an AddedToken object; `None` for a plain string.
    pub(super) flags: Option<(bool, bool)>,
}

impl TokenValue {
    /// The token with its flags, or `plain_flags` for a plain string.
    pub(super) fn into_spec(self, plain_flags: (bool, bool)) -> SpecialSpec {
        let (lstrip, rstrip) = self.flags.unwrap_or(plain_flags);
        SpecialSpec {
            content: self.content,
            lstrip,
            rstrip,
        }
    }
}

/// A parsed JSON configuration file (`special_tokens_map.json` or `tokenizer_config.json`).
pub(super) struct JsonConfig {
    pub(super) path: PathBuf,
    pub(super) value: serde_json::Value,
}

impl JsonConfig {
    pub(super) fn read_optional(path: PathBuf) -> Result<Option<Self>, TokenizerError> {
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

    pub(super) fn invalid(&self, key: &str, reason: &str) -> TokenizerError {
        TokenizerError::InvalidSpecialToken {
            path: self.path.clone(),
            key: key.to_string(),
            reason: reason.to_string(),
        }
    }

    /// Parses one token value: a string, an AddedToken object or null (`None`).
    pub(super) fn token_value(
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

    pub(super) fn get(&self, key: &str) -> Option<&serde_json::Value> {
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
pub(super) fn resolve_special_config(
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
pub(super) fn parse_byte_piece(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// Python's `str.isspace` for one character (Rust's `char::is_whitespace` plus U+001C..U+001F).
pub(super) fn is_python_whitespace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}
