//! What one forward pass runs over, as the model families see it.
//!
//! - [`Pass::whole`]: a `[b, t]` batch of aligned rows (training, evaluation,
//!   one sequence with its cache), each linear with its own attached LoRA.
//! - [`Pass::segments`]: a ragged batch (serving): the tokens of several
//!   sequences laid end to end in one `[1, N]` row, each [`Segment`] with its
//!   own KV cache and its own adapter. The linear layers run once over all N
//!   tokens; attention runs per segment against that segment's cache; each
//!   run of segments that share an adapter adds that adapter's LoRA to its
//!   rows, unmerged (the base weights are never modified).

use std::collections::HashMap;

use tch::Tensor;

use crate::nn::attention::{KvCache, LayerCache, Qkv, Scores, attention, visible};
use crate::nn::kv_pool::KvPool;
use crate::nn::lora::{Linear, LoraWeights};

/// The LoRA of one version, apart from any model: `scale · B·A` per linear
/// layer, by the layer's checkpoint path. Shared by every sequence that runs
/// on the version; the base weights stay as loaded.
pub struct Adapter {
    pub(crate) by_path: HashMap<String, LoraWeights>,
}

impl Adapter {
    /// The LoRA of the linear layer at `path`, if the adapter targets it.
    fn get(&self, path: &str) -> Option<&LoraWeights> {
        self.by_path.get(path)
    }
}

/// One sequence's tokens in a ragged pass.
pub struct Segment<'a> {
    /// Its tokens in this pass (all positions follow what `cache` holds).
    pub len: i64,
    pub cache: &'a mut KvCache,
    /// Its version's LoRA (None: the weights as loaded).
    pub adapter: Option<&'a Adapter>,
}

enum Rows<'a> {
    Whole {
        mask: Option<&'a Tensor>,
        cache: Option<&'a mut Vec<LayerCache>>,
    },
    Segments(Vec<Segment<'a>>, Option<&'a KvPool>),
}

/// One forward pass's rows, attention and LoRA (see the module docs).
pub struct Pass<'a> {
    pub train: bool,
    rows: Rows<'a>,
}

impl<'a> Pass<'a> {
    /// Aligned rows; `mask`: additive `[b, 1, t, past + t]` or `None` (causal).
    pub fn whole(
        mask: Option<&'a Tensor>,
        cache: Option<&'a mut Vec<LayerCache>>,
        train: bool,
    ) -> Pass<'a> {
        Pass {
            train,
            rows: Rows::Whole { mask, cache },
        }
    }

    /// Sequences end to end in one row (never training); those whose
    /// caches are slots of `pool` decode together.
    pub fn segments(segments: Vec<Segment<'a>>, pool: Option<&'a KvPool>) -> Pass<'a> {
        Pass {
            train: false,
            rows: Rows::Segments(segments, pool),
        }
    }

    /// Whether every row is a single new token (a decoding step).
    pub fn decoding(&self, x: &Tensor) -> bool {
        match &self.rows {
            Rows::Whole { .. } => x.numel() as i64 == *x.size().last().unwrap_or(&0),
            Rows::Segments(s, _) => s.iter().all(|s| s.len == 1),
        }
    }

    /// Attention of layer `layer`: `q` `[b, heads, t, hd]`, `k`, `v`
    /// `[b, kv_heads, t, hd]` (new tokens; cached ones are appended to).
    pub fn attention(
        &mut self,
        layer: usize,
        q: &Tensor,
        k: Tensor,
        v: Tensor,
        scores: &Scores,
        gqa: bool,
    ) -> Tensor {
        match &mut self.rows {
            Rows::Whole { mask, cache } => {
                let c = cache.as_deref_mut().map(|c| &mut c[layer]);
                attention(q, k, v, *mask, c, scores, gqa)
            }
            Rows::Segments(segs, pool) => {
                let x = Qkv {
                    q: q.shallow_clone(),
                    k,
                    v,
                };
                attend_segments(segs, *pool, layer, &x, scores, gqa)
            }
        }
    }

    /// The output of linear layer `l` for `x`, with the LoRA its rows use.
    pub fn linear(&self, l: &Linear, x: &Tensor) -> Tensor {
        self.lora(l, l.base_forward(x), x)
    }

    /// `y` (the base layer's output for `x`) plus the LoRA of `l` its rows use:
    /// the layer's attached one for whole rows, each segment's adapter's otherwise.
    pub fn lora(&self, l: &Linear, y: Tensor, x: &Tensor) -> Tensor {
        let segs = match &self.rows {
            Rows::Whole { .. } => return l.with_lora(y, x, self.train),
            Rows::Segments(s, _) => s,
        };
        let mut start = 0;
        let mut i = 0;
        while i < segs.len() {
            // A run of segments on the same adapter adds its LoRA at once.
            let a = segs[i].adapter;
            let mut len = 0;
            while i < segs.len() && same(segs[i].adapter, a) {
                len += segs[i].len;
                i += 1;
            }
            if let Some(w) = a.and_then(|a| a.get(&l.path)) {
                let mut rows = y.narrow(-2, start, len);
                let sum = w.add_to(&rows, &x.narrow(-2, start, len));
                rows.copy_(&sum);
            }
            start += len;
        }
        y
    }

    /// The rows each segment ends on (`[1, N, d]` → `[segments, d]`).
    pub fn last_rows(&self, h: &Tensor) -> Tensor {
        match &self.rows {
            Rows::Whole { .. } => h.select(1, -1),
            Rows::Segments(segs, _) => {
                let mut end = 0;
                let idx: Vec<i64> = segs
                    .iter()
                    .map(|s| {
                        end += s.len;
                        end - 1
                    })
                    .collect();
                let idx = Tensor::from_slice(&idx).to_device(h.device());
                h.select(0, 0).index_select(0, &idx)
            }
        }
    }

    /// Counts each segment's tokens into its cache (whole rows: the caller's).
    pub(crate) fn advance(&mut self) {
        if let Rows::Segments(segs, _) = &mut self.rows {
            segs.iter_mut().for_each(|s| s.cache.len += s.len);
        }
    }
}

