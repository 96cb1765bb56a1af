//! Linear layers with optional LoRA, and adapters in PEFT's on-disk format
//! (`adapter_model.safetensors` + `adapter_config.json`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::MlError;
use crate::hf_config::Arch;

/// LoRA hyperparameters, named as in PEFT's `LoraConfig` (also the
/// daemon's `[lora]` section: unknown keys are refused, missing ones default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraSpec {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// PEFT module names; `["all-linear"]` = every linear layer of the blocks;
    /// empty = the architecture's default (`c_attn` for GPT-2, `q_proj`,`v_proj` for Llama).
    pub target_modules: Vec<String>,
    /// Scale by alpha/sqrt(r) instead of alpha/r.
    pub rslora: bool,
}

impl Default for LoraSpec {
    fn default() -> Self {
        LoraSpec {
            r: 16,
            alpha: 32.0,
            dropout: 0.05,
            target_modules: vec![ALL_LINEAR.to_string()],
            rslora: false,
        }
    }
}

/// The `target_modules` value that means every linear layer of the blocks.
pub const ALL_LINEAR: &str = "all-linear";

/// Where LoRA may attach in a model family, as PEFT names the modules.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoraTargets {
    /// Every module LoRA may target (`all-linear`).
    pub all: &'static [&'static str],
    /// The modules targeted when the config names none.
    pub default: &'static [&'static str],
    /// Linear weights stored `[in, out]` (GPT-2's Conv1D): PEFT's `fan_in_fan_out`.
    pub fan_in_fan_out: bool,
}

impl LoraSpec {
    pub fn scale(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    /// Checks the targets against the architecture; empty targets get its
    /// default, `["all-linear"]` (as in PEFT) every linear layer of its blocks.
    pub fn resolved(mut self, arch: Arch, targets: &LoraTargets) -> Result<LoraSpec, MlError> {
        if self.target_modules == [ALL_LINEAR] {
            self.target_modules = targets.all.iter().map(|s| s.to_string()).collect();
        }
        if self.target_modules.is_empty() {
            self.target_modules = targets.default.iter().map(|s| s.to_string()).collect();
        }
        for m in &self.target_modules {
            if !targets.all.contains(&m.as_str()) {
                return Err(MlError::Adapter {
                    path: PathBuf::new(),
                    msg: format!(
                        "target module {m:?} does not exist in {arch:?} models (they have {})",
                        targets.all.join(", ")
                    ),
                });
            }
        }
        if self.r == 0 {
            return Err(MlError::Adapter {
                path: PathBuf::new(),
                msg: "LoRA rank r must be at least 1".into(),
            });
        }
        Ok(self)
    }
}

/// The low-rank update of one linear layer: `y += scale · B(A(dropout(x)))`.
pub struct LoraWeights {
    /// `[r, in]`
    pub a: Tensor,
    /// `[out, r]`
    pub b: Tensor,
    pub scale: f64,
    pub dropout: f64,
}

impl LoraWeights {
    /// `y + scale · B(A(x))` as PEFT computes it: `x` in the adapter's dtype
    /// (f32), the sum in f32, one rounding back to `y`'s dtype.
    pub fn add_to(&self, y: &Tensor, x: &Tensor) -> Tensor {
        let delta = x
            .to_kind(self.a.kind())
            .linear::<Tensor>(&self.a, None)
            .linear::<Tensor>(&self.b, None)
            * self.scale;
        if y.kind() == delta.kind() {
            y + delta
        } else {
            (y.to_kind(delta.kind()) + delta).to_kind(y.kind())
        }
    }
}

/// A linear layer as stored in the checkpoint: `[out, in]` for `nn.Linear`,
/// `[in, out]` for GPT-2's `Conv1D` (`fan_in_fan_out`).
pub struct Linear {
    /// The module's path in the Hugging Face model, e.g. `model.layers.0.self_attn.q_proj`.
    pub path: String,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub fan_in_fan_out: bool,
    pub lora: Option<LoraWeights>,
}

impl Linear {
    pub fn in_out(&self) -> (i64, i64) {
        let s = self.weight.size();
        if self.fan_in_fan_out {
            (s[0], s[1])
        } else {
            (s[1], s[0])
        }
    }

    /// `(<path>.weight, weight)` and the bias, as checkpoints name them.
    pub fn named_tensors(&self) -> Vec<(String, &Tensor)> {
        let mut v = vec![(format!("{}.weight", self.path), &self.weight)];
        if let Some(b) = &self.bias {
            v.push((format!("{}.bias", self.path), b));
        }
        v
    }

