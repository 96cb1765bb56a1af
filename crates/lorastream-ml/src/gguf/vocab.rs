//! The tokenizer of a GGUF file (`tokenizer.ggml.*`) as `tokenizer.json` and
//! `tokenizer_config.json`, built the way transformers' GGUF loader builds it,
//! so both tokenize alike: byte-level BPE (`tokenizer.ggml.model = "gpt2"`:
//! Llama 3, SmolLM, Qwen …) and SentencePiece (`llama`: Llama 2, Mistral,
//! TinyLlama; merges rebuilt from the scores, byte fallback).

use serde_json::{Value as Json, json};

use super::{Gguf, GgufError};

/// llama.cpp's token types: 3 = control (special) tokens.
const CONTROL: i64 = 3;

fn strings(g: &Gguf, key: &str) -> Result<Vec<String>, GgufError> {
    g.need(key, |v| {
        v.as_array()?
            .iter()
            .map(|s| s.as_str().map(String::from))
            .collect::<Option<Vec<String>>>()
    })
}

pub struct Vocab {
    pub tokens: Vec<String>,
    pub tokenizer_json: Json,
    pub tokenizer_config: Json,
}

fn token_at(tokens: &[String], g: &Gguf, key: &str) -> Option<String> {
    let id = g.get(key)?.as_u64()?;
    tokens.get(id as usize).cloned()
}

/// The vocabulary of `g`, whose `general.architecture` is `arch` (Gemma's
/// SentencePiece files read as transformers reads them: a Unigram model).
pub fn build(g: &Gguf, arch: &str, context_length: u64) -> Result<Vocab, GgufError> {
    let kind = g.need("tokenizer.ggml.model", |v| v.as_str())?;
    let tokens = strings(g, "tokenizer.ggml.tokens")?;
    let unk = token_at(&tokens, g, "tokenizer.ggml.unknown_token_id");
    let prefix = g.get("tokenizer.ggml.add_space_prefix");
    let prefix = prefix.and_then(|v| v.as_bool()).unwrap_or(true);
    let (model, text) = match kind {
        "gpt2" => {
            let merges = strings(g, "tokenizer.ggml.merges")?;
            (bpe(g, &tokens, &merges, &unk)?, byte_level())
        }
        "llama" if arch.starts_with("gemma") => {
            let scores = floats(g, "tokenizer.ggml.scores")?;
            (unigram(g, &tokens, &scores), gemma_text(prefix))
        }
        "llama" => {
            let merges = match g.get("tokenizer.ggml.merges") {
                Some(_) => strings(g, "tokenizer.ggml.merges")?,
                None => spm_merges(&tokens, &floats(g, "tokenizer.ggml.scores")?),
            };
            (bpe(g, &tokens, &merges, &unk)?, sentencepiece(prefix))
        }
        _ => {
            return Err(g.unsupported(format!(
                "tokenizer.ggml.model {kind:?} is not supported (gpt2, the byte-level BPE of \
                 Llama 3, SmolLM and Qwen, and llama, SentencePiece's, are)"
            )));
        }
    };
    let types = token_types(g);
    let bos = token_at(&tokens, g, "tokenizer.ggml.bos_token_id");
    let eos = token_at(&tokens, g, "tokenizer.ggml.eos_token_id");
    let pad = token_at(&tokens, g, "tokenizer.ggml.padding_token_id");
    let added = added_tokens(&tokens, &types, [&unk, &bos, &eos]);
    let add_bos = g
        .get("tokenizer.ggml.add_bos_token")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let post_processor = match (&bos, add_bos) {
        (Some(b), true) => bos_processor(&tokens, b),
        _ => Json::Null,
    };
    let tokenizer_json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": text.normalizer,
        "pre_tokenizer": text.pre_tokenizer,
        "post_processor": post_processor,
        "decoder": text.decoder,
        "model": model,
    });
    let mut tokenizer_config = json!({
        "add_bos_token": add_bos,
        "add_eos_token": false,
        "bos_token": bos,
        "eos_token": eos,
        "pad_token": pad,
        "unk_token": unk,
        "model_max_length": context_length,
        "clean_up_tokenization_spaces": true,
    });
    if let Some(t) = g.get("tokenizer.chat_template").and_then(|v| v.as_str()) {
        tokenizer_config["chat_template"] = json!(t);
    }
    Ok(Vocab {
        tokens,
        tokenizer_json,
        tokenizer_config,
    })
}

/// A BPE model over `tokens` with `merges` ("a b") and byte fallback.
fn bpe(
    g: &Gguf,
    tokens: &[String],
    merges: &[String],
    unk: &Option<String>,
) -> Result<Json, GgufError> {
    let vocab: serde_json::Map<String, Json> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    Ok(json!({"type": "BPE", "dropout": null, "unk_token": unk,
        "continuing_subword_prefix": null, "end_of_word_suffix": null,
        "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
        "vocab": vocab, "merges": merge_pairs(g, merges)?}))
}

/// Gemma's Unigram model, as transformers' GGUF loader builds it: the tab
/// byte token read as a tab, pieces of spaces as `▁`s.
fn unigram(g: &Gguf, tokens: &[String], scores: &[f64]) -> Json {
    let unk = g
        .get("tokenizer.ggml.unknown_token_id")
        .and_then(|v| v.as_u64());
    let vocab: Vec<Json> = tokens
        .iter()
        .zip(scores.iter().copied().chain(std::iter::repeat(0.0)))
        .map(|(t, s)| {
            let piece = match t.as_str() {
                "<0x09>" => "\t".to_string(),
                t if t.contains(' ') && t.trim().is_empty() => "\u{2581}".repeat(t.chars().count()),
                t => t.to_string(),
            };
            json!([piece, s])
        })
        .collect();
    json!({"type": "Unigram", "unk_id": unk, "vocab": vocab, "byte_fallback": true})
}