/// One segment's attention against its own cache (`x`: its rows).
fn attend_one(s: &mut Segment, layer: usize, x: Qkv, scores: &Scores, gqa: bool) -> Tensor {
    let c = &mut s.cache.layers[layer];
    let past = c.len();
    let mask = (past > 0 && s.len > 1).then(|| visible(s.len, past, None, x.q.device()));
    attention(&x.q, x.k, x.v, mask.as_ref(), Some(c), scores, gqa)
}

/// Attention of a ragged pass: sequences decoding in slots of `pool` in
/// one call, every other segment against its own cache.
fn attend_segments(
    segs: &mut [Segment],
    pool: Option<&KvPool>,
    layer: usize,
    x: &Qkv,
    scores: &Scores,
    gqa: bool,
) -> Tensor {
    if let [s] = segs {
        return attend_one(s, layer, x.map(Tensor::shallow_clone), scores, gqa);
    }
    let pooled = |s: &Segment| pool.is_some() && s.len == 1 && s.cache.slot.is_some();
    let together = segs.iter().filter(|s| pooled(s)).count() >= 2;
    let out = x.q.zeros_like();
    let (mut idx, mut rows) = (Vec::new(), Vec::new());
    let mut start = 0;
    for s in segs.iter_mut() {
        if together && pooled(s) {
            idx.push(start);
            rows.push((
                s.cache.slot.unwrap_or_default(),
                s.cache.layers[layer].len(),
            ));
            s.cache.layers[layer].filled(1);
        } else {
            let r = attend_one(s, layer, x.map(|t| t.narrow(2, start, s.len)), scores, gqa);
            out.narrow(2, start, s.len).copy_(&r);
        }
        start += s.len;
    }
    if let (Some(pool), false) = (pool, idx.is_empty()) {
        let at = Tensor::from_slice(&idx).to_device(x.q.device());
        let mine = x.map(|t| t.index_select(2, &at).permute([2, 1, 0, 3]));
        let o = pool.decode(layer, &mine, &rows, scores, gqa);
        let mut out = out.shallow_clone();
        let _ = out.index_copy_(2, &at, &o.permute([2, 1, 0, 3]));
    }
    out
}

fn same(a: Option<&Adapter>, b: Option<&Adapter>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => std::ptr::eq(a, b),
        _ => false,
    }
}