    /// The PEFT module name: the last path component (`c_attn`, `q_proj`, …).
    pub fn module_name(&self) -> &str {
        self.path.rsplit('.').next().unwrap_or(&self.path)
    }

    /// The base layer's output for `x` (no LoRA).
    pub fn base_forward(&self, x: &Tensor) -> Tensor {
        if self.fan_in_fan_out {
            x.linear(&self.weight.tr(), self.bias.as_ref())
        } else {
            x.linear(&self.weight, self.bias.as_ref())
        }
    }

    /// `y + scale · B(A(dropout(x)))` while a LoRA is attached; `y` (the
    /// base layer's output for `x`) otherwise.
    pub fn with_lora(&self, y: Tensor, x: &Tensor, train: bool) -> Tensor {
        match &self.lora {
            Some(l) => {
                let xd = if train && l.dropout > 0.0 {
                    x.dropout(l.dropout, true)
                } else {
                    x.shallow_clone()
                };
                l.add_to(&y, &xd)
            }
            None => y,
        }
    }

    /// The weight with the LoRA folded in, as a new f32 tensor (merged
    /// exports): the weight itself is never changed, so its bits stay the
    /// checkpoint's whatever its dtype (a delta added into bf16 weights
    /// loses its low bits, and subtracting it again does not give them back).
    pub fn merged_weight(&self) -> Tensor {
        let w = self.weight.detach().to_kind(Kind::Float);
        match &self.lora {
            Some(l) => {
                let d =
                    l.b.detach()
                        .to_kind(Kind::Float)
                        .matmul(&l.a.detach().to_kind(Kind::Float))
                        * l.scale;
                w + if self.fan_in_fan_out { d.tr() } else { d }
            }
            None => w,
        }
    }

    /// Attaches a fresh LoRA: A Kaiming-uniform (as `nn.Linear`, a = √5), B zeros,
    /// so the layer's output is unchanged until B is trained.
    pub fn attach_fresh(&mut self, spec: &LoraSpec) {
        let (fan_in, fan_out) = self.in_out();
        let r = spec.r as i64;
        let dev = self.weight.device();
        let bound = 1.0 / (fan_in as f64).sqrt();
        let a = Tensor::empty([r, fan_in], (Kind::Float, dev)).uniform_(-bound, bound);
        let b = Tensor::zeros([fan_out, r], (Kind::Float, dev));
        self.lora = Some(LoraWeights {
            a: a.set_requires_grad(true),
            b: b.set_requires_grad(true),
            scale: spec.scale(),
            dropout: spec.dropout,
        });
    }
}

/// `base_model.model.<path>.lora_{A,B}.weight`, PEFT's key for a module's LoRA weights.
pub fn peft_key(path: &str, which: char) -> String {
    format!("base_model.model.{path}.lora_{which}.weight")
}

/// `adapter_config.json` as PEFT writes it (the keys we read and write).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeftConfig {
    pub peft_type: String,
    #[serde(default)]
    pub task_type: Option<String>,
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    pub target_modules: TargetModules,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default = "none_str")]
    pub bias: String,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    /// Modules left out (PEFT ≥ 0.14); written for a multimodal checkpoint's
    /// vision tower, which lorastream does not read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude_modules: Option<serde_json::Value>,
    #[serde(default)]
    pub rank_pattern: HashMap<String, serde_json::Value>,
    #[serde(default)]
    pub alpha_pattern: HashMap<String, serde_json::Value>,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default)]
    pub inference_mode: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers_to_transform: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modules_to_save: Option<serde_json::Value>,
    #[serde(default)]
    pub lora_bias: bool,
}

fn none_str() -> String {
    "none".into()
}

/// PEFT allows a list of names or one regex string; we accept the list form.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    List(Vec<String>),
    Regex(String),
}

impl PeftConfig {
    pub fn from_spec(spec: &LoraSpec, targets: &LoraTargets, base: Option<&Path>) -> PeftConfig {
        PeftConfig {
            peft_type: "LORA".into(),
            task_type: Some("CAUSAL_LM".into()),
            r: spec.r,
            lora_alpha: spec.alpha,
            lora_dropout: spec.dropout,
            target_modules: TargetModules::List(spec.target_modules.clone()),
            fan_in_fan_out: targets.fan_in_fan_out,
            bias: "none".into(),
            use_rslora: spec.rslora,
            use_dora: false,
            exclude_modules: None,
            rank_pattern: HashMap::new(),
            alpha_pattern: HashMap::new(),
            base_model_name_or_path: base.map(|p| p.display().to_string()),
            inference_mode: true,
            layers_to_transform: None,
            modules_to_save: None,
            lora_bias: false,
        }
    }

