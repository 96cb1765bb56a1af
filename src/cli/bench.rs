//! `lorastream bench …` (binary only): the same measurements as the transformers + PEFT peer script (`peer_hf.py`),
//! with the same flags and one JSON line of the same keys, so both can be run
//! side by side and compared as a ratio.

use std::path::PathBuf;
use std::time::Instant;

use serde_json::json;

use lorastream::config::LossOn;
use lorastream::data::streams::read_jsonl as load_examples;
use lorastream_ml::generation::generate::{SamplingParams, generate};
use lorastream_ml::train::LoraOptimizer;
use lorastream_ml::train::data::{self, Encoded, Labels};
use lorastream_ml::{CausalLm, ChatTokenizer, DType, LoraSpec, Message, MlError};

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
    /// Dtype of the frozen base weights, as `[model] dtype` (auto: bf16 on a
    /// CPU with native bf16, f32 otherwise; the peer always runs f32).
    #[arg(long, default_value = "auto")]
    pub dtype: DType,
    /// cpu (as the peer), cuda, cuda:N or auto (`scripts/bench-gpu.sh`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

impl CommonArgs {
    fn load(&self) -> Result<(ChatTokenizer, CausalLm), BenchError> {
        set_threads(self.threads);
        let device =
            lorastream_ml::runtime::device::resolve(&self.device).map_err(MlError::from)?;
        let kind = self.dtype.kind(device);
        eprintln!(
            "device {device:?}, dtype {kind:?} ({})",
            self.dtype.reason(device)
        );
        // As the daemon (`lorastream_ml::load::load_base`): the tokenizer parses on a
        // second thread while the weights load.
        let (tok, model) = std::thread::scope(|s| {
            let tok = s.spawn(|| ChatTokenizer::load(&self.model, None));
            let model = CausalLm::load(&self.model, device, kind);
            let tok = tok
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (tok, model)
        });
        Ok((tok?, model?))
    }
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
    /// Decode in the model's dtype, without the server's bf16 weight copies
    /// (`[server] decode_bf16 = false`).
    #[arg(long)]
    pub no_decode_bf16: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Use only the first N examples; 0 = all.
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
}

