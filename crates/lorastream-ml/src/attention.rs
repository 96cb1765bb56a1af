//! Attention over a KV cache that is allocated ahead and written in place:
//! decoding a token copies only that token's keys and values, not the cache.

use tch::Tensor;

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
    /// A cache over buffers owned elsewhere (a slot of a [`crate::kv_pool::KvPool`]).
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
    /// Its slot, when its buffers are a slot of a [`crate::kv_pool::KvPool`].
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

/// Scaled dot-product attention over `q` and the new `k`, `v` appended to the
/// cache. `mask`: additive `[b, 1, t, past + t]`; `None` = causal over the new
/// tokens when the cache was empty, or all keys for a single query (which lets
/// libtorch use its fused kernels instead of materialising the scores).
pub(crate) fn attention(
    q: &Tensor,
    k: Tensor,
    v: Tensor,
    mask: Option<&Tensor>,
    cache: Option<&mut LayerCache>,
    gqa: bool,
) -> Tensor {
    let (k, v) = match cache {
        Some(c) => c.append(&k, &v),
        None => (k, v),
    };
    // Grouped-query attention: SDPA shares each key/value head across its query
    // heads itself (enable_gqa), without copying k and v.
    let causal = mask.is_none() && q.size()[2] > 1;
    Tensor::scaled_dot_product_attention(q, &k, &v, mask, 0.0, causal, None, gqa)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

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
