//! Rotary position embeddings: the inverse frequencies of a config's theta
//! and scaling (default, linear, llama3, LongRoPE within the original
//! context), as transformers computes them.

use tch::Tensor;

use crate::hf_config::HfConfig;

/// Leading dimensions of each head that rotate (all but with partial rotary
/// embeddings).
pub fn rotary_dim(cfg: &HfConfig) -> usize {
    cfg.extras.rotary_dim.unwrap_or(cfg.head_dim)
}

/// Inverse RoPE frequencies for the config's theta and scaling (default,
/// linear, llama3, LongRoPE), one per rotating pair of dimensions.
pub fn rope_inv_freq(cfg: &HfConfig) -> Vec<f64> {
    let hd = rotary_dim(cfg);
    let mut inv: Vec<f64> = (0..hd / 2)
        .map(|i| 1.0 / cfg.rope_theta.powf((2 * i) as f64 / hd as f64))
        .collect();
    if let Some(s) = &cfg.rope_scaling {
        let factor = s.factor.unwrap_or(1.0);
        match s.rope_type.as_str() {
            "linear" => inv.iter_mut().for_each(|f| *f /= factor),
            "llama3" => {
                let l3 = Llama3 {
                    factor,
                    low: s.low_freq_factor.unwrap_or(1.0),
                    high: s.high_freq_factor.unwrap_or(4.0),
                    old: s.original_max_position_embeddings.unwrap_or(8192) as f64,
                };
                inv.iter_mut().for_each(|f| *f /= l3.divisor(*f));
            }
            // Within the original context, as transformers: the short factors.
            "longrope" => {
                for (f, d) in inv.iter_mut().zip(s.short_factor.iter().flatten()) {
                    *f /= d;
                }
            }
            _ => {}
        }
    }
    inv
}

/// Llama 3.1's `rope_scaling` (`rope_type` llama3).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3 {
    pub factor: f64,
    pub low: f64,
    pub high: f64,
    /// `original_max_position_embeddings`.
    pub old: f64,
}

impl Llama3 {
    /// What it divides the inverse frequency `f` by: 1 for short
    /// wavelengths, `factor` for long ones, a blend between.
    pub fn divisor(&self, f: f64) -> f64 {
        let wavelen = 2.0 * std::f64::consts::PI / f;
        if wavelen > self.old / self.low {
            self.factor
        } else if wavelen >= self.old / self.high {
            let smooth = (self.old / wavelen - self.low) / (self.high - self.low);
            1.0 / ((1.0 - smooth) / self.factor + smooth)
        } else {
            1.0
        }
    }
}

/// The scale of cos and sin: LongRoPE's `attention_factor`, by default
/// √(1 + ln(factor) / ln(original context)) when it extends the context; 1
/// for every other rope.
pub fn rope_attention_factor(cfg: &HfConfig) -> f64 {
    let Some(s) = cfg
        .rope_scaling
        .as_ref()
        .filter(|s| s.rope_type == "longrope")
    else {
        return 1.0;
    };
    let factor = s.factor.unwrap_or(1.0);
    let original = s.original_max_position_embeddings.unwrap_or(1) as f64;
    match s.attention_factor {
        Some(a) => a,
        None if factor > 1.0 && original > 1.0 => (1.0 + factor.ln() / original.ln()).sqrt(),
        None => 1.0,
    }
}

fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size()[3] / 2;
    let x1 = x.narrow(-1, 0, half);
    let x2 = x.narrow(-1, half, half);
    Tensor::cat(&[x2.neg(), x1], -1)
}

/// `x` `[b, h, t, head_dim]` rotated by `cos`/`sin` `[b, 1, t, rotary_dim]`:
/// its leading `rotary_dim` dimensions; the rest pass as they are.
pub(crate) fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let (hd, rd) = (x.size()[3], cos.size()[3]);
    if rd == hd {
        return x * cos + rotate_half(x) * sin;
    }
    let r = x.narrow(-1, 0, rd);
    let r = &r * cos + rotate_half(&r) * sin;
    Tensor::cat(&[r, x.narrow(-1, rd, hd - rd)], -1)
}
