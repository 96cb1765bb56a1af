//! GGUF import: parity with transformers' own GGUF loading, and refusal of
//! corrupt or unsupported files.
//!
//! `tests/parity/make_gguf.py` writes a tiny random Llama model with the `gguf`
//! package (every tensor type we read, llama.cpp names and Q/K order, a BPE
//! tokenizer and chat template) and tiny Qwen2 and Qwen3 files, loads them
//! with transformers, and records their logits and token ids; the real SmolLM2 Q4_1 file (the set-up script's
//! fallback model), when present, is compared on a greedy continuation.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use lorastream_ml::generation::generate::{SamplingParams, generate};
use lorastream_ml::gguf::{Gguf, GgufProblem, import::import};
use lorastream_ml::{CausalLm, ChatTokenizer, Message, MlError};
use tch::{Device, Kind, Tensor};

const TOL: f64 = 1e-4;

fn real_gguf() -> Option<PathBuf> {
    lorastream_ml::load::source::default_fallback().filter(|p| p.is_file())
}

/// Fixtures and transformers' outputs, made once per test binary.
fn fixtures() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let py = root.join(".venv/bin/python");
        assert!(
            py.exists(),
            "{} is missing: run scripts/setup-libtorch.sh",
            py.display()
        );
        let mut cmd = Command::new(py);
        cmd.arg(root.join("tests/parity/make_gguf.py"))
            .arg(dir.path())
            .env("HF_HUB_OFFLINE", "1")
            .env("TRANSFORMERS_VERBOSITY", "error");
        if let Some(real) = real_gguf() {
            cmd.arg(real);
        }
        let out = cmd.output().expect("run make_gguf.py");
        assert!(
            out.status.success(),
            "make_gguf.py failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
    .path()
}

fn imported(name: &str, src: &Path) -> PathBuf {
    let out = fixtures().join(format!("imported-{name}"));
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _g = LOCK.lock().unwrap();
    if !out.exists() {
        import(src, &out, Kind::Float).unwrap();
    }
    out
}

/// The imported model at `dir` gives the logits transformers got from the
/// same file (`reference`), which are not degenerate.
fn assert_logits_match(dir: &Path, reference: &str, what: &str) -> CausalLm {
    let m = CausalLm::load(dir, Device::Cpu, Kind::Float).unwrap();
    let r: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(fixtures().join(reference))
            .unwrap()
            .into_iter()
            .collect();
    let logits = tch::no_grad(|| m.forward(&r["input_ids"], None, None, false));
    let d = (&logits - &r["logits"]).abs().max().double_value(&[]);
    eprintln!(
        "{what} logits: max abs diff {d:.2e} over {:?}",
        logits.size()
    );
    assert!(d <= TOL, "{what}: max abs diff {d:e} > {TOL:e}");
    assert!(logits.std(false).double_value(&[]) > 1e-3);
    m
}

#[test]
fn tiny_gguf_logits_match_transformers() {
    let dir = imported("tiny", &fixtures().join("tiny.gguf"));
    assert_logits_match(&dir, "reference.safetensors", "tiny GGUF");
}

/// A Llama 3.1-style file, its rope scaling stored as llama.cpp's
/// per-frequency `rope_freqs`: read back as `rope_scaling` llama3, the
/// model's own logits.
#[test]
fn llama3_rope_freqs_become_its_rope_scaling() {
    let dir = imported("llama3", &fixtures().join("llama3.gguf"));
    let m = assert_logits_match(&dir, "reference-llama3.safetensors", "llama3 GGUF");
    let s = m.config.rope_scaling.as_ref().expect("rope_scaling");
    assert_eq!(s.rope_type, "llama3");
    assert_eq!(s.original_max_position_embeddings, Some(64));
    let near = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-4);
    assert!(
        near(s.factor, 4.0) && near(s.low_freq_factor, 1.0) && near(s.high_freq_factor, 4.0),
        "{s:?}"
    );
}

/// A Phi-4-mini-style file: LongRoPE's factors stored as `rope_factors_*`
/// tensors, the original context and attention factor as metadata, 12 of
/// each head's 16 dimensions rotating (`rope.dimension_count`).
#[test]
fn phi3_longrope_and_partial_rotary_ggufs_import() {
    let dir = imported("phi4", &fixtures().join("phi4.gguf"));
    let m = assert_logits_match(&dir, "reference-phi4.safetensors", "phi4 GGUF");
    let c = &m.config;
    assert_eq!(
        (c.extras.rotary_dim, c.max_position_embeddings),
        (Some(12), 32)
    );
    let s = c.rope_scaling.as_ref().expect("rope_scaling");
    assert_eq!((s.rope_type.as_str(), s.factor), ("longrope", Some(2.0)));
    assert_eq!(s.short_factor.as_ref().map(Vec::len), Some(6));
    assert!(c.tie_word_embeddings);
}

