//! Serving many at once and serving the adapter exactly: a bf16 base with
//! versions applied unmerged equals transformers + PEFT; hot swaps leave the
//! base's bits alone; a batch answers each request as it would alone, across
//! versions, lengths and stops; a cancelled request frees its slot; a long
//! prompt is read in chunks while others stream; readiness probes.

use crate::chat::{KEY, ask, rt, start};
use crate::common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lorastream_ml::CausalLm;
use lorastream_store::{Actor, AdapterKind, AdapterState, NewAdapter, Store};
use serde_json::{Value, json};
use tch::{Device, Kind};

/// A random LoRA on every linear layer of the model at `model`, written to `out`.
fn random_adapter(model: &Path, out: &Path, seed: i64) {
    let mut m = CausalLm::load(model, Device::Cpu, Kind::Float).unwrap();
    tch::manual_seed(seed);
    common::random_lora(&mut m, 0.08);
    m.save_adapter(out, Some(model)).unwrap();
}

/// A tiny Llama, two promoted random versions (v2 served), no training:
/// the config path and the model directory.
pub(crate) fn with_versions(dir: &Path, dtype: &str, extra: &str) -> (PathBuf, PathBuf) {
    let model = dir.join("model");
    common::tiny_llama(&model);
    let config = dir.join("lorastream.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nstate_dir = \"state\"\n[model]\ndtype = \"{dtype}\"\nsource = \"path:model\"\n\
             [schedule]\ntrain = \"0 0 0 1 1 * 2099\"\ncrawl_on_start = false\n\
             [server]\nlisten = \"127.0.0.1:0\"\napi_key_env = \"LS_CHAT_KEY\"\nmemory = false\n{extra}"
        ),
    )
    .unwrap();
    let cfg = lorastream::config::Config::load(&config).unwrap();
    std::fs::create_dir_all(cfg.state_dir()).unwrap();
    let store = Store::open(&cfg.store_path()).unwrap();
    let stream = store
        .seal_stream("s1", &[], &[], &dir.join("stream"))
        .unwrap();
    for seed in [1, 2] {
        let path = dir.join(format!("adapter-{seed}"));
        random_adapter(&model, &path, seed);
        let id = store
            .insert_adapter(&NewAdapter {
                parent_id: None,
                stream_id: stream,
                attempt: seed,
                kind: AdapterKind::Lora,
                path: &path,
                hyperparams: json!({}),
            })
            .unwrap();
        for to in [AdapterState::Candidate, AdapterState::Promoted] {
            store
                .set_adapter_state(id, to, None, Actor::Cli, "test")
                .unwrap();
        }
    }
    (config, model)
}

