//! Projections of one input fused into one matrix, and the low-precision
//! copies single-token decoding steps read (decoding is bound by reading
//! the weights).

use tch::{Kind, Tensor};

pub(crate) use crate::load::weights::tensor_bytes;
use crate::nn::lora::Linear;
use crate::nn::pass::Pass;

/// Rows up to which a decoding step reads the low-precision decode copies.
pub(crate) const DECODE_ROWS: i64 = 16;

/// Whether a pass over `rows` rows of `x` (not training) reads the decode
/// copies: decoding steps of up to [`DECODE_ROWS`] rows always (they are
/// bound by reading the weights); any rows on a CPU with native bf16, where
/// bf16 matmuls over many rows are fast too (on other CPUs they are slower
/// than f32).
pub(crate) fn reads_copies(rows: i64, decoding: bool) -> bool {
    static NATIVE: std::sync::LazyLock<bool> =
        std::sync::LazyLock::new(|| crate::runtime::device::cpu_bf16().is_some());
    (decoding && rows <= DECODE_ROWS) || *NATIVE
}

/// Projections of one input as one matrix: the checkpoint's linears keep
/// their names, but their weights are views into `weight` (a LoRA merge into
/// one updates both), so a layer runs one matmul where the checkpoint has
/// two or three, and each part adds its own unmerged LoRA.
pub(crate) struct Fused {
    pub(crate) weight: Tensor,
    bias: Option<Tensor>,
    sizes: Vec<i64>,
    /// A low-precision copy for single-token steps (`Backbone::set_decode_kind`).
    pub(crate) decode: Option<Tensor>,
}

impl Fused {
    pub(crate) fn new(parts: &mut [&mut Linear]) -> Fused {
        // One part is its own matrix: no copy.
        let cat = |ts: Vec<Tensor>| match ts.as_slice() {
            [one] => one.shallow_clone(),
            _ => Tensor::cat(&ts, 0),
        };
        let weight = cat(parts.iter().map(|l| l.weight.shallow_clone()).collect());
        let bias = parts
            .iter()
            .map(|l| l.bias.as_ref().map(Tensor::shallow_clone))
            .collect::<Option<Vec<_>>>()
            .map(cat);
        let mut sizes = Vec::with_capacity(parts.len());
        let mut off = 0;
        for l in parts.iter_mut() {
            let n = l.weight.size()[0];
            l.weight = weight.narrow(0, off, n);
            if let Some(b) = &bias {
                l.bias = Some(b.narrow(0, off, n));
            }
            sizes.push(n);
            off += n;
        }
        Fused {
            weight,
            bias,
            sizes,
            decode: None,
        }
    }

    /// The parts' outputs for `x`, each with the LoRA its rows use.
    pub(crate) fn forward<const N: usize>(
        &self,
        x: &Tensor,
        parts: [&Linear; N],
        pass: &Pass,
    ) -> [Tensor; N] {
        let rows = x.numel() as i64 / x.size().last().copied().unwrap_or(1).max(1);
        let copies = !pass.train && reads_copies(rows, pass.decoding(x));
        let y = match &self.decode {
            Some(d) if copies => {
                let y = decode_linear(x, d);
                match &self.bias {
                    Some(b) => y + b,
                    None => y,
                }
            }
            _ => x.linear(&self.weight, self.bias.as_ref()),
        };
        let ys = if N == 1 {
            vec![y]
        } else {
            y.split_with_sizes(&self.sizes, -1)
        };
        let mut it = ys.into_iter().zip(parts).map(|(y, l)| pass.lora(l, y, x));
        std::array::from_fn(|_| it.next().expect("one output per part"))
    }

    pub(crate) fn set_decode_kind(&mut self, kind: Option<Kind>) {
        self.decode = decode_copy(&self.weight, kind);
    }
}

/// A copy of `w` in `kind` for single-token steps (none when it is that kind).
pub(crate) fn decode_copy(w: &Tensor, kind: Option<Kind>) -> Option<Tensor> {
    kind.filter(|k| *k != w.kind())
        .map(|k| w.detach().to_kind(k))
}

/// `x · dᵀ` computed in the decode copy's kind, returned in `x`'s.
pub(crate) fn decode_linear(x: &Tensor, d: &Tensor) -> Tensor {
    x.to_kind(d.kind())
        .linear::<Tensor>(d, None)
        .to_kind(x.kind())
}
