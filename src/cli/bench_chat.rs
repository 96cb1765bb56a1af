//! `lorastream bench chat`: any OpenAI-compatible server measured as its
//! clients see it. For each client count, that many clients stream requests
//! at once (each `--rounds` in a row); one JSON line per count gives the
//! aggregate tokens/s and the p50/p95 time to first token and time between
//! tokens. Usage is asked for with `stream_options.include_usage`, so the
//! same client measures a peer (vLLM, llama.cpp's server) with no flag.

use std::path::PathBuf;
use std::time::Instant;

use serde_json::{Value, json};

#[derive(Debug, Clone, clap::Args)]
pub struct ChatBenchArgs {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// JSONL of chat examples; the first user message of each is a prompt
    /// (default: a few built-in questions).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Use only the first N examples; 0 = all.
    #[arg(long, default_value_t = 16)]
    pub limit: usize,
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
    /// Client counts to measure, in order.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
    pub clients: Vec<usize>,
    /// Requests each client sends one after another.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// The `model` requests name (a peer needs its served name).
    #[arg(long)]
    pub model: Option<String>,
    /// What the JSON lines call the server.
    #[arg(long, default_value = "lorastream")]
    pub label: String,
    /// Stop at end-of-sequence instead of generating `max_new_tokens`.
    #[arg(long)]
    pub allow_eos: bool,
    /// API key (or LORASTREAM_API_KEY).
    #[arg(long, env = "LORASTREAM_API_KEY")]
    pub api_key: Option<String>,
}

/// Prompts when no data is given.
const PROMPTS: &[&str] = &[
    "What is the best way to learn a new language?",
    "Why is the sky blue?",
    "How do I start running if I have never exercised?",
    "What makes a good cup of coffee?",
    "How does a refrigerator keep food cold?",
    "What should I look for when buying a used car?",
    "Why do cats purr?",
    "How can I sleep better at night?",
];

/// One streamed request as the client saw it.
struct Timed {
    ttft: f64,
    /// Seconds between consecutive content chunks.
    gaps: Vec<f64>,
    tokens: u64,
}

async fn one(client: &reqwest::Client, a: &ChatBenchArgs, prompt: &str) -> anyhow::Result<Timed> {
    let mut body = json!({"messages": [{"role": "user", "content": prompt}], "stream": true,
        "max_tokens": a.max_new_tokens, "temperature": 0,
        "stream_options": {"include_usage": true}, "ignore_eos": !a.allow_eos});
    if let Some(m) = &a.model {
        body["model"] = json!(m);
    }
    let t0 = Instant::now();
    let url = format!("{}/v1/chat/completions", a.url.trim_end_matches('/'));
    let mut req = client.post(url).json(&body);
    if let Some(k) = &a.api_key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await?.error_for_status()?;
    let (mut first, mut last, mut gaps, mut tokens) = (None, None::<f64>, Vec::new(), 0u64);
    super::sse::each_event(resp, |v| {
        let content = v["choices"][0]["delta"]["content"].as_str();
        if content.is_some_and(|c| !c.is_empty()) {
            let now = t0.elapsed().as_secs_f64();
            first.get_or_insert(now);
            if let Some(l) = last {
                gaps.push(now - l);
            }
            last = Some(now);
        }
        if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
            tokens = n;
        }
        Ok(())
    })
    .await?;
    let total = t0.elapsed().as_secs_f64();
    Ok(Timed {
        ttft: first.unwrap_or(total),
        gaps,
        tokens,
    })
}

/// `clients` clients at once, each sending `rounds` requests: one JSON line.
async fn phase(
    client: &reqwest::Client,
    a: &ChatBenchArgs,
    prompts: &[String],
    clients: usize,
) -> anyhow::Result<Value> {
    let t0 = Instant::now();
    let runs = (0..clients).map(|c| async move {
        let mut done = Vec::new();
        for r in 0..a.rounds.max(1) {
            let p = &prompts[(c + r * clients) % prompts.len()];
            done.push(one(client, a, p).await?);
        }
        anyhow::Ok(done)
    });
    let results = futures_util::future::join_all(runs).await;
    let wall = t0.elapsed().as_secs_f64();
    let all: Vec<Timed> = results
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect();
    let tokens: u64 = all.iter().map(|t| t.tokens).sum();
    let mut ttft: Vec<f64> = all.iter().map(|t| t.ttft).collect();
    let mut gaps: Vec<f64> = all.iter().flat_map(|t| t.gaps.iter().copied()).collect();
    Ok(json!({
        "bench": "chat", "impl": a.label, "clients": clients, "requests": all.len(),
        "max_new_tokens": a.max_new_tokens, "tokens": tokens, "wall_s": round(wall, 3),
        "tokens_per_s": round(tokens as f64 / wall, 2),
        "ttft_p50_s": round(pct(&mut ttft, 0.5), 3), "ttft_p95_s": round(pct(&mut ttft, 0.95), 3),
        "tbt_p50_ms": round(pct(&mut gaps, 0.5) * 1e3, 1),
        "tbt_p95_ms": round(pct(&mut gaps, 0.95) * 1e3, 1),
    }))
}

/// Prints one JSON line per client count (after one warm-up request).
pub fn bench_chat(a: &ChatBenchArgs) -> anyhow::Result<()> {
    let prompts: Vec<String> = match &a.data {
        Some(d) => lorastream::data::streams::read_jsonl(d, a.limit)?
            .into_iter()
            .filter_map(|m| m.into_iter().find(|x| x.role == "user").map(|x| x.content))
            .collect(),
        None => PROMPTS.iter().map(|p| p.to_string()).collect(),
    };
    anyhow::ensure!(!prompts.is_empty(), "no user message in the data");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = lorastream::util::http::client_builder().build()?;
        one(&client, a, &prompts[0]).await?;
        for &c in &a.clients {
            println!("{}", phase(&client, a, &prompts, c.max(1)).await?);
        }
        Ok(())
    })
}

/// The `q` quantile (nearest rank) of `v`; NaN when empty.
fn pct(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}