    /// The spec this adapter describes, refusing what we do not implement.
    pub fn to_spec(&self, path: &Path) -> Result<LoraSpec, MlError> {
        let bad = |msg: String| MlError::Adapter {
            path: path.to_owned(),
            msg,
        };
        if self.peft_type != "LORA" {
            return Err(bad(format!("peft_type {:?} is not LORA", self.peft_type)));
        }
        if self.use_dora {
            return Err(bad("DoRA adapters are not supported".into()));
        }
        if !self.rank_pattern.is_empty() || !self.alpha_pattern.is_empty() {
            return Err(bad(
                "per-module rank_pattern/alpha_pattern are not supported".into(),
            ));
        }
        let set = |v: &Option<serde_json::Value>| v.as_ref().is_some_and(|v| !v.is_null());
        if set(&self.layers_to_transform) || set(&self.modules_to_save) || self.lora_bias {
            return Err(bad(
                "layers_to_transform, modules_to_save and lora_bias are not supported".into(),
            ));
        }
        if self.bias != "none" {
            return Err(bad(format!(
                "bias = {:?} is not supported (only \"none\")",
                self.bias
            )));
        }
        let TargetModules::List(targets) = &self.target_modules else {
            return Err(bad(
                "target_modules given as a regex is not supported; list the module names".into(),
            ));
        };
        Ok(LoraSpec {
            r: self.r,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            target_modules: targets.clone(),
            rslora: self.use_rslora,
        })
    }
}

/// PEFT's `exclude_modules` of an adapter on a multimodal checkpoint's text
/// model: the modules outside it.
pub const NOT_TEXT: &str = ".*(vision_tower|vision_model|multi_modal_projector).*";

/// Writes an adapter directory: `adapter_model.safetensors` and
/// `adapter_config.json`, each atomically; `name` gives a layer's module
/// name in the checkpoint.
pub fn save_adapter(
    dir: &Path,
    config: &PeftConfig,
    layers: &[&Linear],
    name: &dyn Fn(&str) -> String,
) -> Result<(), MlError> {
    lorastream_base::fsutil::create_dir_all_durable(dir).map_err(|e| MlError::io(dir, e))?;
    let mut tensors = Vec::new();
    for l in layers {
        if let Some(w) = &l.lora {
            tensors.push((
                peft_key(&name(&l.path), 'A'),
                w.a.detach().to_kind(Kind::Float).contiguous(),
            ));
            tensors.push((
                peft_key(&name(&l.path), 'B'),
                w.b.detach().to_kind(Kind::Float).contiguous(),
            ));
        }
    }
    crate::load::weights::write_safetensors_atomic(
        &dir.join("adapter_model.safetensors"),
        &tensors,
    )?;
    let cfg = dir.join("adapter_config.json");
    lorastream_base::fsutil::write_json_atomic(&cfg, config).map_err(|e| MlError::io(&cfg, e))
}

/// Reads an adapter directory: its config and its tensors by PEFT key.
pub fn read_adapter(dir: &Path) -> Result<(PeftConfig, HashMap<String, Tensor>), MlError> {
    let cfg_path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| MlError::io(&cfg_path, e))?;
    let config: PeftConfig = serde_json::from_str(&text).map_err(|e| MlError::Adapter {
        path: cfg_path.clone(),
        msg: e.to_string(),
    })?;
    let file = dir.join("adapter_model.safetensors");
    if !file.exists() {
        return Err(MlError::io(
            &file,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    }
    let tensors = Tensor::read_safetensors(&file).map_err(|e| MlError::Safetensors {
        path: file.clone(),
        msg: e.to_string(),
    })?;
    // PEFT may save keys with an adapter name (`lora_A.default.weight`), and
    // name a multimodal checkpoint's text model `model.language_model.` (or
    // `language_model.model.`): normalised to the text model's names.
    let tensors = tensors
        .into_iter()
        .map(|(k, v)| {
            let k = k.replace(".default.weight", ".weight");
            let text = k
                .strip_prefix("base_model.model.")
                .and_then(crate::load::weights::text_model_name)
                .map(|name| format!("base_model.model.{name}"));
            (text.unwrap_or(k), v)
        })
        .collect();
    Ok((config, tensors))
}
