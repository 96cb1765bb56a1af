//! A causal language model of any supported family (GPT-2 and the
//! Llama-architecture ones, `models/`), with LoRA, a KV cache, and Hugging
//! Face / PEFT file formats.

use std::collections::HashMap;
use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::MlError;
use crate::hf_config::HfConfig;
use crate::load::weights::Weights;
use crate::models::Backbone;
pub use crate::nn::attention::KvCache;
use crate::nn::fused::decode_linear;
use crate::nn::lora::{self, Linear, LoraSpec, LoraWeights, PeftConfig};
use crate::nn::pass::{Adapter, Pass, Segment};

pub struct CausalLm {
    pub config: HfConfig,
    inner: Box<dyn Backbone>,
    pub device: Device,
    pub kind: Kind,
    /// The LoRA hyperparameters attached, if any.
    pub lora: Option<LoraSpec>,
    /// The kind of the single-token weight copies, if kept ([`Self::set_decode_kind`]).
    decode_kind: Option<Kind>,
}

impl CausalLm {
    /// Loads `config.json` and the safetensors of a Hugging Face model directory.
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<CausalLm, MlError> {
        let config = HfConfig::load(dir)?;
        let mut ws = Weights::load(dir, device, kind)?;
        if config.extras.multimodal {
            ws.text_model_of_multimodal();
        }
        let m = Self::from_weights(config, &mut ws, device, kind)?;
        let unused = ws.unused();
        if !unused.is_empty() {
            tracing::warn!(model = %dir.display(), count = unused.len(), first = unused[0], "unused tensors in checkpoint");
        }
        Ok(m)
    }

    pub fn from_weights(
        config: HfConfig,
        ws: &mut Weights,
        device: Device,
        kind: Kind,
    ) -> Result<CausalLm, MlError> {
        let inner = (config.arch.family().load)(&config, ws)?;
        Ok(CausalLm {
            config,
            inner,
            device,
            kind,
            lora: None,
            decode_kind: None,
        })
    }

