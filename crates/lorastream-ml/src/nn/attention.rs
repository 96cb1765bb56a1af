//! Attention over a KV cache that is allocated ahead and written in place:
//! decoding a token copies only that token's keys and values, not the cache.

use tch::{Device, Kind, Tensor};

/// Keys and values of one layer: buffers `[b, kv_heads, capacity, head_dim]`
/// of which the first `len` positions are filled.
#[derive(Default)]
pub struct LayerCache {
    buffers: Option<(Tensor, Tensor)>,
    len: i64,
    /// Positions the first allocation holds (0: grow as needed).
    reserve: i64,
}

/// Positions a cache grows by at least (amortises regrowth while decoding).
const GROW: i64 = 256;

impl LayerCache {
    /// A cache over buffers owned elsewhere (a slot of a [`crate::nn::kv_pool::KvPool`]).
    pub(crate) fn over(k: Tensor, v: Tensor) -> LayerCache {
        let reserve = k.size()[2];
        LayerCache {
            buffers: Some((k, v)),
            len: 0,
            reserve,
        }
    }

    /// Counts `n` positions written into the buffers by someone else.
    pub(crate) fn filled(&mut self, n: i64) {
        self.len += n;
    }

    /// Positions filled.
    pub fn len(&self) -> i64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `k`, `v` `[b, kv_heads, t, head_dim]` and returns views of all
    /// cached keys and values. Full buffers grow to twice what is needed.
    fn append(&mut self, k: &Tensor, v: &Tensor) -> (Tensor, Tensor) {
        let t = k.size()[2];
        let need = self.len + t;
        let full = self
            .buffers
            .as_ref()
            .is_none_or(|(bk, _)| bk.size()[2] < need);
        if full {
            let mut shape = k.size();
            shape[2] = if self.buffers.is_none() && self.reserve >= need {
                self.reserve
            } else {
                (need * 2).max(GROW)
            };
            let grow = |old: Option<&Tensor>, new: &Tensor| {
                let buf = Tensor::empty(shape.as_slice(), (new.kind(), new.device()));
                if let Some(o) = old {
                    buf.narrow(2, 0, self.len).copy_(&o.narrow(2, 0, self.len));
                }
                buf
            };
            let old = self.buffers.take();
            self.buffers = Some((
                grow(old.as_ref().map(|o| &o.0), k),
                grow(old.as_ref().map(|o| &o.1), v),
            ));
        }
        let (bk, bv) = self.buffers.as_ref().expect("allocated above");
        bk.narrow(2, self.len, t).copy_(k);
        bv.narrow(2, self.len, t).copy_(v);
        self.len = need;
        (bk.narrow(2, 0, need), bv.narrow(2, 0, need))
    }
}

/// Queries, keys and values of new tokens, `[b, heads or kv_heads, t, hd]`.
pub(crate) struct Qkv {
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
}

impl Qkv {
    /// Each of the three through `f` (a slice of rows, a reordering).
    pub(crate) fn map(&self, f: impl Fn(&Tensor) -> Tensor) -> Qkv {
        Qkv {
            q: f(&self.q),
            k: f(&self.k),
            v: f(&self.v),
        }
    }
}

/// The KV cache of a whole model for incremental decoding.
pub struct KvCache {
    pub layers: Vec<LayerCache>,
    /// Tokens already in the cache.
    pub len: i64,
    /// Its slot, when its buffers are a slot of a [`crate::nn::kv_pool::KvPool`].
    pub slot: Option<i64>,
}

impl KvCache {
    pub fn new(num_layers: usize) -> KvCache {
        Self::with_capacity(num_layers, 0)
    }

    /// A cache whose buffers are allocated once for `positions` tokens (a
    /// served sequence knows its prompt and its token budget).
    pub fn with_capacity(num_layers: usize, positions: i64) -> KvCache {
        KvCache {
            layers: (0..num_layers)
                .map(|_| LayerCache {
                    reserve: positions,
                    ..LayerCache::default()
                })
                .collect(),
            len: 0,
            slot: None,
        }
    }
}

/// How one layer turns queries and keys into attention weights, beyond
/// softmax(q·kᵀ/√d) over the causal past (the default).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Scores {
    /// Multiplies q·kᵀ (None: 1/√head_dim).
    pub scale: Option<f64>,
    /// Scores pass `cap · tanh(s / cap)` before the mask (Gemma 2).
    pub softcap: Option<f64>,
    /// A query sees only the latest `window` positions, itself included.
    pub window: Option<i64>,
}

/// Scaled dot-product attention over `q` and the new `k`, `v` appended to the
/// cache. `mask`: additive `[b, 1, t, past + t]`; `None` = causal over the new
/// tokens when the cache was empty, or all keys for a single query (which lets
/// libtorch use its fused kernels instead of materialising the scores).
/// A sliding window narrows either to the latest `window` keys.
pub(crate) fn attention(
    q: &Tensor,
    k: Tensor,
    v: Tensor,
    mask: Option<&Tensor>,
    cache: Option<&mut LayerCache>,
    scores: &Scores,
    gqa: bool,
) -> Tensor {
    let (k, v) = match cache {
        Some(c) => c.append(&k, &v),
        None => (k, v),
    };
    let (t, total) = (q.size()[2], k.size()[2]);
    if let (Some(w), None, 1) = (scores.window, mask, t)
        && total > w
    {
        // One query on a sliding layer: its latest `window` keys alone,
        // unmasked (the fused kernel; the cost of a step stays bounded).
        let (k, v) = (k.narrow(2, total - w, w), v.narrow(2, total - w, w));
        return attend(q, &k, &v, None, false, scores, gqa);
    }
    // Where some key lies outside a query's window, the mask says so.
    let windowed = scores.window.filter(|w| total > *w).map(|w| {
        let band = visible(t, total - t, Some(w), q.device());
        match mask {
            Some(m) => restrict(m, &band),
            None => band,
        }
    });
    let mask = windowed.as_ref().or(mask);
    let causal = mask.is_none() && t > 1;
    attend(q, &k, &v, mask, causal, scores, gqa)
}

