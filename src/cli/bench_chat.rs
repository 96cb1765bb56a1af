//! `lorastream bench chat`: a running server measured as a client sees it —
//! time to first token and decode tokens/s of one streaming request at a time
//! (the first one cold: it loads the model), then the total tokens/s of N
//! concurrent clients. Prints one JSON line.

use std::path::PathBuf;
use std::time::Instant;

use serde_json::{Value, json};

#[derive(Debug, Clone, clap::Args)]
pub struct ChatBenchArgs {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// JSONL of chat examples; the first user message of each is a prompt.
    #[arg(long)]
    pub data: PathBuf,
    /// Use only the first N examples; 0 = all.
    #[arg(long, default_value_t = 8)]
    pub limit: usize,
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
    /// Concurrent clients of the throughput run.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// API key (or LORASTREAM_API_KEY).
    #[arg(long, env = "LORASTREAM_API_KEY")]
    pub api_key: Option<String>,
}

/// One streamed request: (seconds to the first token, seconds in all, tokens).
async fn one(
    client: &reqwest::Client,
    a: &ChatBenchArgs,
    prompt: &str,
) -> anyhow::Result<(f64, f64, u64)> {
    let body = json!({"messages": [{"role": "user", "content": prompt}], "stream": true,
                      "max_tokens": a.max_new_tokens, "temperature": 0});
    let t0 = Instant::now();
    let mut req = client
        .post(format!(
            "{}/v1/chat/completions",
            a.url.trim_end_matches('/')
        ))
        .json(&body);
    if let Some(k) = &a.api_key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await?.error_for_status()?;
    let (mut first, mut tokens) = (None, 0u64);
    super::sse::each_event(resp, |v| {
        if first.is_none()
            && v["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|c| !c.is_empty())
        {
            first = Some(t0.elapsed().as_secs_f64());
        }
        if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
            tokens = n;
        }
        Ok(())
    })
    .await?;
    let total = t0.elapsed().as_secs_f64();
    Ok((first.unwrap_or(total), total, tokens))
}

pub fn bench_chat(a: &ChatBenchArgs) -> anyhow::Result<Value> {
    let prompts: Vec<String> = lorastream::data::streams::read_jsonl(&a.data, a.limit)?
        .into_iter()
        .filter_map(|m| m.into_iter().find(|x| x.role == "user").map(|x| x.content))
        .collect();
    anyhow::ensure!(
        !prompts.is_empty(),
        "no user message in {}",
        a.data.display()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = lorastream::util::http::client_builder().build()?;
        let (cold_ttft, cold_total, _) = one(&client, a, &prompts[0]).await?;
        let mut ttft = Vec::new();
        let mut decode = Vec::new();
        let (mut all_tokens, mut all_seconds) = (0u64, 0.0);
        for p in &prompts {
            let (first, total, tokens) = one(&client, a, p).await?;
            ttft.push(first);
            all_tokens += tokens;
            all_seconds += total;
            if tokens > 1 && total > first {
                decode.push((tokens - 1) as f64 / (total - first));
            }
        }
        let t0 = Instant::now();
        let runs = (0..a.clients).map(|c| {
            let client = client.clone();
            let mine: Vec<String> = prompts.iter().skip(c).step_by(a.clients).cloned().collect();
            async move {
                let mut n = 0;
                for p in mine {
                    n += one(&client, a, &p).await?.2;
                }
                anyhow::Ok(n)
            }
        });
        let counts = futures_util::future::join_all(runs).await;
        let wall = t0.elapsed().as_secs_f64();
        let total: u64 = counts
            .into_iter()
            .collect::<anyhow::Result<Vec<u64>>>()?
            .iter()
            .sum();
        Ok(json!({
            "bench": "chat", "impl": "lorastream", "prompts": prompts.len(),
            "max_new_tokens": a.max_new_tokens,
            "cold_first_token_s": round3(cold_ttft), "cold_request_s": round3(cold_total),
            "first_token_s_median": round3(median(&mut ttft)),
            "decode_tokens_per_s_median": round3(median(&mut decode)),
            // As the peer counts: new tokens over the whole time of the requests.
            "tokens_per_s": round3(all_tokens as f64 / all_seconds),
            "clients": a.clients, "concurrent_tokens": total,
            "concurrent_tokens_per_s": round3(total as f64 / wall),
        }))
    })
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}
