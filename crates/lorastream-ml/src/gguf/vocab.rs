//! The tokenizer of a GGUF file (`tokenizer.ggml.*`) as `tokenizer.json` and
//! `tokenizer_config.json`, built the way transformers' GGUF loader builds it,
//! so both tokenize alike. Byte-level BPE (`tokenizer.ggml.model = "gpt2"`,
//! Llama 3, SmolLM, Qwen …) is supported; SentencePiece vocabularies are not yet.

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

pub fn build(g: &Gguf, context_length: u64) -> Result<Vocab, GgufError> {
    let model = g.need("tokenizer.ggml.model", |v| v.as_str())?;
    if model != "gpt2" {
        return Err(g.unsupported(format!(
            "tokenizer.ggml.model {model:?} is not supported (gpt2, the byte-level BPE of Llama 3, SmolLM and Qwen models, is)"
        )));
    }
    let tokens = strings(g, "tokenizer.ggml.tokens")?;
    let merges = strings(g, "tokenizer.ggml.merges")?;
    let types: Vec<i64> = match g.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .as_array()
            .map(|a| a.iter().map(|t| t.as_i64().unwrap_or(1)).collect())
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let vocab: serde_json::Map<String, Json> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let merges: Vec<Json> = merges
        .iter()
        .map(|m| match m.split_once(' ') {
            Some((a, b)) => Ok(json!([a, b])),
            None => Err(g.unsupported(format!("merge {m:?} is not two tokens"))),
        })
        .collect::<Result<_, _>>()?;
    let unk = token_at(&tokens, g, "tokenizer.ggml.unknown_token_id");
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
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true});
    let tokenizer_json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": []},
        "pre_tokenizer": byte_level,
        "post_processor": post_processor,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
            byte_level]},
        "model": {"type": "BPE", "dropout": null, "unk_token": unk,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab, "merges": merges},
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