/// A whole greedy answer: its text and the log-probability of each token.
async fn greedy(url: &str, model: &str, prompt: &str, extra: Value) -> (String, Vec<f64>) {
    let mut body = json!({"model": model, "messages": [{"role": "user", "content": prompt}],
                          "max_tokens": 16, "temperature": 0, "logprobs": true,
                          "repetition_penalty": 1.0});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let (status, _, c) = ask(url, body, &[]).await;
    assert_eq!(status, 200, "{c}");
    let text = c["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let lps = c["choices"][0]["logprobs"]["content"]
        .as_array()
        .map(|a| a.iter().map(|t| t["logprob"].as_f64().unwrap()).collect())
        .unwrap_or_default();
    (text, lps)
}

const PROMPTS: [&str; 3] = [
    "hello there",
    "What is the capital of France?",
    "Tell me a story about a cat",
];

#[test]
fn a_bf16_base_serves_versions_as_peft_does_and_swaps_leave_it_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let (config, model) = with_versions(dir.path(), "bf16", "max_tokens = 64\n");
    // transformers + PEFT, bf16 base, the adapter unmerged.
    let prompts = dir.path().join("prompts.json");
    std::fs::write(&prompts, json!(PROMPTS).to_string()).unwrap();
    let want = dir.path().join("peft.json");
    crate::parity::run_python(&[
        Path::new("peft_generate.py"),
        &model,
        &dir.path().join("adapter-2"),
        Path::new("bf16"),
        Path::new("16"),
        &prompts,
        &want,
    ]);
    let want: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&want).unwrap()).unwrap();
    let (d, url) = start(&config);
    rt().block_on(async {
        let mut first_base = Vec::new();
        for (p, w) in PROMPTS.iter().zip(&want) {
            let (text, lps) = greedy(&url, "lorastream@v2", p, json!({})).await;
            assert_eq!(text, w["text"].as_str().unwrap(), "prompt {p:?}");
            let theirs: Vec<f64> = w["logprobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            assert_eq!(lps.len(), theirs.len());
            let worst = lps
                .iter()
                .zip(&theirs)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            println!(
                "BENCH bf16 parity {p:?}: {} tokens equal, max |Δ logprob| {worst:.4}",
                lps.len()
            );
            assert!(
                worst < 0.1,
                "log-probabilities differ by {worst} (bf16 tolerance 0.1)"
            );
            first_base.push(greedy(&url, "base", p, json!({})).await);
        }
        // 100 hot swaps: versions alternate, then the base answers exactly
        // as it did before them (same text, same log-probability bits).
        for i in 0..100 {
            let v = if i % 2 == 0 {
                "lorastream@v1"
            } else {
                "lorastream@v2"
            };
            greedy(&url, v, PROMPTS[i % 3], json!({"max_tokens": 1})).await;
        }
        for (p, before) in PROMPTS.iter().zip(&first_base) {
            assert_eq!(
                &greedy(&url, "base", p, json!({})).await,
                before,
                "base after swaps, {p:?}"
            );
        }
    });
    drop(d);
}

/// Each request alone, then all at once: the same tokens.
#[test]
fn a_batch_answers_each_request_as_it_would_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = with_versions(
        dir.path(),
        "f32",
        "max_batch = 8\nprefill_chunk = 16\nmax_tokens = 64\n",
    );
    let (d, url) = start(&config);
    let long = "a much longer prompt that needs several chunks ".repeat(6);
    let cases: Vec<(&str, &str, Value)> = vec![
        ("lorastream@v2", PROMPTS[0], json!({"max_tokens": 24})),
        ("lorastream@v1", PROMPTS[1], json!({"max_tokens": 9})),
        ("base", PROMPTS[2], json!({"max_tokens": 17})),
        (
            "lorastream@v2",
            PROMPTS[2],
            json!({"max_tokens": 20, "stop": ["e"]}),
        ),
        ("lorastream@v1", &long, json!({"max_tokens": 12})),
        (
            "base",
            PROMPTS[0],
            json!({"max_tokens": 5, "frequency_penalty": 0.5, "presence_penalty": 0.3}),
        ),
    ];
    rt().block_on(async {
        let mut alone = Vec::new();
        for (m, p, x) in &cases {
            alone.push(greedy(&url, m, p, x.clone()).await);
        }
        for round in 0..2 {
            let together = futures_util::future::join_all(
                cases.iter().map(|(m, p, x)| greedy(&url, m, p, x.clone())),
            )
            .await;
            for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
                assert_eq!(a.0, t.0, "round {round}, case {i}: {:?}", cases[i]);
                assert_eq!(a.1.len(), t.1.len());
            }
        }
    });
    drop(d);
}

/// Streams `prompt`: the arrival time of each content chunk.
/// `started` hears of the first one.
async fn stream_times(
    url: &str,
    prompt: &str,
    max_tokens: usize,
    started: tokio::sync::oneshot::Sender<()>,
) -> Vec<Instant> {
    let body = json!({"model": "base", "messages": [{"role": "user", "content": prompt}],
                      "max_tokens": max_tokens, "temperature": 0, "stream": true, "ignore_eos": true});
    let resp = lorastream::util::http::client_builder()
        .build()
        .unwrap()
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut times = Vec::new();
    let mut resp = resp;
    let mut started = Some(started);
    while let Some(chunk) = resp.chunk().await.unwrap() {
        if String::from_utf8_lossy(&chunk).contains("\"content\":\"") {
            times.push(Instant::now());
            if let Some(s) = started.take() {
                let _ = s.send(());
            }
        }
    }
    times
}

