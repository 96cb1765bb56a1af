//! `lorastream model init`: a small random model in Hugging Face layout, with a
//! byte-level BPE tokenizer trained on a corpus. What tests and offline runs use.

use std::collections::HashMap;
use std::path::Path;

use tch::{Device, Kind, Tensor};
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use super::MlError;
use super::hf_config::{Arch, HfConfig};
use crate::text_enum::text_enum;

/// A few paragraphs of question-and-answer English, for tokenizers made without a corpus.
const BUILTIN_CORPUS: &str = include_str!("corpus.txt");

/// The ChatML template of SmolLM2-style models, used by the llama presets.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

text_enum! {
    /// The sizes `model init` writes.
    pub enum Preset {
        /// 2 layers, width 64: unit tests.
        Tiny = "tiny",
        /// 4 layers, width 128: end-to-end runs that should learn something.
        Small = "small",
    }
}

pub struct InitOptions<'a> {
    pub arch: Arch,
    pub preset: Preset,
    pub corpus: Option<&'a Path>,
    pub seed: i64,
    /// Target BPE vocabulary size (the corpus may yield fewer tokens).
    pub vocab_size: usize,
}

fn train_tokenizer(text: &str, vocab_size: usize, special: &[&str]) -> Result<Tokenizer, MlError> {
    let err = |e: tokenizers::Error| MlError::Tokenizer {
        path: "(training)".into(),
        msg: e.to_string(),
    };
    let specials: Vec<AddedToken> = special
        .iter()
        .map(|s| AddedToken::from(s.to_string(), true))
        .collect();
    let trainer = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(vocab_size)
        .min_frequency(2)
        .special_tokens(specials.clone())
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut tok = Tokenizer::new(BPE::default());
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tok.with_post_processor(Some(ByteLevel::new(false, true, true)));
    tok.with_decoder(Some(ByteLevel::new(false, true, true)));
    tok.train(
        &mut TrainerWrapper::BpeTrainer(trainer),
        text.lines().filter(|l| !l.trim().is_empty()),
    )
    .map_err(err)?;
    tok.add_special_tokens(&specials);
    Ok(tok)
}

/// Writes the model directory; returns its config.
pub fn init_model(out: &Path, o: &InitOptions<'_>) -> Result<HfConfig, MlError> {
    let corpus = match o.corpus {
        Some(p) => std::fs::read_to_string(p).map_err(|e| MlError::io(p, e))?,
        None => BUILTIN_CORPUS.to_string(),
    };
    let special: &[&str] = match o.arch {
        Arch::Gpt2 => &["<|endoftext|>"],
        Arch::Llama => &["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    };
    let tok = train_tokenizer(&corpus, o.vocab_size, special)?;
    let vocab = tok.get_vocab_size(true);
    let id = |t: &str| tok.token_to_id(t).map(|i| i as i64);
    let (width, layers) = match o.preset {
        Preset::Tiny => (64, 2),
        Preset::Small => (128, 4),
    };
    let cfg = match o.arch {
        Arch::Gpt2 => HfConfig {
            arch: Arch::Gpt2,
            vocab_size: vocab,
            hidden_size: width,
            num_layers: layers,
            num_heads: 4,
            num_kv_heads: 4,
            head_dim: width / 4,
            intermediate_size: 4 * width,
            max_position_embeddings: 1024,
            norm_eps: 1e-5,
            rope_theta: 0.0,
            rope_scaling: None,
            tie_word_embeddings: true,
            attention_bias: true,
            mlp_bias: true,
            bos_token_id: id("<|endoftext|>"),
            eos_token_ids: id("<|endoftext|>").into_iter().collect(),
            pad_token_id: None,
        },
        Arch::Llama => HfConfig {
            arch: Arch::Llama,
            vocab_size: vocab,
            hidden_size: width,
            num_layers: layers,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: width / 4,
            intermediate_size: width * 8 / 3,
            max_position_embeddings: 1024,
            norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: None,
            tie_word_embeddings: true,
            attention_bias: false,
            mlp_bias: false,
            bos_token_id: id("<|im_start|>"),
            eos_token_ids: id("<|im_end|>").into_iter().collect(),
            pad_token_id: id("<|endoftext|>"),
        },
    };
    tch::manual_seed(o.seed);
    let tensors = random_weights(&cfg);
    std::fs::create_dir_all(out).map_err(|e| MlError::io(out, e))?;
    let named: Vec<(&String, &Tensor)> = tensors.iter().collect();
    super::weights::write_safetensors_atomic(&out.join("model.safetensors"), &named)?;
    let write_json = |name: &str, v: &serde_json::Value| {
        let p = out.join(name);
        crate::fsutil::write_json_atomic(&p, v).map_err(|e| MlError::io(&p, e))
    };
    write_json("config.json", &cfg.to_json())?;
    let tok_path = out.join("tokenizer.json");
    tok.save(&tok_path, false).map_err(|e| MlError::Tokenizer {
        path: tok_path.clone(),
        msg: e.to_string(),
    })?;
    let tok_cfg = match o.arch {
        Arch::Gpt2 => serde_json::json!({
            "tokenizer_class": "GPT2Tokenizer",
            "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
            "model_max_length": cfg.max_position_embeddings,
            "add_prefix_space": false,
        }),
        Arch::Llama => serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
            "unk_token": "<|endoftext|>",
            "model_max_length": cfg.max_position_embeddings,
            "chat_template": CHATML_TEMPLATE,
        }),
    };
    write_json("tokenizer_config.json", &tok_cfg)?;
    Ok(cfg)
}

