//! Prompt construction as the official eval dataset does it: format the template, strip,
//! lower-case, `[BOS] + tokenize(text)`, keep the last `max_input_tokens` tokens; batches are
//! left-padded with `[PAD]` and a 0 mask.

use crate::config::LynxConfig;
use crate::tokenizer::{LynxTokenizer, TokenizerError};

/// Token ids of one prompt: BOS + the tokenized, formatted question, truncated from the left.
pub fn prompt_token_ids(
    tok: &LynxTokenizer,
    cfg: &LynxConfig,
    question: &str,
) -> Result<Vec<u32>, TokenizerError> {
    let text = cfg.format_prompt(question);
    let mut ids = Vec::with_capacity(cfg.prompt.max_input_tokens + 1);
    ids.push(cfg.tokens.bos);
    ids.extend(tok.encode(&text)?);
    let keep = cfg.prompt.max_input_tokens;
    if ids.len() > keep {
        ids.drain(..ids.len() - keep);
    }
    Ok(ids)
}

/// A left-padded batch of prompts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaddedBatch {
    /// `[B, T]` ids, row-major.
    pub ids: Vec<u32>,
    /// `[B, T]` 0/1 mask, row-major.
    pub mask: Vec<u32>,
    /// Rows.
    pub batch: usize,
    /// Columns (longest prompt).
    pub width: usize,
}

/// Left-pads `rows` to the longest one with `pad`.
pub fn left_pad(rows: &[Vec<u32>], pad: u32) -> PaddedBatch {
    let width = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(rows.len() * width);
    let mut mask = Vec::with_capacity(rows.len() * width);
    for row in rows {
        let n = width - row.len();
        ids.extend(std::iter::repeat_n(pad, n));
        mask.extend(std::iter::repeat_n(0, n));
        ids.extend(row);
        mask.extend(std::iter::repeat_n(1, row.len()));
    }
    PaddedBatch {
        ids,
        mask,
        batch: rows.len(),
        width,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_on_the_left() {
        let b = left_pad(&[vec![1, 5, 6], vec![1, 7]], 9);
        assert_eq!(b.ids, vec![1, 5, 6, 9, 1, 7]);
        assert_eq!(b.mask, vec![1, 1, 1, 0, 1, 1]);
        assert_eq!((b.batch, b.width), (2, 3));
    }
}
