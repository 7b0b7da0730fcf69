//! Decoding with HF 4.28 `decode` + SentencePiece `Decode` semantics.

use super::*;

impl LynxTokenizer {
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
}

/// Appends a run of byte pieces as SentencePiece does: each maximal valid UTF-8 character is
/// copied, every other byte becomes one U+FFFD.
pub(super) fn push_sp_bytes(text: &mut String, bytes: &[u8]) {
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
