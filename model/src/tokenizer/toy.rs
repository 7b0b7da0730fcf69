//! The toy tokenizer of the generated models (the embedded `tiny`, `small`, the random
//! architectures): a SentencePiece BPE model built in code.

use super::{LynxTokenizer, TokenizerError};

/// Words whose pieces the toy vocabulary holds (every prefix of `▁word`, so BPE can build them).
const TOY_WORDS: &[&str] = &[
    "user", "bot", "what", "is", "in", "the", "image", "this", "picture", "photo", "video",
    "describe", "how", "many", "there", "are", "color", "colors", "of", "a", "an", "and", "on",
    "with", "people", "person", "cat", "dog", "house", "sky", "sun", "red", "blue", "green",
    "yellow", "happens", "doing", "where", "who", "which", "answer", "briefly", "moving", "toy",
    "does", "do", "it", "you", "see", "tell", "me", "about", "scene", "hill", "grass", "tree",
    "car", "man", "woman",
];

/// The toy tokenizer of the generated models: a SentencePiece BPE model (byte fallback, dummy
/// prefix, LLaMA special ids) built in code, loaded through the same path as a real
/// `tokenizer.model`, with `[PAD]` added as the official code does.
pub fn toy_tokenizer() -> Result<LynxTokenizer, TokenizerError> {
    use super::sp_proto::{
        ModelProto, NormalizerSpec, SentencePiece, TrainerSpec, MODEL_BPE, TYPE_BYTE as BYTE,
        TYPE_CONTROL as CONTROL, TYPE_NORMAL as NORMAL, TYPE_UNKNOWN as UNKNOWN,
    };
    use prost::Message;
    let mut pieces: Vec<(String, i32)> = vec![
        ("<unk>".into(), UNKNOWN),
        ("<s>".into(), CONTROL),
        ("</s>".into(), CONTROL),
    ];
    pieces.extend((0..=255u8).map(|b| (format!("<0x{b:02X}>"), BYTE)));
    let mut normal: Vec<String> = Vec::new();
    let mut push = |p: String| {
        if !normal.contains(&p) {
            normal.push(p);
        }
    };
    for w in TOY_WORDS {
        let word: Vec<char> = std::iter::once('\u{2581}').chain(w.chars()).collect();
        for end in 2..=word.len() {
            push(word[..end].iter().collect());
        }
    }
    for c in "\u{2581}abcdefghijklmnopqrstuvwxyz0123456789.,?!:;'-()".chars() {
        push(c.to_string());
    }
    pieces.extend(normal.into_iter().map(|p| (p, NORMAL)));
    let model = ModelProto {
        pieces: pieces
            .into_iter()
            .enumerate()
            .map(|(i, (piece, kind))| SentencePiece {
                piece: Some(piece),
                score: Some(if kind == NORMAL { -(i as f32) } else { 0.0 }),
                r#type: Some(kind),
            })
            .collect(),
        trainer_spec: Some(TrainerSpec {
            model_type: Some(MODEL_BPE),
            treat_whitespace_as_suffix: Some(false),
            byte_fallback: Some(true),
        }),
        normalizer_spec: Some(NormalizerSpec {
            name: Some("identity".into()),
            precompiled_charsmap: None,
            add_dummy_prefix: Some(true),
            remove_extra_whitespaces: Some(false),
            escape_whitespaces: Some(true),
            normalization_rule_tsv: None,
        }),
        denormalizer_spec: None,
    };
    LynxTokenizer::from_sentencepiece_bytes(&model.encode_to_vec(), Some("[PAD]"))
}
