//! Incremental detokenization of one request: text deltas for streaming and stop strings.
//!
//! # Guarantees
//! - The concatenated deltas are a prefix of the decoded text (before the final strip), so
//!   nothing streamed is ever taken back.
//! - No delta contains a stop string, nor text after one: the last `longest stop - 1` bytes are
//!   held back until more text shows they do not start a stop string.
//! - Trailing U+FFFDs (an incomplete UTF-8 sequence of byte-fallback tokens, which the next token
//!   may complete) are held back.

use crate::tokenizer::LynxTokenizer;

/// What decoding produced so far, relative to what was streamed.
#[derive(Debug, Default)]
pub struct TextStream {
    sent_tokens: usize,
    sent_text: String,
}

/// One update.
#[derive(Debug, Default, PartialEq)]
pub struct Update {
    /// Tokens not streamed yet.
    pub tokens: Vec<u32>,
    /// Text not streamed yet (may be empty).
    pub text: String,
    /// Byte offset of the first stop string in the decoded text, if one appeared.
    pub stop_at: Option<usize>,
}

impl TextStream {
    /// Decodes `tokens` (everything generated so far) and returns what is new. With `last`, the
    /// whole remaining text is released (no hold-back).
    pub fn update(
        &mut self,
        tok: &LynxTokenizer,
        tokens: &[u32],
        stop: &[String],
        last: bool,
    ) -> Update {
        let full = tok.decode(tokens, true);
        let stop_at = stop.iter().filter_map(|s| full.find(s.as_str())).min();
        let mut end = stop_at.unwrap_or(full.len());
        if stop_at.is_none() && !last {
            let hold = stop.iter().map(String::len).max().unwrap_or(1).max(1) - 1;
            end = end.saturating_sub(hold);
            while !full.is_char_boundary(end) {
                end -= 1;
            }
            while full[..end].ends_with('\u{FFFD}') {
                end -= '\u{FFFD}'.len_utf8();
            }
        }
        let visible = &full[..end];
        let text = match visible.strip_prefix(self.sent_text.as_str()) {
            Some(new) => new.to_owned(),
            None => String::new(),
        };
        self.sent_text.push_str(&text);
        let new_tokens = tokens[self.sent_tokens.min(tokens.len())..].to_vec();
        self.sent_tokens = tokens.len();
        Update {
            tokens: new_tokens,
            text,
            stop_at,
        }
    }
}

/// The text before the first stop string (all of it when none appears), and whether one did.
pub fn cut_at_stop<'a>(text: &'a str, stop: &[String]) -> (&'a str, bool) {
    match stop.iter().filter_map(|s| text.find(s.as_str())).min() {
        Some(i) => (&text[..i], true),
        None => (text, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_at_the_earliest_stop_string() {
        let stop = vec!["b".to_owned(), "cd".to_owned()];
        assert_eq!(cut_at_stop("xxcdb", &stop), ("xx", true));
        assert_eq!(cut_at_stop("xyz", &stop), ("xyz", false));
    }

    #[test]
    fn deltas_never_show_a_stop_string_and_add_up() {
        let tok = crate::tokenizer::toy::toy_tokenizer().expect("toy tokenizer");
        let ids = tok.encode("hello world foo bar").expect("encode");
        let full = tok.decode(&ids, true);
        let stop = vec!["foo".to_owned()];
        let mut s = TextStream::default();
        let mut streamed = String::new();
        let mut stopped = None;
        for n in 1..=ids.len() {
            let u = s.update(&tok, &ids[..n], &stop, false);
            assert!(
                !u.text.contains("foo"),
                "delta {:?} shows the stop string",
                u.text
            );
            assert_eq!(u.tokens.len(), 1, "one new token per update");
            streamed.push_str(&u.text);
            if u.stop_at.is_some() {
                stopped = u.stop_at;
                break;
            }
        }
        let at = stopped.expect("the stop string is found");
        assert_eq!(streamed, full[..at]);
        let mut s = TextStream::default();
        let u = s.update(&tok, &ids, &[], true);
        assert_eq!((u.text, u.tokens), (full, ids));
    }
}
