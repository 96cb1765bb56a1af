//! KV caches of a batch in one buffer per layer, `[slots, kv_heads,
//! capacity, head_dim]`: each sequence's cache is a slot (a view, so the
//! per-sequence path of [`crate::nn::attention`] works unchanged), and the
//! decoding steps of all pooled sequences attend in one call — their new
//! keys and values written with one indexed store, one attention over the
//! slots with a mask for each one's length — instead of a handful of calls
//! per sequence and layer.

use tch::{Device, Kind, Tensor};

use crate::hf_config::HfConfig;
use crate::nn::attention::{KvCache, LayerCache, Qkv, Scores, attend, seen};

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
        let n = keys - first;
        let seen = seen(&(&p - first), n, scores.window);
        // A shorter row's slots past its own length were never written (the
        // pool is allocated uninitialised): zeroed in these copies, as
        // garbage there (NaN, inf) would poison its row even masked.
        let unseen = seen.view([rows.len() as i64, 1, n, 1]).logical_not();
        let ks = pk.narrow(2, first, n).index_select(0, &s);
        let vs = pv.narrow(2, first, n).index_select(0, &s);
        let (ks, vs) = (ks.masked_fill(&unseen, 0.0), vs.masked_fill(&unseen, 0.0));
        attend(&x.q, &ks, &vs, Some(&seen), false, scores, gqa)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows of different lengths over a pool whose unwritten slots hold NaN
    /// (uninitialised memory may): each row's attention is that of its own
    /// written keys alone, with and without soft-capping and a window.
    #[test]
    fn a_shorter_row_ignores_what_its_slot_never_held() {
        let (kvh, hd, cap) = (2i64, 4i64, 8i64);
        let opts = (Kind::Float, Device::Cpu);
        let full = Tensor::full([2, kvh, cap, hd], f64::NAN, opts);
        let pool = KvPool {
            layers: vec![(full.copy(), full.copy())],
            capacity: cap,
        };
        tch::manual_seed(3);
        // Slot 0 holds 5 positions, slot 1 holds 1: the step writes position 5 and 1.
        let (kp, vp) = (
            Tensor::randn([2, kvh, 6, hd], opts),
            Tensor::randn([2, kvh, 6, hd], opts),
        );
        for (k, v) in [(&pool.layers[0].0, &kp), (&pool.layers[0].1, &vp)] {
            k.narrow(0, 0, 1)
                .narrow(2, 0, 5)
                .copy_(&v.narrow(0, 0, 1).narrow(2, 0, 5));
            k.narrow(0, 1, 1)
                .narrow(2, 0, 1)
                .copy_(&v.narrow(0, 1, 1).narrow(2, 0, 1));
        }
        let rows = [(0i64, 5i64), (1, 1)];
        let step =
            |t: &Tensor| Tensor::stack(&[t.get(0).narrow(1, 5, 1), t.get(1).narrow(1, 1, 1)], 0);
        let q = Tensor::randn([2, kvh, 1, hd], opts);
        let x = Qkv {
            q: q.shallow_clone(),
            k: step(&kp),
            v: step(&vp),
        };
        for scores in [
            Scores {
                scale: None,
                softcap: None,
                window: None,
            },
            Scores {
                scale: None,
                softcap: Some(0.5),
                window: Some(3),
            },
        ] {
            let pooled = pool.decode(0, &x, &rows, &scores, false);
            assert!(pooled.isfinite().all().int64_value(&[]) == 1, "{pooled}");
            for (i, (_, past)) in rows.iter().enumerate() {
                let i = i as i64;
                let keys = |t: &Tensor| t.narrow(0, i, 1).narrow(2, 0, past + 1).copy();
                let (k, v) = (keys(&kp), keys(&vp));
                let sub = |t: &Tensor| t.narrow(0, i, 1);
                let seen = seen(&Tensor::from_slice(&[*past]), past + 1, scores.window);
                let alone = attend(&sub(&q), &k, &v, Some(&seen), false, &scores, false);
                let d = (sub(&pooled) - alone).abs().max().double_value(&[]);
                assert!(d < 1e-6, "row {i}: {d}");
            }
        }
    }
}