/// Qwen2 (q/k/v biases, tied head), Qwen3 (q/k norms, head size 128 apart
/// from hidden / heads) and Phi-3 (fused q/k/v and gate/up) files as
/// llama.cpp's converter writes them (rows not permuted) import to the
/// logits transformers gets from them.
#[test]
fn qwen_and_phi3_ggufs_match_transformers() {
    for arch in ["qwen2", "qwen3", "phi3"] {
        let dir = imported(arch, &fixtures().join(format!("{arch}.gguf")));
        let m = assert_logits_match(&dir, &format!("reference-{arch}.safetensors"), arch);
        assert_eq!(m.config.arch.as_str(), arch);
    }
}

#[test]
fn tiny_gguf_tokens_and_template_match_transformers() {
    let dir = imported("tiny", &fixtures().join("tiny.gguf"));
    let tok = ChatTokenizer::load(&dir, None).unwrap();
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("tokens.json")).unwrap())
            .unwrap();
    let strings = want["strings"].as_array().unwrap();
    assert_eq!(strings.len(), 20);
    for (s, ids) in strings.iter().zip(want["ids"].as_array().unwrap()) {
        let s = s.as_str().unwrap();
        let ids: Vec<u32> = serde_json::from_value(ids.clone()).unwrap();
        assert_eq!(tok.encode(s).unwrap(), ids, "token ids of {s:?}");
        assert_eq!(tok.decode(&ids), s, "decode of {s:?}");
    }
    assert!(tok.has_template);
    let text = tok.render(&[Message::new("user", "hi")], true).unwrap();
    assert_eq!(
        text,
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(tok.eos_id(), Some(2));
}

/// The imported tokenizer at `dir` gives the token ids and texts
/// transformers' GGUF tokenizer gave (`reference`) for every string.
fn assert_tokens_match(dir: &Path, reference: &str) {
    let tok = ChatTokenizer::load(dir, None).unwrap();
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join(reference)).unwrap())
            .unwrap();
    let strings = want["strings"].as_array().unwrap();
    let decoded = want["decoded"].as_array().unwrap();
    for ((s, ids), text) in strings
        .iter()
        .zip(want["ids"].as_array().unwrap())
        .zip(decoded)
    {
        let s = s.as_str().unwrap();
        let ids: Vec<u32> = serde_json::from_value(ids.clone()).unwrap();
        assert_eq!(
            tok.encode(s).unwrap(),
            ids,
            "{reference}: token ids of {s:?}"
        );
        assert_eq!(
            tok.decode(&ids),
            text.as_str().unwrap(),
            "{reference}: decode of {s:?}"
        );
    }
}

/// A Llama file with a SentencePiece vocabulary (Llama 2, Mistral,
/// TinyLlama: `▁` for spaces, byte fallback, no merges in the file) gives
/// the token ids and texts transformers' GGUF tokenizer gives.
#[test]
fn sentencepiece_gguf_tokens_match_transformers() {
    let dir = imported("spm", &fixtures().join("spm.gguf"));
    assert_tokens_match(&dir, "tokens-spm.json");
    CausalLm::load(&dir, Device::Cpu, Kind::Float).unwrap();
}

/// Gemma 2 (soft-caps, alternating windows) and Gemma 3 (q/k norms, five
/// sliding layers on their own rotary theta to a global one) files as
/// llama.cpp writes them (norm weights as 1 + w, a SentencePiece vocabulary
/// read as a Unigram model) give transformers' logits and token ids.
#[test]
fn gemma_ggufs_match_transformers() {
    for arch in ["gemma2", "gemma3"] {
        let dir = imported(arch, &fixtures().join(format!("{arch}.gguf")));
        let m = assert_logits_match(&dir, &format!("reference-{arch}.safetensors"), arch);
        assert!(m.config.extras.sliding_window.is_some());
        assert_tokens_match(&dir, &format!("tokens-{arch}.json"));
    }
}

