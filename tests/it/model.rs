//! The model layer on models made by `model init`: loading, generation, the
//! plain template, and clear errors for broken files.

use crate::common;

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::Path;

use lorastream_ml::generation::generate::{FinishReason, SamplingParams, generate};
use lorastream_ml::models::init::{InitOptions, Preset, init_model};
use lorastream_ml::{Arch, CausalLm, ChatTokenizer, LoraSpec, Message, MlError};
use tch::{Device, Kind, Tensor};

fn init(dir: &Path, arch: Arch, preset: Preset) {
    init_model(
        dir,
        &InitOptions {
            arch,
            preset,
            corpus: None,
            seed: 1,
            vocab_size: 512,
        },
    )
    .unwrap();
}

fn load(dir: &Path) -> Result<CausalLm, MlError> {
    CausalLm::load(dir, Device::Cpu, Kind::Float)
}

#[test]
fn init_models_generate_deterministically_and_stream() {
    // Every family `model init` makes: each loads, generates and streams.
    for &arch in Arch::ALL {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), arch, Preset::Tiny);
        let model = load(dir.path()).unwrap();
        let tok = ChatTokenizer::load(dir.path(), None).unwrap();
        assert_eq!(tok.has_template, arch != Arch::Gpt2);
        let prompt = tok
            .encode(
                &tok.render(&[Message::new("user", "What is LoRA?")], true)
                    .unwrap(),
            )
            .unwrap();
        let params = SamplingParams {
            max_new_tokens: 12,
            temperature: 0.9,
            top_k: 50,
            top_p: 0.95,
            seed: 42,
            ignore_eos: true,
            ..SamplingParams::default()
        };
        let mut streamed = String::new();
        let mut count = 0;
        let g = generate(&model, &tok, &prompt, &params, |_, delta| {
            streamed.push_str(delta);
            count += 1;
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(g.ids.len(), 12, "{arch:?}");
        assert_eq!(count, 12);
        assert_eq!(g.finish, FinishReason::Length);
        assert_eq!(streamed, g.text);
        let again = generate(&model, &tok, &prompt, &params, |_, _| {
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(again.ids, g.ids, "same seed, same tokens");
        let other = generate(
            &model,
            &tok,
            &prompt,
            &SamplingParams {
                seed: 43,
                ..params.clone()
            },
            |_, _| ControlFlow::Continue(()),
        )
        .unwrap();
        assert_ne!(other.ids, g.ids, "another seed, other tokens");
        // Cancelling from the callback stops at once.
        let mut n = 0;
        let c = generate(&model, &tok, &prompt, &params, |_, _| {
            n += 1;
            if n == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
        assert_eq!((c.ids.len(), c.finish), (3, FinishReason::Cancelled));
    }
}

#[test]
fn gpt2_uses_the_documented_plain_template() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path(), Arch::Gpt2, Preset::Tiny);
    let tok = ChatTokenizer::load(dir.path(), None).unwrap();
    let msgs = [
        Message::new("user", "Hi there?"),
        Message::new("assistant", "Hello."),
    ];
    assert_eq!(
        tok.render(&msgs, false).unwrap(),
        "User: Hi there?\nAssistant: Hello.<|endoftext|>"
    );
    assert_eq!(
        tok.render(&msgs[..1], true).unwrap(),
        "User: Hi there?\nAssistant:"
    );
    // An override file replaces it.
    let t = dir.path().join("t.jinja");
    std::fs::write(
        &t,
        "{% for m in messages %}[{{ m.role }}] {{ m.content }}{% endfor %}",
    )
    .unwrap();
    let tok = ChatTokenizer::load(dir.path(), Some(&t)).unwrap();
    assert_eq!(
        tok.render(&msgs, false).unwrap(),
        "[user] Hi there?[assistant] Hello."
    );
    // A broken template is refused when loading, with the reason.
    std::fs::write(&t, "{% for m in messages %}").unwrap();
    let err = ChatTokenizer::load(dir.path(), Some(&t))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("chat template"), "{err}");
}

#[test]
fn corrupt_safetensors_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path(), Arch::Gpt2, Preset::Tiny);
    let f = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    let err = load(dir.path()).err().unwrap();
    let msg = err.to_string();
    assert!(matches!(err, MlError::Safetensors { .. }), "{msg}");
    assert!(
        msg.contains("model.safetensors") && msg.contains("not a valid safetensors"),
        "{msg}"
    );
    std::fs::write(&f, b"garbage").unwrap();
    assert!(matches!(load(dir.path()), Err(MlError::Safetensors { .. })));
}

#[test]
fn unknown_model_type_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path(), Arch::Llama, Preset::Tiny);
    let cfg = dir.path().join("config.json");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("\"llama\"", "\"mamba\"");
    std::fs::write(&cfg, text).unwrap();
    let msg = load(dir.path()).err().unwrap().to_string();
    assert!(
        msg.contains("config.json") && msg.contains("\"mamba\"") && msg.contains("not supported"),
        "{msg}"
    );
}

