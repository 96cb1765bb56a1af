//! Reading a model's safetensors (single file or sharded with an index) into a
//! name → tensor map that the layers take their weights from, by checkpoint name.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use crate::MlError;

/// The tensors of a checkpoint, taken out one by one as layers load. Files
/// are memory-mapped: each tensor is copied once, from the page cache into
/// its place on the model's device and dtype, when a layer takes it; nothing
/// holds the whole file in memory beside the model.
pub struct Weights {
    tensors: HashMap<String, Stored>,
    maps: Vec<memmap2::Mmap>,
    source: PathBuf,
    device: Device,
    kind: Kind,
}

/// Where a tensor's bytes are: `maps[map][start..end]`, of `kind` and `shape`.
struct Stored {
    map: usize,
    start: usize,
    end: usize,
    kind: Kind,
    shape: Vec<i64>,
}

impl Stored {
    fn size(&self) -> Vec<i64> {
        self.shape.clone()
    }
}

/// Maps `path` and lists its tensors (validated by the safetensors parser).
fn map_file(path: &Path, index: usize) -> Result<(memmap2::Mmap, Vec<(String, Stored)>), MlError> {
    let bad = |msg: String| MlError::Safetensors {
        path: path.to_owned(),
        msg,
    };
    let file = std::fs::File::open(path).map_err(|e| MlError::io(path, e))?;
    // SAFETY: the map is read-only and private to this process; model files
    // are written atomically (renamed into place), never rewritten in place.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| MlError::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&map).map_err(|e| bad(format!("{e:?}")))?;
    let base = map.as_ptr() as usize;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let kind = Kind::try_from(view.dtype()).map_err(|e| bad(format!("{name}: {e}")))?;
        let start = view.data().as_ptr() as usize - base;
        out.push((
            name,
            Stored {
                map: index,
                start,
                end: start + view.data().len(),
                kind,
                shape: view.shape().iter().map(|&d| d as i64).collect(),
            },
        ));
    }
    Ok((map, out))
}

/// A multimodal checkpoint's name for a piece of its text model as a
/// text-only checkpoint names it (`model.language_model.X` or
/// `language_model.model.X` → `model.X`, `language_model.lm_head.X` →
/// `lm_head.X`, `lm_head.X` kept); None for the rest (vision tower,
/// projector).
pub(crate) fn text_model_name(name: &str) -> Option<String> {
    let layers = name
        .strip_prefix("model.language_model.")
        .or_else(|| name.strip_prefix("language_model.model."))
        .map(|r| format!("model.{r}"));
    layers
        .or_else(|| name.strip_prefix("language_model.").map(str::to_string))
        .or_else(|| name.starts_with("lm_head.").then(|| name.to_string()))
}

