//! Publishing to local targets: promoted versions written to a `dir` target
//! in PEFT's layout load in PEFT with the logits lorastream computes for
//! them; `keep` and a rollback move `current` and the published set; a
//! `gguf` target's files are what llama.cpp's `gguf` reader expects, tensor
//! for tensor. (Remote targets and gateway mode: `fleet`.)

use crate::common;
use crate::serving::with_versions;

use std::path::Path;

use lorastream_ml::CausalLm;
use tch::{Device, Kind, Tensor};

/// `lorastream --config CONFIG ARGS…`, run to its end.
pub(crate) fn cli(config: &Path, args: &[&str]) -> std::process::Output {
    common::lorastream()
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

/// `adapters publish ARGS…`, which must succeed: what it printed.
fn publish(config: &Path, args: &[&str]) -> String {
    let out = cli(config, &[&["adapters", "publish"], args].concat());
    common::assert_ok(&out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn target(dir: &Path, keep: usize) -> String {
    format!(
        "\n[[publish]]\nname = \"shared\"\nkind = \"dir\"\ndir = \"{}\"\nbase_model = \"acme/tiny-llama\"\nkeep = {keep}\n",
        dir.join("published").display()
    )
}

#[test]
fn a_dir_target_holds_peft_adapters_that_peft_loads_with_our_logits() {
    let dir = tempfile::tempdir().unwrap();
    let (config, model) = with_versions(dir.path(), "f32", "");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.clone() + &target(dir.path(), 0)).unwrap();
    let said = publish(&config, &[]);
    assert!(said.contains("shared: published v2, v1;"), "{said}");
    assert!(said.contains("current: v2"), "{said}");
    let out = dir.path().join("published");
    assert_eq!(
        std::fs::read_link(out.join("current")).unwrap(),
        Path::new("lorastream-v2")
    );
    let v2 = out.join("lorastream-v2");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(v2.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["base_model_name_or_path"], "acme/tiny-llama");
    let card = std::fs::read_to_string(v2.join("README.md")).unwrap();
    assert!(
        card.contains("base_model: acme/tiny-llama") && card.contains("lineage"),
        "{card}"
    );
    assert!(
        publish(&config, &[]).contains("published nothing;"),
        "a second run writes nothing"
    );

    // PEFT loads the published directory: the same logits as ours.
    let ids = Tensor::from_slice(&[3i64, 17, 42, 99, 7, 12, 5, 60]).unsqueeze(0);
    let refs = dir.path().join("ref.safetensors");
    let mask = ids.ones_like();
    Tensor::write_safetensors(&[("input_ids", &ids), ("attention_mask", &mask)], &refs).unwrap();
    let theirs_file = dir.path().join("peft.safetensors");
    crate::parity::run_python(&[
        Path::new("peft_logits.py"),
        &model,
        &v2,
        &refs,
        &theirs_file,
    ]);
    let theirs = Tensor::read_safetensors(&theirs_file).unwrap().remove(0).1;
    let mut m = CausalLm::load(&model, Device::Cpu, Kind::Float).unwrap();
    m.load_adapter(&v2).unwrap();
    let ours = tch::no_grad(|| m.forward(&ids, Some(&mask), None, false));
    let diff = (ours - theirs).abs().max().double_value(&[]);
    println!("BENCH published v2 in PEFT: max |Δ logit| {diff:.2e}");
    assert!(diff < 1e-4, "logits differ by {diff}");

    // keep = 1, then a rollback: only the served version stays, and follows.
    std::fs::write(&config, text + &target(dir.path(), 1)).unwrap();
    publish(&config, &["--to", "shared"]);
    assert!(!out.join("lorastream-v1").exists() && v2.is_dir());
    let rb = cli(&config, &["adapters", "rollback"]);
    common::assert_ok(&rb);
    // The rollback published by itself: v1 written and current, v2 dropped.
    assert!(
        out.join("lorastream-v1/adapter_model.safetensors")
            .is_file()
    );
    let said = publish(&config, &[]);
    assert!(
        said.contains("published nothing;") && said.contains("current: v1"),
        "{said}"
    );
    assert!(!v2.exists(), "keep = 1 drops v2 once it is not served");
    assert_eq!(
        std::fs::read_link(out.join("current")).unwrap(),
        Path::new("lorastream-v1")
    );
}

#[test]
fn publish_names_a_missing_target_and_a_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = with_versions(dir.path(), "f32", "");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.clone() + &target(dir.path(), 0)).unwrap();
    let out = cli(&config, &["adapters", "publish", "--to", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no publish target is named \"nope\""));
    std::fs::write(
        &config,
        text + "\n[[publish]]\nname = \"x\"\nkind = \"dir\"\n",
    )
    .unwrap();
    let out = cli(&config, &["config", "check"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("publish[0].dir") || err.contains("publish.0.dir") || err.contains("dir"),
        "{err}"
    );
}

#[test]
fn a_gguf_target_holds_llama_cpp_lora_files_equal_to_the_peft_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let (config, model) = with_versions(dir.path(), "f32", "");
    let text = std::fs::read_to_string(&config).unwrap();
    let out = dir.path().join("gguf");
    let target = format!(
        "\n[[publish]]\nname = \"laptops\"\nkind = \"gguf\"\ndir = \"{}\"\n",
        out.display()
    );
    std::fs::write(&config, text + &target).unwrap();
    let said = publish(&config, &[]);
    assert!(said.contains("laptops: published v2, v1;"), "{said}");
    assert_eq!(
        std::fs::read_link(out.join("current.gguf")).unwrap(),
        Path::new("lorastream-v2.gguf")
    );
    // By hand too: `adapters export` writes the same file, and the PEFT layout.
    let by_hand = dir.path().join("v2.gguf");
    let peft = dir.path().join("v2-peft");
    for (format, path) in [("gguf", &by_hand), ("peft", &peft)] {
        let args = ["adapters", "export", "2", "--format", format, "--out"];
        let run = cli(&config, &[&args[..], &[path.to_str().unwrap()]].concat());
        common::assert_ok(&run);
    }
    assert_eq!(
        std::fs::read(&by_hand).unwrap(),
        std::fs::read(out.join("lorastream-v2.gguf")).unwrap()
    );
    let report = dir.path().join("gguf.json");
    crate::parity::run_python(&[
        Path::new("gguf_lora.py"),
        &out.join("lorastream-v2.gguf"),
        &peft,
        &model,
        &report,
    ]);
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    println!("BENCH GGUF LoRA read by gguf-py: {r}");
    assert_eq!(r["arch"], "llama");
    assert!(r["tensors"].as_u64().unwrap() >= 14, "{r}");
    assert_eq!(r["max_abs_diff"].as_f64().unwrap(), 0.0, "{r}");
}