/// Normal(0, 0.02) matrices and embeddings, unit norms, zero biases, in checkpoint names.
fn random_weights(cfg: &HfConfig) -> HashMap<String, Tensor> {
    let opts = (Kind::Float, Device::Cpu);
    let normal = |shape: &[i64]| Tensor::randn(shape, opts) * 0.02;
    let ones = |n: i64| Tensor::ones([n], opts);
    let zeros = |n: i64| Tensor::zeros([n], opts);
    let d = cfg.hidden_size as i64;
    let v = cfg.vocab_size as i64;
    let inner = cfg.intermediate_size as i64;
    let mut t = HashMap::new();
    match cfg.arch {
        Arch::Gpt2 => {
            t.insert("transformer.wte.weight".into(), normal(&[v, d]));
            t.insert(
                "transformer.wpe.weight".into(),
                normal(&[cfg.max_position_embeddings as i64, d]),
            );
            for i in 0..cfg.num_layers {
                let p = format!("transformer.h.{i}");
                for ln in ["ln_1", "ln_2"] {
                    t.insert(format!("{p}.{ln}.weight"), ones(d));
                    t.insert(format!("{p}.{ln}.bias"), zeros(d));
                }
                for (name, i_, o_) in [
                    ("attn.c_attn", d, 3 * d),
                    ("attn.c_proj", d, d),
                    ("mlp.c_fc", d, inner),
                    ("mlp.c_proj", inner, d),
                ] {
                    t.insert(format!("{p}.{name}.weight"), normal(&[i_, o_]));
                    t.insert(format!("{p}.{name}.bias"), zeros(o_));
                }
            }
            t.insert("transformer.ln_f.weight".into(), ones(d));
            t.insert("transformer.ln_f.bias".into(), zeros(d));
        }
        Arch::Llama => {
            let hd = cfg.head_dim as i64;
            let (nh, nkv) = (cfg.num_heads as i64, cfg.num_kv_heads as i64);
            t.insert("model.embed_tokens.weight".into(), normal(&[v, d]));
            for i in 0..cfg.num_layers {
                let p = format!("model.layers.{i}");
                t.insert(format!("{p}.input_layernorm.weight"), ones(d));
                t.insert(format!("{p}.post_attention_layernorm.weight"), ones(d));
                for (name, i_, o_) in [
                    ("self_attn.q_proj", d, nh * hd),
                    ("self_attn.k_proj", d, nkv * hd),
                    ("self_attn.v_proj", d, nkv * hd),
                    ("self_attn.o_proj", nh * hd, d),
                    ("mlp.gate_proj", d, inner),
                    ("mlp.up_proj", d, inner),
                    ("mlp.down_proj", inner, d),
                ] {
                    t.insert(format!("{p}.{name}.weight"), normal(&[o_, i_]));
                }
            }
            t.insert("model.norm.weight".into(), ones(d));
        }
    }
    t
}