#[test]
fn missing_and_misshaped_tensors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path(), Arch::Llama, Preset::Tiny);
    let f = dir.path().join("model.safetensors");
    let mut t: HashMap<String, Tensor> =
        Tensor::read_safetensors(&f).unwrap().into_iter().collect();
    let name = "model.layers.1.self_attn.k_proj.weight";
    let k = t.remove(name).unwrap();
    let write = |t: &HashMap<String, Tensor>| {
        let v: Vec<(&String, &Tensor)> = t.iter().collect();
        Tensor::write_safetensors(&v, &f).unwrap();
    };
    write(&t);
    let msg = load(dir.path()).err().unwrap().to_string();
    assert!(msg.contains(name) && msg.contains("missing"), "{msg}");
    t.insert(name.to_string(), k.narrow(0, 0, 8));
    write(&t);
    let err = load(dir.path()).err().unwrap();
    assert!(matches!(err, MlError::ShapeMismatch { .. }), "{err}");
    assert!(err.to_string().contains(name), "{err}");
}

#[test]
fn adapter_for_another_shape_is_refused() {
    let small = tempfile::tempdir().unwrap();
    let tiny = tempfile::tempdir().unwrap();
    init(small.path(), Arch::Gpt2, Preset::Small);
    init(tiny.path(), Arch::Gpt2, Preset::Tiny);
    let mut m = load(small.path()).unwrap();
    m.attach_lora(LoraSpec {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        target_modules: vec![],
        rslora: false,
    })
    .unwrap();
    let adapter = small.path().join("adapter");
    m.save_adapter(&adapter, Some(small.path())).unwrap();
    let mut other = load(tiny.path()).unwrap();
    let err = other.load_adapter(&adapter).err().unwrap();
    let msg = err.to_string();
    assert!(matches!(err, MlError::ShapeMismatch { .. }), "{msg}");
    assert!(
        msg.contains("lora_A.weight") && msg.contains("adapter_model.safetensors"),
        "{msg}"
    );
    // The CLI merges a matching adapter into a standalone model with tokenizer files.
    let merged = small.path().join("merged");
    let out = common::lorastream()
        .args(["model", "export", "--model"])
        .arg(small.path())
        .arg("--adapter")
        .arg(&adapter)
        .arg("--out")
        .arg(&merged)
        .output()
        .unwrap();
    common::assert_ok(&out);
    assert!(load(&merged).is_ok());
    assert!(ChatTokenizer::load(&merged, None).is_ok());
    // A target the architecture does not have is refused too.
    let bad = m.attach_lora(LoraSpec {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        target_modules: vec!["q_proj".into()],
        rslora: false,
    });
    assert!(bad.err().unwrap().to_string().contains("q_proj"));
}

#[test]
fn cli_model_init_and_bench_generate() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m");
    let out = common::lorastream()
        .args([
            "model", "init", "--arch", "llama", "--preset", "tiny", "--out",
        ])
        .arg(&model)
        .output()
        .unwrap();
    common::assert_ok(&out);
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(model.join(f).exists(), "{f}");
    }
    let data = dir.path().join("d.jsonl");
    std::fs::write(
        &data,
        "{\"messages\":[{\"role\":\"user\",\"content\":\"What is Rust?\"},{\"role\":\"assistant\",\"content\":\"A language.\"}]}\n\
         {\"messages\":[{\"role\":\"user\",\"content\":\"What is LoRA?\"}]}\n",
    )
    .unwrap();
    let out = common::lorastream()
        .args([
            "bench",
            "generate",
            "--max-new-tokens",
            "5",
            "--threads",
            "1",
            "--model",
        ])
        .arg(&model)
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    common::assert_ok(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["bench"], "generate");
    assert_eq!(v["prompts"], 2);
    assert_eq!(v["new_tokens"], 10);
    assert_eq!(v["threads"], 1);
    assert!(v["tokens_per_s"].as_f64().unwrap() > 0.0);

    std::fs::write(&data, "{\"messages\": 3}\n").unwrap();
    let out = common::lorastream()
        .args(["bench", "generate", "--model"])
        .arg(&model)
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("line 1") && !err.contains("panicked"),
        "{err}"
    );
}

/// Decoding steps on bf16 copies of the weights give the f32 logits to
/// bf16's precision, with a LoRA and after it is removed.
#[test]
fn decode_copies_follow_the_weights_and_match_f32() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path(), Arch::Llama, Preset::Tiny);
    let mut m = load(dir.path()).unwrap();
    crate::common::random_lora(&mut m, 0.5);
    let prompt = Tensor::from_slice(&[5i64, 17, 42, 99, 7, 3]).unsqueeze(0);
    let next = Tensor::from_slice(&[11i64]).unsqueeze(0);
    let step = |m: &CausalLm| -> Tensor {
        tch::no_grad(|| {
            let mut cache = m.new_cache();
            let _ = m.forward_last(&prompt, Some(&mut cache));
            m.forward_last(&next, Some(&mut cache))
        })
    };
    let diff = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
    let f32_lora = step(&m);
    let scale = f32_lora.abs().max().double_value(&[]);
    let tol = 2e-2 * scale;
    m.set_decode_kind(Some(Kind::BFloat16));
    let bf16_unmerged = step(&m);
    m.clear_lora();
    let bf16_base = step(&m);
    m.set_decode_kind(None);
    let f32_base = step(&m);
    assert!(
        diff(&bf16_unmerged, &f32_lora) < tol,
        "unmerged: {}",
        diff(&bf16_unmerged, &f32_lora)
    );
    assert!(
        diff(&bf16_base, &f32_base) < tol,
        "base: {}",
        diff(&bf16_base, &f32_base)
    );
    assert!(
        diff(&f32_base, &f32_lora) > 10.0 * tol,
        "the adapter must change the logits for this test to see stale copies"
    );
}
