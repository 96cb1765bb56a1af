//! `lorastream bench …`: the same measurements as `../shared/bench/peer_hf.py`,
//! with the same flags and one JSON line of the same keys, so both can be run
//! side by side and compared as a ratio.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;
use tch::{Device, Kind};

use crate::ml::generate::{SamplingParams, generate};
use crate::ml::{CausalLm, ChatTokenizer, Message, MlError};

/// Flags shared by every bench subcommand (as the peer's).
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Hugging Face model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// JSONL of chat examples: {"messages": [{"role", "content"}, …]}.
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// CPU threads; 0 = libtorch's default.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

#[derive(Debug, Clone, clap::Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Use only the first N examples; 0 = all.
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Ml(#[from] MlError),
    #[error("{}: {msg}", path.display())]
    Data { path: PathBuf, msg: String },
}

/// Reads chat examples from JSONL; a bad line is an error naming its number.
pub fn load_examples(path: &Path, limit: usize) -> Result<Vec<Vec<Message>>, BenchError> {
    let data_err = |msg: String| BenchError::Data {
        path: path.to_owned(),
        msg,
    };
    let text = std::fs::read_to_string(path).map_err(|e| data_err(e.to_string()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        #[derive(serde::Deserialize)]
        struct Ex {
            messages: Vec<Message>,
        }
        let ex: Ex =
            serde_json::from_str(line).map_err(|e| data_err(format!("line {}: {e}", i + 1)))?;
        if ex.messages.is_empty() {
            return Err(data_err(format!("line {}: no messages", i + 1)));
        }
        out.push(ex.messages);
        if limit > 0 && out.len() >= limit {
            break;
        }
    }
    if out.is_empty() {
        return Err(data_err("no examples".into()));
    }
    Ok(out)
}

fn set_threads(threads: usize) {
    if threads > 0 {
        tch::set_num_threads(threads as i32);
    }
}

/// Greedy decoding of exactly `max_new_tokens` per prompt (eos ignored) after
/// one untimed warm-up prompt; prints tokens/s.
pub fn bench_generate(a: &GenerateArgs) -> Result<serde_json::Value, BenchError> {
    set_threads(a.common.threads);
    let tok = ChatTokenizer::load(&a.common.model, None)?;
    let model = CausalLm::load(&a.common.model, Device::Cpu, Kind::Float)?;
    let prompts: Vec<Vec<u32>> = load_examples(&a.common.data, a.limit)?
        .into_iter()
        .map(|m| {
            let ids = tok.encode(&tok.render(&m[..1], true)?)?;
            let keep = ids.len().saturating_sub(a.common.seq_len);
            Ok(ids[keep..].to_vec())
        })
        .collect::<Result<_, MlError>>()?;
    let params = SamplingParams {
        max_new_tokens: a.max_new_tokens,
        ignore_eos: true,
        ..SamplingParams::default()
    };
    let run = |p: &[u32]| {
        generate(&model, &tok, p, &params, |_, _| {
            std::ops::ControlFlow::Continue(())
        })
    };
    run(&prompts[0])?;
    let t0 = Instant::now();
    let mut new_tokens = 0;
    for p in &prompts {
        new_tokens += run(p)?.ids.len();
    }
    let dt = t0.elapsed().as_secs_f64();
    Ok(json!({
        "bench": "generate", "impl": "lorastream", "prompts": prompts.len(), "new_tokens": new_tokens,
        "seconds": round4(dt), "tokens_per_s": round2(new_tokens as f64 / dt),
        "threads": tch::get_num_threads(),
    }))
}

fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

fn round2(x: f64) -> f64 {
    (x * 1e2).round() / 1e2
}
