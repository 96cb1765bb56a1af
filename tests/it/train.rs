//! Continual training on streams: labels, packing, and three real Quora
//! streams in sequence with the perplexity matrix (runs through the CLI are in
//! `train_runs`).

use std::path::Path;
use std::sync::atomic::AtomicBool;

use lorastream::config::Config;
use lorastream_ml::models::init::{InitOptions, Preset, init_model};
use lorastream_ml::train::data::{self, IGNORE, Labels};
use lorastream_ml::{Arch, CausalLm, ChatTokenizer, Message};
use lorastream_store::{Actor, AdapterState, Store};
use tch::{Device, Kind};

pub(crate) fn init(dir: &Path, arch: Arch, corpus: Option<&Path>) {
    init_preset(dir, arch, corpus, Preset::Tiny);
}

pub(crate) fn init_preset(dir: &Path, arch: Arch, corpus: Option<&Path>, preset: Preset) {
    init_model(
        dir,
        &InitOptions {
            arch,
            preset,
            corpus,
            seed: 3,
            vocab_size: 1024,
        },
    )
    .unwrap();
}

pub(crate) fn chat(q: &str, a: &str) -> Vec<Message> {
    vec![Message::new("user", q), Message::new("assistant", a)]
}

#[test]
fn labels_cover_exactly_the_assistant_turns() {
    let dir = tempfile::tempdir().unwrap();
    for arch in [Arch::Gpt2, Arch::Llama] {
        init(dir.path(), arch, None);
        let tok = ChatTokenizer::load(dir.path(), None).unwrap();
        let m = vec![
            Message::new("user", "What is LoRA?"),
            Message::new("assistant", "Low-rank adaptation."),
            Message::new("user", "And replay?"),
            Message::new("assistant", "Old examples mixed in."),
        ];
        let e = data::encode(&tok, &m, 512, Labels::Assistant)
            .unwrap()
            .unwrap();
        let learned: Vec<u32> = e
            .labels
            .iter()
            .filter(|&&l| l != IGNORE)
            .map(|&l| l as u32)
            .collect();
        let text = tok.decode(&learned);
        assert!(
            text.contains("Low-rank adaptation.") && text.contains("Old examples mixed in."),
            "{arch:?}: {text:?}"
        );
        assert!(
            !text.contains("What is LoRA") && !text.contains("And replay"),
            "{arch:?}: {text:?}"
        );
        let eos = tok.eos_token.clone().unwrap();
        assert!(
            text.contains(&eos),
            "{arch:?}: the end-of-turn token is learned: {text:?}"
        );
        let all = data::encode(&tok, &m, 512, Labels::All).unwrap().unwrap();
        assert_eq!(all.labels, all.ids);
        let short = data::encode(&tok, &m, 5, Labels::All).unwrap().unwrap();
        assert_eq!(short.ids.len(), 5);
    }
}

#[test]
fn packed_batches_give_the_same_loss_as_padded_ones() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path(), Arch::Llama, None);
    let tok = ChatTokenizer::load(dir.path(), None).unwrap();
    let model = CausalLm::load(dir.path(), Device::Cpu, Kind::Float).unwrap();
    let enc: Vec<_> = [
        ("What is Rust?", "A language."),
        ("Why test?", "To know it works."),
        ("Hi", "Hello there, friend."),
    ]
    .iter()
    .map(|(q, a)| {
        data::encode(&tok, &chat(q, a), 64, Labels::Assistant)
            .unwrap()
            .unwrap()
    })
    .collect();
    let refs: Vec<_> = enc.iter().collect();
    let loss = |b: data::Batch| {
        let logits =
            tch::no_grad(|| model.forward_raw(&b.ids, &b.positions, b.mask.as_ref(), None, false));
        (
            data::nll_sum(&logits, &b.labels).double_value(&[]),
            b.targets,
            b.ids.size()[0],
        )
    };
    let (padded, t1, rows1) = loss(data::pad(&refs, tok.pad_id() as i64, Device::Cpu));
    let (packed, t2, rows2) = loss(data::pack(&refs, 1024, tok.pad_id() as i64, Device::Cpu));
    assert_eq!((rows1, rows2), (3, 1), "three examples fit one packed row");
    assert_eq!(t1, t2);
    assert!(
        (padded - packed).abs() < 1e-3 * padded.abs(),
        "padded {padded} vs packed {packed}"
    );
}

/// Turns the first `n` answered rows of a Quora CSV into chat examples.
fn quora_examples(csv_path: &Path, n: usize) -> Vec<Vec<Message>> {
    let mut r = csv::Reader::from_path(csv_path).unwrap();
    let headers = r.headers().unwrap().clone();
    let q = headers.iter().position(|h| h == "Questions").unwrap();
    let a = headers.iter().position(|h| h == "Answers").unwrap();
    let mut out = Vec::new();
    for rec in r.records() {
        let rec = rec.unwrap();
        let (question, answer) = (rec[q].trim(), rec[a].trim());
        if question.is_empty() || answer.len() < 40 {
            continue;
        }
        let answer: String = answer.chars().take(300).collect();
        out.push(chat(question, &answer));
        if out.len() == n {
            break;
        }
    }
    out
}

