//! `lorastream model init`: a small random model in Hugging Face layout, with a
//! byte-level BPE tokenizer trained on a corpus. What tests and offline runs use.

use std::path::Path;

use tch::Tensor;
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use crate::MlError;
use crate::hf_config::{Arch, HfConfig};
use crate::models::Fill;
use lorastream_base::text_enum;

/// A few paragraphs of question-and-answer English, for tokenizers made without a corpus.
const BUILTIN_CORPUS: &str = include_str!("corpus.txt");

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
    let recipe = &o.arch.family().init;
    let tok = train_tokenizer(&corpus, o.vocab_size, recipe.special_tokens)?;
    let id = |t: &str| tok.token_to_id(t).map(|i| i as i64);
    let (width, layers) = match o.preset {
        Preset::Tiny => (64, 2),
        Preset::Small => (128, 4),
    };
    let cfg = (recipe.config)(tok.get_vocab_size(true), width, layers, &id);
    tch::manual_seed(o.seed);
    let tensors = Fill::all((recipe.tensors)(&cfg));
    std::fs::create_dir_all(out).map_err(|e| MlError::io(out, e))?;
    let named: Vec<(&String, &Tensor)> = tensors.iter().collect();
    crate::load::weights::write_safetensors_atomic(&out.join("model.safetensors"), &named)?;
    let write_json = |name: &str, v: &serde_json::Value| {
        let p = out.join(name);
        lorastream_base::fsutil::write_json_atomic(&p, v).map_err(|e| MlError::io(&p, e))
    };
    write_json("config.json", &cfg.to_json())?;
    let tok_path = out.join("tokenizer.json");
    tok.save(&tok_path, false).map_err(|e| MlError::Tokenizer {
        path: tok_path.clone(),
        msg: e.to_string(),
    })?;
    write_json("tokenizer_config.json", &(recipe.tokenizer_config)(&cfg))?;
    Ok(cfg)
}