#[test]
fn real_smollm2_gguf_generates_what_transformers_generates() {
    let Some(real) = real_gguf() else {
        eprintln!(
            "skipped: no SmolLM2 GGUF at the fallback path (scripts/setup-libtorch.sh puts it there)"
        );
        return;
    };
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("real.json")).unwrap())
            .unwrap();
    let dir = imported("smollm2", &real);
    let m = CausalLm::load(&dir, Device::Cpu, Kind::Float).unwrap();
    let tok = ChatTokenizer::load(&dir, None).unwrap();
    let text = tok
        .render(
            &[Message::new("user", "What is the capital of France?")],
            true,
        )
        .unwrap();
    let prompt = tok.encode(&text).unwrap();
    let want_prompt: Vec<u32> = serde_json::from_value(want["prompt"].clone()).unwrap();
    // transformers' prompt has no system message; ours is the template's.
    let user_part = tok
        .encode(
            "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
        )
        .unwrap();
    assert_eq!(user_part, want_prompt);
    assert!(prompt.ends_with(&want_prompt));
    let params = SamplingParams {
        max_new_tokens: 24,
        ..SamplingParams::default()
    };
    let g = generate(&m, &tok, &want_prompt, &params, |_, _| {
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    let mut want_ids: Vec<u32> = serde_json::from_value(want["generated"].clone()).unwrap();
    if want_ids.last() == Some(&2) {
        want_ids.pop();
    }
    eprintln!("SmolLM2 Q4_1 greedy: {:?}", g.text);
    assert_eq!(g.ids, want_ids);
}

/// A GGUF v3 file: `kv` metadata entries (already encoded) and one F32 tensor
/// of `n` values with ggml type `type_id`, its data padded to 32 bytes.
fn synthetic(type_id: u32, n: u64, data_len: usize) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    let name = b"w";
    b.extend((name.len() as u64).to_le_bytes());
    b.extend(name);
    b.extend(1u32.to_le_bytes());
    b.extend(n.to_le_bytes());
    b.extend(type_id.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    while !b.len().is_multiple_of(32) {
        b.push(0);
    }
    b.extend(std::iter::repeat_n(0u8, data_len));
    b
}

fn problem(bytes: &[u8]) -> (String, GgufProblem) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    std::fs::write(&path, bytes).unwrap();
    let e = match Gguf::open(&path) {
        Ok(_) => panic!("accepted a bad file"),
        Err(e) => e,
    };
    let msg = e.to_string();
    assert!(msg.contains("bad.gguf"), "{msg} names no file");
    (msg, e.problem)
}

#[test]
fn corrupt_or_unsupported_files_are_refused_by_name() {
    let good = synthetic(0, 8, 32);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ok.gguf"), &good).unwrap();
    let g = Gguf::open(&dir.path().join("ok.gguf")).unwrap();
    assert_eq!(g.tensors[0].shape(), vec![8]);

    let (msg, p) = problem(b"GGML\x03\0\0\0");
    assert!(matches!(p, GgufProblem::BadMagic(_)), "{msg}");
    let mut v1 = good.clone();
    v1[4] = 1;
    let (msg, p) = problem(&v1);
    assert!(matches!(p, GgufProblem::UnsupportedVersion(1)), "{msg}");
    let (msg, p) = problem(&good[..30]);
    assert!(matches!(p, GgufProblem::Truncated(_)), "{msg}");
    assert!(msg.contains("truncated"), "{msg}");
    let (msg, p) = problem(&synthetic(99, 8, 32));
    assert!(
        matches!(p, GgufProblem::UnsupportedType { type_id: 99, .. }),
        "{msg}"
    );
    let (msg, p) = problem(&synthetic(6, 32, 32)); // Q5_0: a known type we do not read
    assert!(msg.contains("Q5_0"), "{msg}");
    assert!(matches!(p, GgufProblem::UnsupportedType { .. }));
    let (msg, p) = problem(&synthetic(0, 8, 16)); // 8 f32 = 32 bytes, 16 present
    assert!(matches!(p, GgufProblem::DataPastEnd { .. }), "{msg}");
    assert!(msg.contains("past the end"), "{msg}");

    // The real fixture, cut inside its tensor data.
    let tiny = std::fs::read(fixtures().join("tiny.gguf")).unwrap();
    let (msg, p) = problem(&tiny[..tiny.len() - 1000]);
    assert!(matches!(p, GgufProblem::DataPastEnd { .. }), "{msg}");
    // A model import of a file that parses but is no llama model says why.
    let path = dir.path().join("ok.gguf");
    let e = import(&path, &dir.path().join("out"), Kind::Float).unwrap_err();
    assert!(matches!(e, MlError::Gguf(_)), "{e}");
    assert!(e.to_string().contains("ok.gguf"), "{e}");
    assert!(!dir.path().join("out").exists());
}
