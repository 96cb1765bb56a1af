//! Numerical parity with transformers + PEFT (the reference implementation).
//!
//! `tests/parity/make_reference.py` builds tiny random models of every family
//! (GPT-2; Llama with GQA, non-default rope theta, llama3 rope scaling; Qwen2
//! with q/k/v biases; Qwen3 with q/k norms and a separate head_dim; Mistral;
//! Phi-3 with fused q/k/v and gate/up; Gemma; Gemma 2 with soft-capped
//! scores and logits and a sliding layer shorter than the inputs; Gemma 3
//! with a sliding layer on its own rotary theta) and a PEFT adapter with non-zero B,
//! and records their logits; these tests load the same files in
//! Rust and compare. The Python side runs in the venv made by
//! `scripts/setup-libtorch.sh` (`make test` runs it first).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use lorastream_ml::tokenizer::Message;
use lorastream_ml::{CausalLm, ChatTokenizer, LoraSpec};
use tch::{Device, Kind, Tensor};

const TOL: f64 = 1e-4;
const MODELS: [&str; 12] = [
    "gpt2", "llama", "llama3", "qwen2", "qwen3", "mistral", "phi3", "phi4", "gemma", "gemma2",
    "gemma3", "gemma3mm",
];

fn python() -> PathBuf {
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        py.exists(),
        "{} is missing: run scripts/setup-libtorch.sh (make test does) to install the parity test packages",
        py.display()
    );
    py
}

pub(crate) fn run_python(args: &[&Path]) {
    let script_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/parity");
    let mut cmd = Command::new(python());
    cmd.env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_VERBOSITY", "error");
    let (script, rest) = args.split_first().unwrap();
    let out = cmd
        .arg(script_dir.join(script))
        .args(rest)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{} failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Reference files, made once per test binary.
fn reference() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        run_python(&[Path::new("make_reference.py"), dir.path()]);
        dir
    })
    .path()
}

struct Ref {
    ids: Tensor,
    mask: Tensor,
    logits: Tensor,
    logits_lora: Tensor,
}

