//! The arithmetic a model computes in: fp32 (the default, PyTorch to 1e-6)
//! or bf16, where every conv, transposed conv and linear layer reads its
//! input and weights
//! rounded to bfloat16 (round to nearest even) and accumulates in fp32;
//! everything else (epilogues, pooling, additions, the output) stays fp32.
//! The interpreter rounds at exactly those points, so it is the oracle of
//! every bf16 kernel; the AVX512-BF16 Winograd convs, which round their
//! transforms instead, have their own (`interp::winograd_bf16`).

use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }

    /// `x` as the layers that round their operands read it.
    pub fn round(self, x: f32) -> f32 {
        match self {
            Precision::F32 => x,
            Precision::Bf16 => f32::from_bits(u32::from(bf16_bits(x)) << 16),
        }
    }
}

/// The bfloat16 nearest `x` (ties to even), as its 16 bits: the upper half
/// of the f32 after rounding. NaN stays NaN (quiet).
pub fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    let bias = 0x7fff + ((b >> 16) & 1);
    (b.wrapping_add(bias) >> 16) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_to_nearest_even() {
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the
        // even mantissa (1.0); 1 + 3·2^-8 goes up to 1 + 2^-6.
        assert_eq!(Precision::Bf16.round(1.0 + 1.0 / 256.0), 1.0);
        assert_eq!(Precision::Bf16.round(1.0 + 3.0 / 256.0), 1.0 + 1.0 / 64.0);
        assert_eq!(Precision::Bf16.round(1.0 + 1.0 / 128.0), 1.0 + 1.0 / 128.0);
        assert_eq!(Precision::Bf16.round(-2.5), -2.5);
        assert_eq!(bf16_bits(1.0), 0x3f80);
        // The largest finite f32 rounds to infinity, as in PyTorch.
        assert_eq!(Precision::Bf16.round(f32::MAX), f32::INFINITY);
        assert!(Precision::Bf16.round(f32::NAN).is_nan());
        assert_eq!(Precision::F32.round(0.1), 0.1);
    }
}