#[test]
fn a_long_prompt_is_read_in_chunks_while_others_stream_and_a_cancelled_request_frees_its_slot() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = with_versions(
        dir.path(),
        "f32",
        "max_batch = 2\nprefill_chunk = 8\nmax_tokens = 400\n",
    );
    let (d, url) = start(&config);
    rt().block_on(async {
        // One stream runs; a prompt of many chunks joins it.
        let (tx, started) = tokio::sync::oneshot::channel();
        let streaming = tokio::spawn({
            let url = url.clone();
            async move { stream_times(&url, "hello", 400, tx).await }
        });
        started.await.unwrap();
        let long = "tell me about the weather and the sea and the mountains ".repeat(12);
        let joined = Instant::now();
        let (text, _) = greedy(&url, "base", &long, json!({"max_tokens": 2})).await;
        let answered = Instant::now();
        assert!(!text.is_empty());
        let times = streaming.await.unwrap();
        let during: Vec<_> = times.iter().filter(|t| **t > joined && **t < answered).collect();
        let gaps: Vec<f64> = times.windows(2).map(|w| (w[1] - w[0]).as_secs_f64() * 1e3).collect();
        let max_gap = gaps.iter().copied().fold(0.0, f64::max);
        let median = {
            let mut g = gaps.clone();
            g.sort_by(f64::total_cmp);
            g[g.len() / 2]
        };
        println!(
            "BENCH chunked prefill: long prompt answered in {:.0} ms; the running stream got {} tokens meanwhile; its gaps: median {median:.1} ms, max {max_gap:.1} ms",
            (answered - joined).as_secs_f64() * 1e3,
            during.len()
        );
        // The prompt is over 100 tokens, 8 a step: read over 12+ steps, each
        // giving the stream a token. Read at once, the stream would get only
        // the 2-3 tokens of the long request's own answer meanwhile.
        assert!(
            during.len() >= 8,
            "the running stream got {} tokens while the prompt was read",
            during.len()
        );

        // Two slots: a cancelled stream frees its slot for the next request.
        let body = json!({"model": "base", "messages": [{"role": "user", "content": "hi"}],
                          "max_tokens": 400, "temperature": 0, "stream": true, "ignore_eos": true});
        let client = lorastream::util::http::client_builder().build().unwrap();
        let send = || client.post(format!("{url}/v1/chat/completions")).bearer_auth(KEY).json(&body).send();
        let (mut a, b) = (send().await.unwrap(), send().await.unwrap());
        a.chunk().await.unwrap();
        drop(b); // hangs up mid-stream
        let t = Instant::now();
        let (text, _) = greedy(&url, "base", "hello", json!({"max_tokens": 3})).await;
        println!("BENCH a third request with two slots, one cancelled: answered in {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
        assert!(!text.is_empty());
        // It did not wait for `a`, which still holds the other slot.
        let metrics = client.get(format!("{url}/metrics")).bearer_auth(KEY).send().await.unwrap();
        let metrics = metrics.text().await.unwrap();
        assert!(
            metrics.contains("lorastream_chat_batch_size 1"),
            "one sequence (a) still running: {}",
            metrics.lines().find(|l| l.starts_with("lorastream_chat_batch_size")).unwrap_or("")
        );
        drop(a);
    });
    drop(d);
}

