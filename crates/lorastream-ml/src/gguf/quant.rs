//! De-quantization of ggml tensor types to f32, block by block, as ggml's
//! `dequantize_row_*` functions do (and gguf-py's `quants` module, which the
//! parity tests compare with).

use half::{bf16, f16};

/// The ggml types we read (ids from ggml.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
    BF16,
}

const QK_K: usize = 256;

/// Names of every ggml type id, for errors about the ones we do not read.
pub fn type_name(id: u32) -> &'static str {
    const NAMES: [&str; 31] = [
        "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K",
        "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL",
        "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16",
    ];
    NAMES.get(id as usize).copied().unwrap_or("unknown")
}

impl GgmlType {
    pub fn from_id(id: u32) -> Option<GgmlType> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            12 => GgmlType::Q4K,
            13 => GgmlType::Q5K,
            14 => GgmlType::Q6K,
            30 => GgmlType::BF16,
            _ => return None,
        })
    }

    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q8_0 => 8,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::BF16 => 30,
        }
    }

    pub fn name(self) -> &'static str {
        type_name(self.id())
    }

    /// Values per block.
    pub fn block_len(self) -> u64 {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 => 32,
            GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => QK_K as u64,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> u64 {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q8_0 => 34,
            GgmlType::Q4K => 144,
            GgmlType::Q5K => 176,
            GgmlType::Q6K => 210,
        }
    }
}

fn half(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// `raw` holds whole blocks (the reader checked the length).
pub fn dequantize(t: GgmlType, raw: &[u8]) -> Vec<f32> {
    let bb = t.block_bytes() as usize;
    let mut out = Vec::with_capacity(raw.len() / bb * t.block_len() as usize);
    for b in raw.chunks_exact(bb) {
        match t {
            GgmlType::F32 => out.push(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            GgmlType::F16 => out.push(half(b)),
            GgmlType::BF16 => out.push(bf16::from_le_bytes([b[0], b[1]]).to_f32()),
            GgmlType::Q4_0 => q4_0(b, &mut out),
            GgmlType::Q4_1 => q4_1(b, &mut out),
            GgmlType::Q8_0 => {
                let d = half(b);
                out.extend(b[2..34].iter().map(|&q| d * f32::from(q as i8)));
            }
            GgmlType::Q4K => q4_k(b, &mut out),
            GgmlType::Q5K => q5_k(b, &mut out),
            GgmlType::Q6K => q6_k(b, &mut out),
        }
    }
    out
}

fn q4_0(b: &[u8], out: &mut Vec<f32>) {
    let d = half(b);
    let qs = &b[2..18];
    out.extend(qs.iter().map(|&q| (f32::from(q & 0xF) - 8.0) * d));
    out.extend(qs.iter().map(|&q| (f32::from(q >> 4) - 8.0) * d));
}

fn q4_1(b: &[u8], out: &mut Vec<f32>) {
    let (d, m) = (half(b), half(&b[2..]));
    let qs = &b[4..20];
    out.extend(qs.iter().map(|&q| f32::from(q & 0xF) * d + m));
    out.extend(qs.iter().map(|&q| f32::from(q >> 4) * d + m));
}

/// The 6-bit scale and min of sub-block `j` packed in K-quants' 12 bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    let (d, m) = if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    };
    (f32::from(d), f32::from(m))
}

fn q4_k(b: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (half(b), half(&b[2..]));
    let scales = &b[4..16];
    let qs = &b[16..144];
    for (n, q) in qs.chunks_exact(32).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * n, scales);
        let (sc2, m2) = scale_min_k4(2 * n + 1, scales);
        out.extend(q.iter().map(|&x| d * sc1 * f32::from(x & 0xF) - dmin * m1));
        out.extend(q.iter().map(|&x| d * sc2 * f32::from(x >> 4) - dmin * m2));
    }
}

fn q5_k(b: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (half(b), half(&b[2..]));
    let scales = &b[4..16];
    let qh = &b[16..48];
    let ql = &b[48..176];
    for (n, q) in ql.chunks_exact(32).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * n, scales);
        let (sc2, m2) = scale_min_k4(2 * n + 1, scales);
        let (u1, u2) = (1u8 << (2 * n), 2u8 << (2 * n));
        out.extend(q.iter().zip(qh).map(|(&x, &h)| {
            let hi = if h & u1 != 0 { 16.0 } else { 0.0 };
            d * sc1 * (f32::from(x & 0xF) + hi) - dmin * m1
        }));
        out.extend(q.iter().zip(qh).map(|(&x, &h)| {
            let hi = if h & u2 != 0 { 16.0 } else { 0.0 };
            d * sc2 * (f32::from(x >> 4) + hi) - dmin * m2
        }));
    }
}

fn q6_k(b: &[u8], out: &mut Vec<f32>) {
    let ql = &b[0..128];
    let qh = &b[128..192];
    let sc = &b[192..208];
    let d = half(&b[208..]);
    for n in 0..2 {
        let (ql, qh, sc) = (&ql[64 * n..], &qh[32 * n..], &sc[8 * n..]);
        let mut y = [0f32; 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = i32::from((ql[l] & 0xF) | ((qh[l] & 3) << 4)) - 32;
            let q2 = i32::from((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
            let q3 = i32::from((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            let q4 = i32::from((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            let s = |k: usize| d * f32::from(sc[is + k] as i8);
            y[l] = s(0) * q1 as f32;
            y[l + 32] = s(2) * q2 as f32;
            y[l + 64] = s(4) * q3 as f32;
            y[l + 96] = s(6) * q4 as f32;
        }
        out.extend_from_slice(&y);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_and_q4_1_blocks() {
        // d = 0.5 (f16 0x3800), values -2..=29.
        let mut b = vec![0x00, 0x38];
        b.extend((0..32).map(|i| (i as i8 - 2) as u8));
        let v = dequantize(GgmlType::Q8_0, &b);
        assert_eq!(v.len(), 32);
        assert_eq!((v[0], v[31]), (-1.0, 14.5));
        // d = 1, m = -8: nibbles 0..15 map to -8..7; low nibbles first.
        let mut b = vec![0x00, 0x3c, 0x00, 0xc8];
        b.extend((0..16u8).map(|i| i | ((15 - i) << 4)));
        let v = dequantize(GgmlType::Q4_1, &b);
        assert_eq!((v[0], v[15], v[16], v[31]), (-8.0, 7.0, 7.0, -8.0));
    }

    #[test]
    fn k_quant_scales_unpack() {
        let q = [1, 2, 3, 4, 5, 6, 7, 8, 0xA9, 0xBA, 0xCB, 0xDC];
        assert_eq!(scale_min_k4(0, &q), (1.0, 5.0));
        // j >= 4: low nibble of q[j+4] and the top two bits of q[j-4].
        assert_eq!(scale_min_k4(4, &q), (9.0, 10.0));
    }
}
