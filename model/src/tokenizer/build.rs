//! Building the `tokenizers::Tokenizer` (BPE with merges derived from the SentencePiece vocabulary)
//! from a parsed SentencePiece model.

use super::*;

/// Builds the `tokenizers::Tokenizer` from a parsed SentencePiece model.
pub(super) fn build_tokenizer(
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