pub(crate) fn write_jsonl(path: &Path, examples: &[Vec<Message>]) {
    let lines: Vec<String> = examples
        .iter()
        .map(|m| serde_json::json!({ "messages": m }).to_string())
        .collect();
    std::fs::write(path, lines.join("\n")).unwrap();
}

pub(crate) fn config(dir: &Path, extra: &str) -> Config {
    let text = format!(
        "[daemon]\nstate_dir = \"state\"\n[model]\ndtype = \"f32\"\nsource = \"path:model\"\nthreads = 2\n\
         [lora]\nr = 8\nalpha = 16.0\ntarget_modules = [\"c_attn\", \"c_proj\", \"c_fc\"]\n\
         [streams]\neval_fraction = 0.2\n[eval]\nbatch_size = 8\n{extra}"
    );
    std::fs::write(dir.join("lorastream.toml"), &text).unwrap();
    Config::load(&dir.join("lorastream.toml")).unwrap()
}

/// Epochs per stream in `TRAIN`.
const EPOCHS: usize = 4;
const TRAIN: &str = "[train]\nepochs_per_stream = 4\nbatch_size = 4\nseq_len = 128\nlr = 0.01\nwarmup_steps = 2\ncheckpoint_every = 10\npatience = 0\n";

#[test]
fn three_quora_streams_in_sequence() {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/quora");
    if !shared.is_dir() {
        eprintln!(
            "skipped: {} is absent (the real Quora exports live in ../shared)",
            shared.display()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let topics = ["software engineering", "ai", "algorithms"];
    let mut files = Vec::new();
    for (i, t) in topics.iter().enumerate() {
        let ex = quora_examples(&shared.join(format!("{t} - Quora_with_responses.csv")), 40);
        assert_eq!(ex.len(), 40, "{t}");
        let f = dir.path().join(format!("s{}.jsonl", i + 1));
        write_jsonl(&f, &ex);
        files.push(f);
    }
    init_preset(
        &dir.path().join("model"),
        Arch::Gpt2,
        Some(&files[0]),
        Preset::Small,
    );
    let cfg = config(dir.path(), TRAIN);
    let store = Store::open(&cfg.store_path()).unwrap();
    let stop = AtomicBool::new(false);
    let mut versions = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let (sid, new, _) = lorastream::data::streams::import(
            &store,
            &cfg.state_dir(),
            f,
            &format!("s{i}"),
            &cfg.streams,
        )
        .unwrap();
        assert!(new >= 35);
        let t = lorastream::learn::pipeline::train_stream(
            &lorastream::learn::spec::LearnSpec::from_config(&cfg),
            &store,
            None,
            lorastream_store::Actor::Cli,
            &stop,
            |_| {},
        )
        .unwrap();
        assert_eq!(t.stream_id, sid);
        // Every epoch sees the same examples, so the mean loss of the first
        // and the last epoch compare like with like (a few batches do not).
        let l = &t.outcome.losses;
        assert_eq!(l.len() % EPOCHS, 0, "no early stop: {} steps", l.len());
        let epochs: Vec<f32> = l
            .chunks(l.len() / EPOCHS)
            .map(|c| c.iter().sum::<f32>() / c.len() as f32)
            .collect();
        assert!(
            epochs[EPOCHS - 1] < epochs[0],
            "stream {sid}: the mean loss must fall from the first epoch to the last: {epochs:?}"
        );
        // Continual: the next stream starts from this adapter.
        store
            .set_adapter_state(
                t.adapter_id,
                AdapterState::Promoted,
                None,
                Actor::Cli,
                "test",
            )
            .unwrap();
        versions.push((t.adapter_id, sid));
    }
    let adapters = store.adapters().unwrap();
    assert_eq!(
        adapters[1].parent_id,
        Some(adapters[0].id),
        "stream 2 continues from v1"
    );
    assert_eq!(adapters[2].parent_id, Some(adapters[1].id));

    let m = lorastream::learn::matrix::fill::evaluate(
        &lorastream::learn::spec::LearnSpec::from_config(&cfg),
        &store,
    )
    .unwrap();
    eprintln!("{}", m);
    let cell = |v: i64, s: i64| {
        let r = m.versions.iter().position(|&x| x == v).unwrap();
        let c = m.streams.iter().position(|&x| x == s).unwrap();
        m.cells[r][c]
    };
    for (k, &(v, sk)) in versions.iter().enumerate() {
        for &(_, si) in &versions[..=k] {
            assert!(cell(v, si).is_some(), "R[v{v}][stream {si}] missing");
        }
        let base = cell(0, sk).unwrap();
        let after = cell(v, sk).unwrap();
        assert!(
            after < base,
            "after stream {sk}: ppl {after} must be below the base model's {base}"
        );
    }
    assert_eq!(
        store.evals().unwrap().len(),
        3 + 6 + 4,
        "base row (3) + 1 + 2 + 3 cells, and the probe set for each of the 4 rows"
    );
    // A second evaluate computes nothing new.
    let again = lorastream::learn::matrix::fill::evaluate(
        &lorastream::learn::spec::LearnSpec::from_config(&cfg),
        &store,
    )
    .unwrap();
    assert_eq!(again.cells, m.cells);
}
