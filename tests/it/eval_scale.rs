//! Evaluation that scales with data: with the shipped `[eval]` settings, a
//! decision after 50 streams of 100 examples measures less than twice what
//! one after 5 does (older streams are sampled, each to about
//! `eval_tokens_per_stream`, all together to `eval_tokens_old_streams`), and
//! `eval --full` still measures every cell whole. Prints the times (a
//! figure, not an assertion) and checks the tokens measured, which do not
//! depend on the machine.

use crate::common;

use std::path::Path;
use std::time::Instant;

use lorastream::config::Config;
use lorastream_store::{Actor, AdapterKind, AdapterState, NewAdapter, Store};
use serde_json::json;

/// `n` examples of stream `k`: questions and answers of its own, the
/// answers of about 140 target tokens (condensed Quora answers averaged
/// 196–200 in the five-topic run).
fn stream(k: usize, n: usize) -> String {
    (0..n)
        .map(|i| {
            let q = format!("What does part {i} of kit {k} hold?");
            let a = (0..4)
                .map(|j| {
                    format!(
                        "Shelf {j} of part {i} in kit {k} holds {} bolts and {} nuts.",
                        (i + j) % 7 + 1,
                        k % 5 + 2
                    )
                })
                .collect::<Vec<_>>()
                .join(" ");
            json!({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `streams` streams of 100 examples, the base row measured, then one
/// candidate on the last stream: its row's target tokens and the seconds
/// it took to fill them.
fn decision(root: &Path, streams: usize) -> (i64, f64, Config) {
    let dir = root.join(format!("n{streams}"));
    std::fs::create_dir_all(&dir).unwrap();
    common::tiny_llama(&dir.join("model"));
    let text = "[daemon]\nstate_dir = \"state\"\n[model]\ndtype = \"f32\"\nsource = \"path:model\"\n\
                [streams]\neval_fraction = 0.2\nmin_eval_examples = 8\n\
                [eval]\nprobe = false\n";
    std::fs::write(dir.join("lorastream.toml"), text).unwrap();
    let cfg = Config::load(&dir.join("lorastream.toml")).unwrap();
    std::fs::create_dir_all(cfg.state_dir()).unwrap();
    let store = Store::open(&cfg.store_path()).unwrap();
    for k in 1..=streams {
        let f = dir.join(format!("s{k}.jsonl"));
        std::fs::write(&f, stream(k, 100)).unwrap();
        lorastream::data::streams::import(
            &store,
            &cfg.state_dir(),
            &f,
            &format!("kit {k}"),
            &cfg.streams,
        )
        .unwrap();
    }
    let spec = lorastream::learn::spec::LearnSpec::from_config(&cfg);
    lorastream::learn::matrix::fill::evaluate(&spec, &store).unwrap();
    let adapter = dir.join("adapter");
    let mut m =
        lorastream_ml::CausalLm::load(&dir.join("model"), tch::Device::Cpu, tch::Kind::Float)
            .unwrap();
    common::random_lora(&mut m, 0.02);
    m.save_adapter(&adapter, None).unwrap();
    let id = store
        .insert_adapter(&NewAdapter {
            parent_id: None,
            stream_id: streams as i64,
            attempt: 1,
            kind: AdapterKind::Lora,
            path: &adapter,
            hyperparams: json!({}),
        })
        .unwrap();
    store
        .set_adapter_state(id, AdapterState::Candidate, None, Actor::Cli, "test")
        .unwrap();
    let started = Instant::now();
    lorastream::learn::matrix::fill::evaluate(&spec, &store).unwrap();
    let secs = started.elapsed().as_secs_f64();
    let tokens = store
        .evals()
        .unwrap()
        .iter()
        .filter(|c| c.adapter_id == id)
        .map(|c| c.tokens)
        .sum();
    (tokens, secs, cfg)
}

#[test]
fn a_decision_after_50_streams_measures_about_what_one_after_5_does() {
    let root = tempfile::tempdir().unwrap();
    let (few, few_secs, _) = decision(root.path(), 5);
    let (many, many_secs, cfg) = decision(root.path(), 50);
    println!(
        "BENCH evaluation per decision: 5 streams {few_secs:.2} s ({few} target tokens), \
         50 streams {many_secs:.2} s ({many} target tokens): {:.2}x the time, {:.2}x the tokens",
        many_secs / few_secs,
        many as f64 / few as f64
    );
    assert!(many as f64 <= 2.0 * few as f64, "{many} tokens vs {few}");
    // The full matrix on demand: every cell whole, more tokens than sampled.
    let out = common::lorastream()
        .args(["--config"])
        .arg(cfg.state_dir().parent().unwrap().join("lorastream.toml"))
        .args(["eval", "--full", "--json"])
        .output()
        .unwrap();
    common::assert_ok(&out);
    let store = Store::open(&cfg.store_path()).unwrap();
    let full: i64 = store
        .evals()
        .unwrap()
        .iter()
        .filter(|c| c.adapter_id == 1)
        .map(|c| c.tokens)
        .sum();
    println!("BENCH eval --full: the candidate's row on whole eval splits: {full} target tokens");
    assert!(full > 2 * many, "{full} vs sampled {many}");
}