/// Row-major strides of `shape`, in elements.
fn contiguous_strides(shape: &[i64]) -> Vec<i64> {
    let mut strides = vec![1i64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

impl Weights {
    /// Loads `model.safetensors`, or every shard named by `model.safetensors.index.json`.
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Weights, MlError> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let mut tensors = HashMap::new();
        let mut maps = Vec::new();
        let mut read = |path: &Path| -> Result<(), MlError> {
            let (map, list) = map_file(path, maps.len())?;
            maps.push(map);
            tensors.extend(list);
            Ok(())
        };
        let source = if single.exists() || !index.exists() {
            read(&single)?;
            single
        } else {
            let text = std::fs::read_to_string(&index).map_err(|e| MlError::io(&index, e))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| MlError::Safetensors {
                    path: index.clone(),
                    msg: e.to_string(),
                })?;
            let map = v["weight_map"]
                .as_object()
                .ok_or_else(|| MlError::Safetensors {
                    path: index.clone(),
                    msg: "no weight_map object".into(),
                })?;
            let mut files: Vec<&str> = map.values().filter_map(|f| f.as_str()).collect();
            files.sort_unstable();
            files.dedup();
            for f in files {
                if f.contains('/') || f.contains("..") {
                    return Err(MlError::Safetensors {
                        path: index.clone(),
                        msg: format!("shard name {f:?} leaves the model directory"),
                    });
                }
                read(&dir.join(f))?;
            }
            index
        };
        Ok(Weights {
            tensors,
            maps,
            source,
            device,
            kind,
        })
    }

    /// Keeps the text model of a multimodal checkpoint under the names a
    /// text-only one has (`model.language_model.X` or `language_model.model.X`
    /// → `model.X`, `language_model.lm_head.X` → `lm_head.X`), dropping the
    /// rest (vision tower, projector).
    pub fn text_model_of_multimodal(&mut self) {
        self.tensors = std::mem::take(&mut self.tensors)
            .into_iter()
            .filter_map(|(k, t)| Some((text_model_name(&k)?, t)))
            .collect();
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Removes `name`, checks its shape, and moves it to the model's device and dtype.
    pub fn take(&mut self, name: &str, shape: &[i64]) -> Result<Tensor, MlError> {
        let t = self
            .tensors
            .remove(name)
            .ok_or_else(|| MlError::MissingTensor {
                name: name.to_string(),
                path: self.source.clone(),
            })?;
        if t.size() != shape {
            return Err(MlError::ShapeMismatch {
                name: name.to_string(),
                expected: shape.to_vec(),
                found: t.size(),
                path: self.source.clone(),
            });
        }
        let Stored {
            map,
            start,
            end,
            kind,
            shape,
        } = t;
        let bytes = &self.maps[map][start..end];
        // One copy, from the mapped file straight into the tensor the model
        // keeps, converting dtype (and device) on the way.
        let mut t = Tensor::empty(&shape, (self.kind, self.device));
        let strides = contiguous_strides(&shape);
        // SAFETY: `bytes` is exactly the tensor's data (the parser checked
        // its length against shape and dtype) and outlives `view`, which is
        // only read by the copy below.
        let view =
            unsafe { Tensor::f_from_blob(bytes.as_ptr(), &shape, &strides, kind, Device::Cpu) }
                .map_err(|e| MlError::Safetensors {
                    path: self.source.clone(),
                    msg: format!("{name}: {e}"),
                })?;
        t.copy_(&view);
        Ok(t.to_device(self.device)
            .to_kind(self.kind)
            .set_requires_grad(false))
    }

    /// Like [`take`](Self::take) for the first of `names` present.
    pub fn take_any(&mut self, names: &[String], shape: &[i64]) -> Result<Tensor, MlError> {
        let name = names
            .iter()
            .find(|n| self.contains(n))
            .unwrap_or(&names[0])
            .clone();
        self.take(&name, shape)
    }

    /// Names left after loading, minus known buffers that carry no weights.
    pub fn unused(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .tensors
            .keys()
            .map(String::as_str)
            .filter(|k| {
                !k.ends_with(".attn.bias")
                    && !k.ends_with(".attn.masked_bias")
                    && !k.ends_with("rotary_emb.inv_freq")
            })
            .collect();
        v.sort_unstable();
        v
    }
}

/// Writes tensors as a safetensors file atomically, like every artifact
/// (see [`lorastream_base::fsutil::write_atomic_via`]).
pub fn write_safetensors_atomic<S: AsRef<str>, T: AsRef<Tensor>>(
    path: &Path,
    tensors: &[(S, T)],
) -> Result<(), MlError> {
    let mut torch_error = None;
    lorastream_base::fsutil::write_atomic_via(path, |tmp| {
        Tensor::write_safetensors(tensors, tmp).map_err(|e| {
            let msg = e.to_string();
            torch_error = Some(msg.clone());
            std::io::Error::other(msg)
        })
    })
    .map_err(|e| match torch_error {
        Some(msg) => MlError::Safetensors {
            path: path.to_owned(),
            msg,
        },
        None => MlError::io(path, e),
    })
}

/// Bytes of a tensor's elements.
pub(crate) fn tensor_bytes(t: &Tensor) -> i64 {
    t.numel() as i64 * t.kind().elt_size_in_bytes() as i64
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_multimodal_checkpoints_text_model_keeps_the_text_only_names() {
        let text = super::text_model_name;
        let layer = "model.layers.0.self_attn.q_proj.weight";
        for name in [
            "model.language_model.layers.0.self_attn.q_proj.weight",
            "language_model.model.layers.0.self_attn.q_proj.weight",
        ] {
            assert_eq!(text(name).as_deref(), Some(layer));
        }
        assert_eq!(
            text("language_model.lm_head.weight").as_deref(),
            Some("lm_head.weight")
        );
        assert_eq!(text("lm_head.weight").as_deref(), Some("lm_head.weight"));
        assert_eq!(
            text("model.vision_tower.vision_model.post_layernorm.weight"),
            None
        );
        assert_eq!(
            text("multi_modal_projector.mm_input_projection_weight"),
            None
        );
    }
}
