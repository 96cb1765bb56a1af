//! KV caches of a batch in one buffer per layer, `[slots, kv_heads,
//! capacity, head_dim]`: each sequence's cache is a slot (a view, so the
//! per-sequence path of [`crate::attention`] works unchanged), and the
//! decoding steps of all pooled sequences attend in one call — their new
//! keys and values written with one indexed store, one attention over the
//! slots with a mask for each one's length — instead of a handful of calls
//! per sequence and layer.

use tch::{Device, Kind, Tensor};

use crate::attention::{KvCache, LayerCache, Qkv, Scores, attend, seen};
use crate::hf_config::HfConfig;

pub struct KvPool {
    /// Per layer: keys and values `[slots, kv_heads, capacity, head_dim]`.
    layers: Vec<(Tensor, Tensor)>,
    capacity: i64,
}

impl KvPool {
    /// Room for `slots` sequences of up to `capacity` positions each on a
    /// model of `config` (memory is touched only as positions are written).
    pub fn new(config: &HfConfig, kind: Kind, device: Device, slots: i64, capacity: i64) -> KvPool {
        let shape = [
            slots,
            config.num_kv_heads as i64,
            capacity,
            config.head_dim as i64,
        ];
        let layers = (0..config.num_layers)
            .map(|_| {
                (
                    Tensor::empty(shape, (kind, device)),
                    Tensor::empty(shape, (kind, device)),
                )
            })
            .collect();
        KvPool { layers, capacity }
    }

    /// Positions one slot holds.
    pub fn capacity(&self) -> i64 {
        self.capacity
    }

    /// The cache of the sequence in `slot` (empty; what it held is overwritten).
    pub fn cache(&self, slot: i64) -> KvCache {
        KvCache {
            layers: self
                .layers
                .iter()
                .map(|(k, v)| LayerCache::over(k.narrow(0, slot, 1), v.narrow(0, slot, 1)))
                .collect(),
            len: 0,
            slot: Some(slot),
        }
    }

    /// Attention of one decoding step of several pooled sequences at layer
    /// `layer`: `x.q` `[d, heads, 1, hd]`, `x.k`, `x.v` `[d, kv_heads, 1, hd]`
    /// of the sequences at `rows` (slot, positions its cache holds). Writes
    /// the new keys and values into the slots; returns `[d, heads, 1, hd]`.
    pub(crate) fn decode(
        &self,
        layer: usize,
        x: &Qkv,
        rows: &[(i64, i64)],
        scores: &Scores,
        gqa: bool,
    ) -> Tensor {
        let dev = x.q.device();
        let (pk, pv) = &self.layers[layer];
        let (slots, past): (Vec<i64>, Vec<i64>) = rows.iter().copied().unzip();
        let s = Tensor::from_slice(&slots).to_device(dev);
        let p = Tensor::from_slice(&past).to_device(dev);
        let at = [Some(s.shallow_clone()), None, Some(p.shallow_clone())];
        let _ = pk
            .shallow_clone()
            .index_put_(&at, &x.k.squeeze_dim(2), false);
        let _ = pv
            .shallow_clone()
            .index_put_(&at, &x.v.squeeze_dim(2), false);
        let keys = past.iter().max().map_or(1, |m| m + 1);
        // On a sliding layer, no row sees a key before the earliest window.
        let first = match scores.window {
            Some(w) => (past.iter().min().copied().unwrap_or(0) - w + 1).max(0),
            None => 0,
        };
        let ks = pk.narrow(2, first, keys - first).index_select(0, &s);
        let vs = pv.narrow(2, first, keys - first).index_select(0, &s);
        let seen = seen(&(&p - first), keys - first, scores.window);
        attend(&x.q, &ks, &vs, Some(&seen), false, scores, gqa)
    }
}