#[test]
fn health_and_ready_answer_without_a_key_and_the_first_request_finds_the_model_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = with_versions(dir.path(), "f32", "max_tokens = 64\n");
    let (d, url) = start(&config);
    rt().block_on(async {
        let client = lorastream::util::http::client_builder().build().unwrap();
        let h = client.get(format!("{url}/health")).send().await.unwrap();
        assert_eq!(h.status(), 200);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = client.get(format!("{url}/ready")).send().await.unwrap();
            if r.status() == 200 {
                break;
            }
            assert_eq!(r.status(), 503);
            assert!(Instant::now() < deadline, "never ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let t = Instant::now();
        greedy(&url, "base", "hello", json!({"max_tokens": 1})).await;
        let first = t.elapsed();
        let t = Instant::now();
        greedy(&url, "base", "hello", json!({"max_tokens": 1})).await;
        println!(
            "BENCH first request after /ready: {:.0} ms; second: {:.0} ms",
            first.as_secs_f64() * 1e3,
            t.elapsed().as_secs_f64() * 1e3
        );
        // Sampling parameters out of range, or not implemented, are 400s.
        for bad in [
            json!({"n": 2}),
            json!({"top_logprobs": 3}),
            json!({"frequency_penalty": 3.0}),
            json!({"logprobs": true, "top_logprobs": 21}),
        ] {
            let mut body = json!({"messages": [{"role": "user", "content": "hi"}]});
            for (k, v) in bad.as_object().unwrap() {
                body[k] = v.clone();
            }
            let (status, _, e) = ask(&url, body, &[]).await;
            assert_eq!(status, 400, "{bad}: {e}");
        }
        let (_, _, c) = ask(
            &url,
            json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
            "temperature": 0, "logprobs": true, "top_logprobs": 2}),
            &[],
        )
        .await;
        let content = c["choices"][0]["logprobs"]["content"]
            .as_array()
            .unwrap()
            .clone();
        assert!(!content.is_empty(), "{c}");
        for t in content {
            let top = t["top_logprobs"].as_array().unwrap();
            assert_eq!(top.len(), 2);
            assert!(top[0]["logprob"].as_f64().unwrap() >= t["logprob"].as_f64().unwrap() - 1e-6);
        }
    });
    drop(d);
}

/// 100 swaps between two versions in a bf16 model, each running a batch:
/// every base weight keeps the bits of a fresh load (adapters are applied
/// beside the weights, never added into them).
#[test]
fn a_hundred_swaps_leave_bf16_base_weights_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    common::tiny_llama(&model);
    for seed in [1, 2] {
        random_adapter(&model, &dir.path().join(format!("a{seed}")), seed);
    }
    let m = CausalLm::load(&model, Device::Cpu, Kind::BFloat16).unwrap();
    let adapters = [1, 2].map(|s| m.read_adapter(&dir.path().join(format!("a{s}"))).unwrap());
    let ids = tch::Tensor::from_slice(&[5i64, 9, 13]).unsqueeze(0);
    let positions = tch::Tensor::from_slice(&[0i64, 1, 2]).unsqueeze(0);
    let mut outputs = Vec::new();
    for i in 0..100 {
        let mut cache = m.new_cache();
        let seg = lorastream_ml::Segment {
            len: 3,
            cache: &mut cache,
            adapter: Some(&adapters[i % 2]),
        };
        outputs.push(m.forward_segments(&ids, &positions, vec![seg], None));
    }
    assert!(!outputs[0].equal(&outputs[1]), "the two versions differ");
    assert!(
        outputs[0].equal(&outputs[98]),
        "a version answers the same after 98 swaps"
    );
    let fresh = CausalLm::load(&model, Device::Cpu, Kind::BFloat16).unwrap();
    let weights = |m: &CausalLm| {
        let mut w: Vec<tch::Tensor> = m
            .linears()
            .iter()
            .map(|l| l.weight.shallow_clone())
            .collect();
        w.push(m.head_weight().shallow_clone());
        w
    };
    let (now, then) = (weights(&m), weights(&fresh));
    assert_eq!(now.len(), then.len());
    for (a, b) in now.iter().zip(&then) {
        assert!(a.equal(b), "a base weight changed");
    }
    println!(
        "BENCH 100 swaps: {} base matrices bit-identical to a fresh load",
        now.len()
    );
}