fn load_ref(name: &str) -> Ref {
    let mut m: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(reference().join(name).join("reference.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let mut take = |k: &str| m.remove(k).unwrap();
    Ref {
        ids: take("input_ids"),
        mask: take("attention_mask"),
        logits: take("logits"),
        logits_lora: take("logits_lora"),
    }
}

fn load_model(name: &str) -> CausalLm {
    CausalLm::load(&reference().join(name), Device::Cpu, Kind::Float).unwrap()
}

/// Logits of `m` on the reference inputs, without gradients.
fn ref_logits(m: &CausalLm, r: &Ref) -> Tensor {
    tch::no_grad(|| m.forward(&r.ids, Some(&r.mask), None, false))
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

fn assert_close(what: &str, a: &Tensor, b: &Tensor) {
    let d = max_diff(a, b);
    eprintln!("{what}: max abs diff {d:.2e}");
    assert!(d <= TOL, "{what}: max abs diff {d:e} > {TOL:e}");
}

#[test]
fn base_logits_match_transformers() {
    for name in MODELS {
        let r = load_ref(name);
        let m = load_model(name);
        let logits = ref_logits(&m, &r);
        assert_close(&format!("{name} base"), &logits, &r.logits);
    }
}

#[test]
fn kv_cache_decode_equals_full_forward() {
    for name in MODELS {
        let r = load_ref(name);
        let m = load_model(name);
        let row = r.ids.narrow(0, 0, 1);
        let t = row.size()[1];
        let full = tch::no_grad(|| m.forward(&row, None, None, false));
        // Prefill 4 tokens, then one at a time.
        let mut cache = m.new_cache();
        let mut parts = vec![tch::no_grad(|| {
            m.forward(&row.narrow(1, 0, 4), None, Some(&mut cache), false)
        })];
        for i in 4..t {
            parts.push(tch::no_grad(|| {
                m.forward(&row.narrow(1, i, 1), None, Some(&mut cache), false)
            }));
        }
        assert_eq!(cache.len, t);
        assert_close(&format!("{name} cached"), &Tensor::cat(&parts, 1), &full);
        assert_close(
            &format!("{name} unpadded row vs reference"),
            &full,
            &r.logits.narrow(0, 0, 1),
        );
    }
}

#[test]
fn peft_adapter_loads_and_matches() {
    for name in MODELS {
        let r = load_ref(name);
        let mut m = load_model(name);
        m.load_adapter(&reference().join(name).join("adapter"))
            .unwrap();
        let logits = ref_logits(&m, &r);
        assert_close(&format!("{name} + PEFT adapter"), &logits, &r.logits_lora);
        assert!(
            max_diff(&r.logits_lora, &r.logits) > 1e-3,
            "the adapter must change the outputs"
        );
    }
}

#[test]
fn a_merged_export_equals_the_unmerged_adapter() {
    for name in MODELS {
        let r = load_ref(name);
        let mut m = load_model(name);
        m.load_adapter(&reference().join(name).join("adapter"))
            .unwrap();
        let spec = m.lora.clone().unwrap();
        assert_ne!(spec.alpha, spec.r as f64, "the test needs alpha != r");
        let unmerged = ref_logits(&m, &r);
        // The merged export loads as a plain model with the same outputs,
        // and leaves the model's own weights as they were.
        let out = tempfile::tempdir().unwrap();
        m.export_merged(out.path()).unwrap();
        assert_close(
            &format!("{name} after export"),
            &ref_logits(&m, &r),
            &unmerged,
        );
        let exported = CausalLm::load(out.path(), Device::Cpu, Kind::Float).unwrap();
        let logits = ref_logits(&exported, &r);
        assert_close(&format!("{name} exported merged"), &logits, &unmerged);
    }
}

/// The mean next-token cross-entropy of `logits` on the reference inputs
/// (padded positions left out), as the reference script computes it.
fn next_token_loss(logits: &Tensor, r: &Ref) -> Tensor {
    let t = r.ids.size()[1];
    let v = logits.size()[2];
    let labels = r
        .ids
        .narrow(1, 1, t - 1)
        .masked_fill(&r.mask.narrow(1, 1, t - 1).eq(0), -100);
    logits
        .narrow(1, 0, t - 1)
        .reshape([-1, v])
        .cross_entropy_loss::<Tensor>(&labels.reshape([-1]), None, tch::Reduction::Mean, -100, 0.0)
}

#[test]
fn lora_gradients_match_peft() {
    for name in MODELS {
        let r = load_ref(name);
        let mut m = load_model(name);
        m.load_adapter(&reference().join(name).join("adapter"))
            .unwrap();
        for (_, p) in m.lora_params() {
            let _ = p.set_requires_grad(true);
        }
        let logits = m.forward(&r.ids, Some(&r.mask), None, true);
        next_token_loss(&logits, &r).backward();
        let theirs: std::collections::HashMap<String, Tensor> =
            Tensor::read_safetensors(reference().join(name).join("grads.safetensors"))
                .unwrap()
                .into_iter()
                .collect();
        let ours = m.lora_params();
        assert_eq!(ours.len(), theirs.len(), "{name}: LoRA tensors");
        let worst = ours
            .iter()
            .map(|(k, p)| max_diff(&p.grad(), &theirs[k]))
            .fold(0.0, f64::max);
        eprintln!(
            "{name} LoRA gradients: max abs diff {worst:.2e} over {} tensors",
            ours.len()
        );
        assert!(worst <= TOL, "{name}: LoRA gradients differ by {worst:e}");
    }
}

/// Trains a fresh adapter one SGD step in Rust, saves it, loads it with PEFT in
/// Python, and compares the logits.
#[test]
fn rust_trained_adapter_loads_in_peft() {
    for name in MODELS {
        let r = load_ref(name);
        let mut m = load_model(name);
        let targets = match name {
            "gpt2" => vec!["c_attn", "c_fc"],
            "phi3" | "phi4" => vec!["qkv_proj", "gate_up_proj"],
            _ => vec!["q_proj", "v_proj", "down_proj"],
        };
        m.attach_lora(LoraSpec {
            r: 4,
            alpha: 12.0,
            dropout: 0.0,
            target_modules: targets.iter().map(|s| s.to_string()).collect(),
            rslora: false,
        })
        .unwrap();
        let before = ref_logits(&m, &r);
        assert_close(
            &format!("{name} fresh adapter is a no-op"),
            &before,
            &r.logits,
        );

        let logits = m.forward(&r.ids, Some(&r.mask), None, true);
        let loss = next_token_loss(&logits, &r);
        loss.backward();
        tch::no_grad(|| {
            for (_, p) in m.lora_params() {
                let g = p.grad();
                let mut p = p.shallow_clone();
                let _ = p.g_sub_(&(g * 5.0));
            }
        });
        let after = ref_logits(&m, &r);
        assert!(
            max_diff(&after, &r.logits) > 1e-3,
            "{name}: one step must move the outputs"
        );

        let dir = tempfile::tempdir().unwrap();
        let adapter = dir.path().join("adapter");
        m.save_adapter(&adapter, None).unwrap();
        let out = dir.path().join("peft_logits.safetensors");
        let ref_file = reference().join(name).join("reference.safetensors");
        run_python(&[
            Path::new("peft_logits.py"),
            &reference().join(name),
            &adapter,
            &ref_file,
            &out,
        ]);
        let peft = Tensor::read_safetensors(&out).unwrap().remove(0).1;
        assert_close(&format!("{name} Rust adapter in PEFT"), &peft, &after);

        // And it loads back in Rust the same.
        let mut again = load_model(name);
        again.load_adapter(&adapter).unwrap();
        let reloaded = ref_logits(&again, &r);
        assert_close(&format!("{name} Rust adapter reloaded"), &reloaded, &after);
    }
}

#[test]
fn chat_template_and_ids_match_transformers() {
    let dir = reference().join("tok");
    let tok = ChatTokenizer::load(&dir, None).unwrap();
    assert!(tok.has_template);
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    assert_eq!(cases.len(), 6);
    for c in cases {
        let messages: Vec<Message> = serde_json::from_value(c["messages"].clone()).unwrap();
        let add_gen = c["add_generation_prompt"].as_bool().unwrap();
        let text = tok.render(&messages, add_gen).unwrap();
        assert_eq!(
            text,
            c["text"].as_str().unwrap(),
            "rendering of {messages:?} gen={add_gen}"
        );
        let ids: Vec<u64> = tok
            .encode(&text)
            .unwrap()
            .into_iter()
            .map(u64::from)
            .collect();
        let want: Vec<u64> = serde_json::from_value(c["ids"].clone()).unwrap();
        assert_eq!(ids, want, "ids of {text:?}");
    }
}

/// A model with sliding layers (the Gemma 2 reference: layer 0 sees 4 of the
/// 10 positions) gives the same logits however its tokens are batched:
/// whole, in chunks against a cache, and decoding together in a pool of
/// slots (the serving paths), for three sequences at different lengths.
#[test]
fn sliding_layers_agree_on_every_attention_path() {
    use lorastream_ml::Segment;
    use lorastream_ml::nn::kv_pool::KvPool;
    let (r, m) = (load_ref("gemma2"), load_model("gemma2"));
    let t = r.ids.size()[1];
    let seqs = [r.ids.get(0), r.ids.get(0).flip([0]), r.ids.get(1)];
    let whole: Vec<Tensor> = seqs
        .iter()
        .map(|s| tch::no_grad(|| m.forward(&s.unsqueeze(0), None, None, false).get(0)))
        .collect();
    let pool = KvPool::new(&m.config, Kind::Float, Device::Cpu, 3, t);
    let mut caches: Vec<_> = (0..3).map(|i| pool.cache(i)).collect();
    // Tokens each sequence takes per pass: prompts in chunks, single tokens
    // (decoded together when two or more are), sums of 10.
    let plan = [[5, 3, 1], [1, 1, 4], [2, 1, 1], [1, 1, 1], [1, 4, 3]];
    let mut at = [0i64; 3];
    for lens in plan {
        let pick = |i: usize| seqs[i].narrow(0, at[i], lens[i]);
        let ids = Tensor::cat(&[pick(0), pick(1), pick(2)], 0).unsqueeze(0);
        let pos: Vec<Tensor> = (0..3)
            .map(|i| Tensor::arange_start(at[i], at[i] + lens[i], (Kind::Int64, Device::Cpu)))
            .collect();
        let positions = Tensor::cat(&pos, 0).unsqueeze(0);
        let segments = caches
            .iter_mut()
            .zip(lens)
            .map(|(cache, len)| Segment {
                len,
                cache,
                adapter: None,
            })
            .collect();
        let h = m.forward_segments(&ids, &positions, segments, Some(&pool));
        let logits = tch::no_grad(|| m.logits(&h));
        for i in 0..3 {
            at[i] += lens[i];
            let what = format!("sequence {i} at {} after {lens:?}", at[i]);
            assert_close(&what, &logits.get(i as i64), &whole[i].get(at[i] - 1));
        }
    }
}