/// Gemma's text handling: spaces are `▁`, nothing put first, split after
/// spaces; a leading space stripped on decoding when `prefix`.
fn gemma_text(prefix: bool) -> Text {
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    Text {
        normalizer: json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}),
        pre_tokenizer: json!({"type": "Split", "pattern": {"String": " "},
            "behavior": "MergedWithPrevious", "invert": false}),
        decoder: json!({"type": "Sequence", "decoders": decoders}),
    }
}

/// llama.cpp's type of every token (none when the file has no types).
fn token_types(g: &Gguf) -> Vec<i64> {
    let types = g
        .get("tokenizer.ggml.token_type")
        .and_then(|v| v.as_array());
    types.map_or(Vec::new(), |a| {
        a.iter().map(|t| t.as_i64().unwrap_or(1)).collect()
    })
}

/// `"a b"` merges as tokenizers' `["a", "b"]` pairs.
fn merge_pairs(g: &Gguf, merges: &[String]) -> Result<Vec<Json>, GgufError> {
    merges
        .iter()
        .map(|m| match m.split_once(' ') {
            Some((a, b)) => Ok(json!([a, b])),
            None => Err(g.unsupported(format!("merge {m:?} is not two tokens"))),
        })
        .collect()
}

/// How text becomes pieces and back, around the BPE model.
struct Text {
    normalizer: Json,
    pre_tokenizer: Json,
    decoder: Json,
}

/// Byte-level BPE (`gpt2`), as transformers' GGUF loader builds it.
fn byte_level() -> Text {
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true});
    Text {
        normalizer: json!({"type": "Sequence", "normalizers": []}),
        pre_tokenizer: byte_level.clone(),
        decoder: json!({"type": "Sequence", "decoders": [
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
            byte_level]}),
    }
}

/// SentencePiece (`llama`: Llama 2, Mistral, TinyLlama), as transformers'
/// GGUF loader builds it: spaces become `▁` (one put first when `prefix`),
/// unknown characters fall back to byte tokens.
fn sentencepiece(prefix: bool) -> Text {
    let mut normalizers = vec![];
    let mut decoders = vec![
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
        json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
    ];
    if prefix {
        normalizers.push(json!({"type": "Prepend", "prepend": "\u{2581}"}));
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    normalizers.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}));
    Text {
        normalizer: json!({"type": "Sequence", "normalizers": normalizers}),
        pre_tokenizer: Json::Null,
        decoder: json!({"type": "Sequence", "decoders": decoders}),
    }
}

fn floats(g: &Gguf, key: &str) -> Result<Vec<f64>, GgufError> {
    g.need(key, |v| v.as_array()?.iter().map(|x| x.as_f64()).collect())
}

/// The merges of a SentencePiece vocabulary, rebuilt from its scores as
/// transformers does: every split of every token into two tokens, within a
/// token by its halves' scores, then all by the token's score, both
/// descending and stable.
fn spm_merges(tokens: &[String], scores: &[f64]) -> Vec<String> {
    let score: std::collections::HashMap<&str, f64> = tokens
        .iter()
        .zip(scores.iter().copied().chain(std::iter::repeat(0.0)))
        .map(|(t, s)| (t.as_str(), s))
        .collect();
    let desc = |a: f64, b: f64| b.partial_cmp(&a).unwrap_or(std::cmp::Ordering::Equal);
    let mut merges: Vec<(&str, &str, f64)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for t in tokens {
        // A repeated token is one dictionary entry (its last score).
        if !seen.insert(t.as_str()) {
            continue;
        }
        let mut local: Vec<(&str, &str, f64)> = t
            .char_indices()
            .skip(1)
            .map(|(i, _)| t.split_at(i))
            .filter(|(l, r)| score.contains_key(l) && score.contains_key(r))
            .map(|(l, r)| (l, r, score[t.as_str()]))
            .collect();
        local.sort_by(|a, b| desc(score[a.0], score[b.0]).then(desc(score[a.1], score[b.1])));
        merges.extend(local);
    }
    merges.sort_by(|a, b| desc(a.2, b.2));
    merges
        .into_iter()
        .map(|(l, r, _)| format!("{l} {r}"))
        .collect()
}

/// The special tokens: the control tokens when the file types its tokens,
/// else the named unknown/BOS/EOS tokens.
fn added_tokens(tokens: &[String], types: &[i64], named: [&Option<String>; 3]) -> Vec<Json> {
    let specials: Vec<usize> = if types.is_empty() {
        named
            .into_iter()
            .flatten()
            .filter_map(|t| tokens.iter().position(|x| x == t))
            .collect()
    } else {
        (0..types.len()).filter(|&i| types[i] == CONTROL).collect()
    };
    specials
        .iter()
        .map(|&i| {
            json!({"id": i, "content": tokens[i], "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect()
}

/// The post-processor that puts the BOS token `b` before every sequence.
fn bos_processor(tokens: &[String], b: &String) -> Json {
    let id = tokens.iter().position(|t| t == b).unwrap_or(0);
    json!({"type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": b, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {b.as_str(): {"id": b, "ids": [id], "tokens": [b]}}})
}
