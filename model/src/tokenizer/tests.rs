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
        for (ids_key, text_key) in [("greedy_ids", "greedy_text"), ("beam5_ids", "beam5_text")] {
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
    let wrapped = LynxTokenizer::from_tokenizer(loaded.inner().clone()).expect("from_tokenizer");
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
    let missing = std::env::temp_dir().join(format!("lynx-tokenizer-none-{}", std::process::id()));
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
    let err =
        LynxTokenizer::from_sentencepiece_bytes(b"\xff\xff\xff\xff", None).expect_err("garbage");
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
    let err = LynxTokenizer::from_tokenizer(Tokenizer::new(BPE::default())).expect_err("no bos");
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
    let proto = <sp_proto::ModelProto as prost::Message>::decode(bytes.as_slice()).expect("proto");
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