    pub fn linears(&self) -> Vec<&Linear> {
        self.inner.linears()
    }

    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        self.inner.linears_mut()
    }

    /// As [`Self::forward`], the final hidden states `[b, t, hidden]`.
    pub fn forward_hidden(
        &self,
        ids: &Tensor,
        attention_mask: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
        train: bool,
    ) -> Tensor {
        let (b, t) = ids.size2().expect("ids are [batch, time]");
        let past = cache.as_ref().map_or(0, |c| c.len);
        let positions = Tensor::arange_start(past, past + t, (Kind::Int64, self.device))
            .unsqueeze(0)
            .expand([b, t], false);
        // Plain causal attention needs no mask tensor (and runs faster without one).
        let mask = match attention_mask {
            None if past == 0 || t == 1 => None,
            _ => Some(self.additive_mask(b, t, past, attention_mask)),
        };
        let h = self.hidden(ids, &positions, mask.as_ref(), cache.as_deref_mut(), train);
        if let Some(c) = cache {
            c.len += t;
        }
        h
    }

    /// Logits `[b, t, vocab]` for `ids` `[b, t]`. `attention_mask` `[b, past + t]`
    /// (1 = token, 0 = padding) covers cached tokens too; `None` = all tokens.
    /// With a cache, `ids` continue the cached sequence.
    pub fn forward(
        &self,
        ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        train: bool,
    ) -> Tensor {
        self.logits(&self.forward_hidden(ids, attention_mask, cache, train))
    }

    /// Logits `[b, vocab]` of the last position only (decoding: a prompt of
    /// n tokens costs one row of the LM head, not n).
    pub fn forward_last(&self, ids: &Tensor, cache: Option<&mut KvCache>) -> Tensor {
        let h = self.forward_hidden(ids, None, cache, false).select(1, -1);
        self.head_rows(&h)
    }

    /// Keeps copies of the weights in `kind` (bf16) for single-token decoding
    /// steps, which are bound by reading the weights (Llama models; `None`
    /// drops them). Prompts and training still run in the model's kind. The
    /// copies follow every change of the weights made through this type.
    pub fn set_decode_kind(&mut self, kind: Option<Kind>) {
        self.decode_kind = kind;
        self.refresh_decode();
    }

    /// Bytes of the matrices one decoding step reads (Llama: the decode
    /// copies where kept; GPT-2: its linear layers and head).
    pub fn decode_bytes(&self) -> i64 {
        self.inner.decode_bytes()
    }

    fn refresh_decode(&mut self) {
        let kind = self.decode_kind;
        self.inner.set_decode_kind(kind);
    }

    /// Logits for explicit `positions` `[b, t]` and an additive attention mask
    /// `[b, 1, t, past + t]` (e.g. block-diagonal for packed sequences); `None`
    /// is causal attention (see `attention::attention`).
    pub fn forward_raw(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        train: bool,
    ) -> Tensor {
        self.logits(&self.hidden(ids, positions, mask, cache, train))
    }

    /// As [`Self::forward_raw`], the final hidden states `[b, t, hidden]`
    /// before the LM head: the loss and decoding apply the head only where
    /// they need logits (labelled positions, the last token).
    pub fn hidden(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        train: bool,
    ) -> Tensor {
        let layers = cache.map(|c| &mut c.layers);
        let mut pass = Pass::whole(mask, layers, train);
        self.inner.forward_hidden(ids, positions, &mut pass)
    }

    /// The tokens of several sequences laid end to end, `ids` and `positions`
    /// `[1, N]`, each segment continuing its own cache with its own adapter
    /// (see [`crate::nn::pass`]): the final hidden states of each segment's last
    /// token, `[segments, hidden]`; sequences whose caches are slots of
    /// `pool` decode together. Never tracks gradients.
    pub fn forward_segments(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        segments: Vec<Segment>,
        pool: Option<&crate::nn::kv_pool::KvPool>,
    ) -> Tensor {
        let _guard = tch::no_grad_guard();
        let mut pass = Pass::segments(segments, pool);
        let h = self.inner.forward_hidden(ids, positions, &mut pass);
        pass.advance();
        pass.last_rows(&h)
    }

    /// Logits `[rows, vocab]` of the hidden states of a few last tokens
    /// (decoding: the head's decode copy where kept).
    pub fn head_rows(&self, h: &Tensor) -> Tensor {
        match self.inner.head_decode() {
            Some(w) if crate::nn::fused::reads_copies(h.size()[0], true) => {
                self.softcapped(decode_linear(h, w))
            }
            _ => self.logits(h),
        }
    }

    /// The LM head: logits `[…, vocab]` of hidden states `[…, hidden]`
    /// (soft-capped where the family caps them).
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        self.softcapped(hidden.linear::<Tensor>(self.head_weight(), None))
    }

    /// `cap · tanh(z / cap)` of the head's output `z` where the config caps
    /// logits (Gemma 2's `final_logit_softcapping`); `z` elsewhere.
    fn softcapped(&self, z: Tensor) -> Tensor {
        match self.config.extras.final_softcap {
            Some(cap) => (z / cap).tanh() * cap,
            None => z,
        }
    }

    /// The `[vocab, hidden]` LM head weight (the embedding when tied).
    pub fn head_weight(&self) -> &Tensor {
        self.inner.head_weight()
    }

    /// `[b, 1, t, past + t]`: 0 where query i may attend key j (causal and not
    /// padding), the dtype's minimum elsewhere (as transformers, so no row is NaN).
    fn additive_mask(&self, b: i64, t: i64, past: i64, attention_mask: Option<&Tensor>) -> Tensor {
        let total = past + t;
        let opts = (Kind::Int64, self.device);
        let q = Tensor::arange_start(past, total, opts).unsqueeze(1);
        let k = Tensor::arange(total, opts).unsqueeze(0);
        let mut allowed = k
            .le_tensor(&q)
            .unsqueeze(0)
            .unsqueeze(0)
            .expand([b, 1, t, total], false);
        if let Some(m) = attention_mask {
            let keys = m.to_device(self.device).ne(0).view([b, 1, 1, total]);
            allowed = allowed.logical_and(&keys);
        }
        let min = crate::nn::attention::mask_min(self.kind);
        Tensor::zeros([b, 1, t, total], (self.kind, self.device))
            .masked_fill(&allowed.logical_not(), min)
    }

    /// Bytes of KV cache one token takes (keys and values of every layer).
    pub fn kv_bytes_per_token(&self) -> i64 {
        let c = &self.config;
        2 * (c.num_layers * c.num_kv_heads * c.head_dim) as i64
            * self.kind.elt_size_in_bytes() as i64
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.config.num_layers)
    }

    /// Attaches fresh LoRA weights (B = 0) to the targeted modules.
    pub fn attach_lora(&mut self, spec: LoraSpec) -> Result<(), MlError> {
        let spec = spec.resolved(self.config.arch, &self.config.arch.family().lora)?;
        for l in self.linears_mut() {
            if spec.target_modules.iter().any(|m| m == l.module_name()) {
                l.attach_fresh(&spec);
            } else {
                l.lora = None;
            }
        }
        self.lora = Some(spec);
        Ok(())
    }

    /// Removes any LoRA, leaving the base model.
    pub fn clear_lora(&mut self) {
        for l in self.linears_mut() {
            l.lora = None;
        }
        self.lora = None;
    }

    /// The trainable LoRA tensors, in a stable order (A then B per module).
    pub fn lora_params(&self) -> Vec<(String, &Tensor)> {
        let mut v = Vec::new();
        for l in self.linears() {
            if let Some(w) = &l.lora {
                v.push((lora::peft_key(&l.path, 'A'), &w.a));
                v.push((lora::peft_key(&l.path, 'B'), &w.b));
            }
        }
        v
    }

    /// Loads a PEFT adapter directory onto this model (replacing any LoRA).
    /// Every targeted module must have both tensors with the right shapes.
    pub fn load_adapter(&mut self, dir: &Path) -> Result<(), MlError> {
        let (spec, mut by_path) = self.read_lora(dir)?;
        for l in self.linears_mut() {
            l.lora = by_path.remove(&l.path);
        }
        self.lora = Some(spec);
        Ok(())
    }

    /// A PEFT adapter directory as an [`Adapter`] for this model, apart from
    /// it: the model's weights and attached LoRA stay as they are.
    pub fn read_adapter(&self, dir: &Path) -> Result<Adapter, MlError> {
        Ok(Adapter {
            by_path: self.read_lora(dir)?.1,
        })
    }

    /// The adapter's spec and its LoRA weights by module path, checked
    /// against this model's linear layers.
    fn read_lora(&self, dir: &Path) -> Result<(LoraSpec, HashMap<String, LoraWeights>), MlError> {
        let (cfg, mut tensors) = lora::read_adapter(dir)?;
        let spec = cfg
            .to_spec(dir)?
            .resolved(self.config.arch, &self.config.arch.family().lora)
            .map_err(|e| match e {
                MlError::Adapter { msg, .. } => MlError::Adapter {
                    path: dir.to_owned(),
                    msg,
                },
                other => other,
            })?;
        let (device, r) = (self.device, spec.r as i64);
        let file = dir.join("adapter_model.safetensors");
        let mut by_path = HashMap::new();
        for l in self.linears() {
            if !spec.target_modules.iter().any(|m| m == l.module_name()) {
                continue;
            }
            let (fan_in, fan_out) = l.in_out();
            let mut take = |which: char, shape: [i64; 2]| -> Result<Tensor, MlError> {
                let key = lora::peft_key(&l.path, which);
                let t = tensors.remove(&key).ok_or_else(|| MlError::MissingTensor {
                    name: key.clone(),
                    path: file.clone(),
                })?;
                if t.size() != shape {
                    return Err(MlError::ShapeMismatch {
                        name: key,
                        expected: shape.to_vec(),
                        found: t.size(),
                        path: file.clone(),
                    });
                }
                Ok(t.to_kind(Kind::Float).to_device(device))
            };
            let a = take('A', [r, fan_in])?;
            let b = take('B', [fan_out, r])?;
            let w = LoraWeights {
                a,
                b,
                scale: spec.scale(),
                dropout: spec.dropout,
            };
            by_path.insert(l.path.clone(), w);
        }
        if by_path.is_empty() {
            return Err(MlError::Adapter {
                path: dir.to_owned(),
                msg: "the adapter targets no module of this model".into(),
            });
        }
        if let Some(extra) = tensors.keys().next() {
            return Err(MlError::Adapter {
                path: dir.to_owned(),
                msg: format!("tensor {extra} matches no targeted module of this model"),
            });
        }
        Ok((spec, by_path))
    }

    /// Saves the attached LoRA in PEFT's format.
    pub fn save_adapter(&self, dir: &Path, base: Option<&Path>) -> Result<(), MlError> {
        let spec = self.lora.as_ref().ok_or_else(|| MlError::Adapter {
            path: dir.to_owned(),
            msg: "no LoRA attached to save".into(),
        })?;
        let mut cfg = PeftConfig::from_spec(spec, &self.config.arch.family().lora, base);
        if self.config.extras.multimodal {
            cfg.exclude_modules = Some(serde_json::json!(lora::NOT_TEXT));
        }
        let name = |path: &str| self.config.peft_module(path);
        lora::save_adapter(dir, &cfg, &self.linears(), &name)
    }

    /// Writes the model (LoRA merged in) in Hugging Face layout: `config.json`
    /// and `model.safetensors`. Tokenizer files are the caller's to copy.
    pub fn export_merged(&self, dir: &Path) -> Result<(), MlError> {
        let merged: HashMap<String, Tensor> = self
            .linears()
            .into_iter()
            .filter(|l| l.lora.is_some())
            .map(|l| (format!("{}.weight", l.path), l.merged_weight()))
            .collect();
        let named: Vec<(String, Tensor)> = tch::no_grad(|| {
            self.inner
                .named_tensors()
                .into_iter()
                .map(|(n, t)| {
                    let t = match merged.get(&n) {
                        Some(m) => m.shallow_clone(),
                        None => t.detach().to_kind(Kind::Float),
                    };
                    (n, t.to_device(Device::Cpu).contiguous())
                })
                .collect()
        });
        lorastream_base::fsutil::create_dir_all_durable(dir).map_err(|e| MlError::io(dir, e))?;
        crate::load::weights::write_safetensors_atomic(&dir.join("model.safetensors"), &named)?;
        let cfg = dir.join("config.json");
        lorastream_base::fsutil::write_json_atomic(&cfg, &self.config.to_json())
            .map_err(|e| MlError::io(&cfg, e))
    }
}

/// Files besides the weights that make a model directory usable by tokenizers
/// and transformers; copied by merged exports.
pub const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
];

/// Merges `adapter` into the base model at `base` and writes a standalone model
/// directory (weights, config, tokenizer files) to `out`.
pub fn export_merged_model(base: &Path, adapter: &Path, out: &Path) -> Result<(), MlError> {
    let mut m = CausalLm::load(base, Device::Cpu, Kind::Float)?;
    m.load_adapter(adapter)?;
    m.export_merged(out)?;
    for f in TOKENIZER_FILES {
        let src = base.join(f);
        if src.exists() {
            let bytes = std::fs::read(&src).map_err(|e| MlError::io(&src, e))?;
            let dst = out.join(f);
            lorastream_base::fsutil::write_atomic(&dst, &bytes)
                .map_err(|e| MlError::io(&dst, e))?;
        }
    }
    Ok(())
}