#[derive(Debug, Clone, clap::Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Timed optimizer steps.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Untimed optimizer steps before them.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    #[arg(long, default_value_t = 16.0)]
    pub alpha: f64,
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f64,
    #[arg(long, default_value_t = 2e-4)]
    pub lr: f64,
    /// Comma-separated module names (gpt2: c_attn).
    #[arg(long, default_value = "q_proj,v_proj")]
    pub targets: String,
    /// Tokens the loss is on, as `[train] loss_on`: the daemon's default
    /// `assistant` (the LM head runs only there), or `all` as the peer (whose
    /// transformers model computes the head at every position either way).
    #[arg(long, default_value = "assistant")]
    pub loss_on: LossOn,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Ml(#[from] MlError),
    #[error(transparent)]
    Data(#[from] lorastream::data::streams::StreamError),
    #[error("no example has two or more tokens")]
    NoData,
}

/// Renders every example with the chat template (plain for GPT-2), truncates to
/// `seq_len`, keeps those of two or more tokens (and one target); the loss on
/// `labels` (every token, as the peer, or the assistant's, as the daemon).
fn encode_for_peer(
    tok: &ChatTokenizer,
    examples: &[Vec<Message>],
    seq_len: usize,
    labels: Labels,
) -> Result<Vec<Encoded>, BenchError> {
    let mut out = Vec::new();
    for m in examples {
        if let Some(e) = data::encode(tok, m, seq_len, labels)? {
            out.push(e);
        }
    }
    if out.is_empty() {
        return Err(BenchError::NoData);
    }
    Ok(out)
}

/// Perplexity over every non-pad token, after one untimed warm-up batch.
pub fn bench_eval(a: &EvalArgs) -> Result<serde_json::Value, BenchError> {
    let (tok, model) = a.common.load()?;
    let enc = encode_for_peer(
        &tok,
        &load_examples(&a.common.data, a.limit)?,
        a.common.seq_len,
        Labels::All,
    )?;
    let pad_id = tok.pad_id() as i64;
    let bs = a.common.batch_size.max(1);
    lorastream_ml::train::perplexity::perplexity_encoded(
        &model,
        &enc[..bs.min(enc.len())],
        pad_id,
        bs,
    );
    let t0 = Instant::now();
    let p = lorastream_ml::train::perplexity::perplexity_encoded(&model, &enc, pad_id, bs);
    let dt = t0.elapsed().as_secs_f64();
    let tokens: usize = enc.iter().map(|e| e.ids.len()).sum();
    Ok(json!({
        "bench": "eval", "impl": "lorastream", "perplexity": round4(p.perplexity),
        "predicted_tokens": p.tokens, "tokens": tokens, "seconds": round4(dt),
        "tokens_per_s": round2(tokens as f64 / dt), "threads": tch::get_num_threads(),
    }))
}

/// LoRA training throughput: `warmup` untimed steps, then `steps` timed ones,
/// batches taken in order and cycled, AdamW at a constant rate, clipping at 1.0.
pub fn bench_train(a: &TrainArgs) -> Result<serde_json::Value, BenchError> {
    tch::manual_seed(0);
    let (tok, mut model) = a.common.load()?;
    model.attach_lora(LoraSpec {
        r: a.rank,
        alpha: a.alpha,
        dropout: a.dropout,
        target_modules: a
            .targets
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        rslora: false,
    })?;
    let labels = match a.loss_on {
        LossOn::Assistant => Labels::Assistant,
        LossOn::All => Labels::All,
    };
    let examples = load_examples(&a.common.data, 0)?;
    let enc = encode_for_peer(&tok, &examples, a.common.seq_len, labels)?;
    let pad_id = tok.pad_id() as i64;
    let batches: Vec<Vec<&Encoded>> = enc
        .chunks(a.common.batch_size.max(1))
        .map(|c| c.iter().collect())
        .collect();
    let mut opt = LoraOptimizer::new(&model, 0.0);
    let trainable = opt.trainable();
    let mut losses = Vec::new();
    let mut tokens = 0i64;
    let mut t0 = Instant::now();
    // Where the timed steps spend their time: forward (the model body), backward
    // (incl. the LM head and loss, computed with their gradient), optimizer.
    let (mut fwd, mut bwd, mut optim) = (0.0, 0.0, 0.0);
    for step in 0..a.warmup + a.steps {
        if step == a.warmup {
            t0 = Instant::now();
            tokens = 0;
            (fwd, bwd, optim) = (0.0, 0.0, 0.0);
        }
        let ts = Instant::now();
        let b = data::pad(&batches[step % batches.len()], pad_id, model.device);
        let hidden = model.hidden(&b.ids, &b.positions, b.mask.as_ref(), None, true);
        let tf = Instant::now();
        let scale = 1.0 / b.targets.max(1) as f64;
        let loss_value =
            lorastream_ml::train::loss::backward_nll(&model, &hidden, &b.labels, scale) * scale;
        let tb = Instant::now();
        opt.step(a.lr, step + 1, 1.0);
        let to = Instant::now();
        fwd += (tf - ts).as_secs_f64();
        bwd += (tb - tf).as_secs_f64();
        optim += (to - tb).as_secs_f64();
        tokens += b.tokens;
        losses.push(loss_value);
    }
    let dt = t0.elapsed().as_secs_f64();
    Ok(json!({
        "bench": "train", "impl": "lorastream", "tokens": tokens, "seconds": round4(dt),
        "tokens_per_s": round2(tokens as f64 / dt), "steps": a.steps,
        "first_loss": round4(losses[0]), "last_loss": round4(*losses.last().unwrap_or(&f64::NAN)),
        "trainable_params": trainable, "threads": tch::get_num_threads(), "loss_on": a.loss_on.to_string(),
        "forward_s": round4(fwd), "backward_s": round4(bwd), "optimizer_s": round4(optim),
    }))
}

/// As the peer: `--threads 0` keeps libtorch's default.
fn set_threads(threads: usize) {
    if threads > 0 {
        lorastream_ml::runtime::device::set_threads(threads);
    }
}

/// Greedy decoding of exactly `max_new_tokens` per prompt (eos ignored) after
/// one untimed warm-up prompt; prints tokens/s.
pub fn bench_generate(a: &GenerateArgs) -> Result<serde_json::Value, BenchError> {
    // Where a cold start goes: process start (libtorch loading) to here, the
    // tokenizer and weights, the decode copies; the rest is the first prompt.
    let at_main = process_age_s();
    let (tok, mut model) = a.common.load()?;
    let loaded = process_age_s();
    model.set_decode_kind(lorastream_ml::runtime::device::decode_kind(
        model.device,
        model.kind,
        !a.no_decode_bf16,
    ));
    let copies = process_age_s();
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
    // The first token of the first (cold) prompt, timed from the process start.
    let mut first_token_s = None;
    generate(&model, &tok, &prompts[0], &params, |_, _| {
        first_token_s.get_or_insert_with(process_age_s);
        std::ops::ControlFlow::Continue(())
    })?;
    let t0 = Instant::now();
    let mut new_tokens = 0;
    for p in &prompts {
        new_tokens += run(p)?.ids.len();
    }
    let dt = t0.elapsed().as_secs_f64();
    Ok(json!({
        "bench": "generate", "impl": "lorastream", "prompts": prompts.len(), "new_tokens": new_tokens,
        "seconds": round4(dt), "tokens_per_s": round2(new_tokens as f64 / dt),
        "threads": tch::get_num_threads(), "first_token_s": first_token_s.map(round4),
        // Batch-1 decoding reads every matrix once per token: the bandwidth it reached.
        "weights_mb_per_token": round2(model.decode_bytes() as f64 / 1e6),
        "weights_gb_per_s": round2(model.decode_bytes() as f64 * new_tokens as f64 / dt / 1e9),
        "cold_start": {"to_main_s": round4(at_main), "load_s": round4(loaded - at_main),
                       "decode_copies_s": round4(copies - loaded)},
    }))
}

/// Seconds since this process started (its start time in `/proc/self/stat`,
/// in clock ticks since boot, against CLOCK_BOOTTIME): counts the loading of
/// libtorch before `main`. NaN where `/proc` is not readable.
fn process_age_s() -> f64 {
    let start = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name; starttime is field 22.
            let rest = s.rsplit_once(')')?.1;
            rest.split_whitespace().nth(19)?.parse::<f64>().ok()
        });
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    let now = ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9;
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    start.map_or(f64::NAN, |s| now - s / ticks)
}

fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

fn round2(x: f64) -> f64 {
    (x * 1e2).round() / 1e2
}