/// Softmax attention with `scores`' scale and soft-capping; `mask`: boolean
/// (true = may attend) or additive. Grouped-query attention: SDPA shares each
/// key/value head across its query heads itself (enable_gqa), without
/// copying k and v; soft-capped scores are formed here, as transformers'
/// eager attention forms them (there is no fused kernel for them).
pub(crate) fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    causal_rows: bool,
    scores: &Scores,
    gqa: bool,
) -> Tensor {
    let Some(cap) = scores.softcap else {
        return Tensor::scaled_dot_product_attention(
            q,
            k,
            v,
            mask,
            0.0,
            causal_rows,
            scores.scale,
            gqa,
        );
    };
    let groups = q.size()[1] / k.size()[1];
    let (k, v) = match groups {
        1 => (k.shallow_clone(), v.shallow_clone()),
        g => (
            k.repeat_interleave_self_int(g, 1, None),
            v.repeat_interleave_self_int(g, 1, None),
        ),
    };
    let scale = scores.scale.unwrap_or(1.0 / (q.size()[3] as f64).sqrt());
    let s = (q.matmul(&k.transpose(-2, -1)) * scale / cap).tanh() * cap;
    let (t, total) = (q.size()[2], k.size()[2]);
    let min = mask_min(s.kind());
    let s = match mask {
        Some(m) if m.kind() == Kind::Bool => s.masked_fill(&m.logical_not(), min),
        Some(m) => s + m,
        None if causal_rows => {
            s.masked_fill(&visible(t, total - t, None, q.device()).logical_not(), min)
        }
        None => s,
    };
    s.softmax(-1, Kind::Float).to_kind(q.kind()).matmul(&v)
}

/// `[1, 1, t, past + t]`, true where query i may see key j: j ≤ past + i,
/// and, with a `window`, j > past + i − window. Rows padded at one end keep
/// their tokens' distances, so the band over indices is the band over
/// positions.
pub(crate) fn visible(t: i64, past: i64, window: Option<i64>, dev: Device) -> Tensor {
    let opts = (Kind::Int64, dev);
    let qi = Tensor::arange_start(past, past + t, opts).unsqueeze(1);
    let kj = Tensor::arange(past + t, opts).unsqueeze(0);
    let mut seen = kj.le_tensor(&qi);
    if let Some(w) = window {
        seen = seen.logical_and(&kj.gt_tensor(&(qi - w)));
    }
    seen.view([1, 1, t, past + t])
}

/// `mask` (boolean or additive; causal already) also refusing what `band` refuses.
fn restrict(mask: &Tensor, band: &Tensor) -> Tensor {
    match mask.kind() {
        Kind::Bool => mask.logical_and(band),
        kind => mask.masked_fill(&band.logical_not(), mask_min(kind)),
    }
}

/// The most negative finite value of `kind`: masked scores (as
/// transformers, so a row with every key masked is uniform, not NaN).
pub(crate) fn mask_min(kind: Kind) -> f64 {
    match kind {
        Kind::BFloat16 => -3.3895313892515355e38,
        Kind::Half => -65504.0,
        Kind::Double => f64::MIN,
        _ => f32::MIN as f64,
    }
}

/// The keys a pooled decoding step of queries at positions `past` `[d]`
/// may see: `[d, 1, 1, keys]`, the causal past within `window`.
pub(crate) fn seen(past: &Tensor, keys: i64, window: Option<i64>) -> Tensor {
    let d = past.size()[0];
    let kj = Tensor::arange(keys, (Kind::Int64, past.device())).unsqueeze(0);
    let p = past.unsqueeze(1);
    let mut seen = kj.le_tensor(&p);
    if let Some(w) = window {
        seen = seen.logical_and(&kj.gt_tensor(&(p - w)));
    }
    seen.view([d, 1, 1, keys])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_grows_and_keeps_what_it_holds() {
        let mut c = LayerCache::default();
        let step = |i: i64| Tensor::full([1, 2, 1, 4], i as f64, (Kind::Float, tch::Device::Cpu));
        let mut all = Vec::new();
        for i in 0..(GROW * 3) {
            let (k, v) = c.append(&step(i), &step(-i));
            all.push(i as f32);
            assert_eq!(k.size(), [1, 2, i + 1, 4]);
            assert_eq!(
                f32::try_from(v.get(0).get(1).get(i).get(3)).unwrap(),
                -(i as f32)
            );
        }
        let (k, _) = c.append(&step(0).narrow(2, 0, 0), &step(0).narrow(2, 0, 0));
        let firsts: Vec<f32> = k.get(0).get(0).select(1, 0).try_into().unwrap();
        assert_eq!(firsts, all);
    }
}
