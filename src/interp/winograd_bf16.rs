//! The oracle of bf16 Winograd convs: F(2×2, 3×3) with the transformed
//! input and filter rounded to bf16, the rounding points of the compiled
//! pair kernels (`backend::cpu::conv_winograd`, `pairs`).
//!
//! Per 2×2 output tile and its 4×4 input patch `d` (the conv's input after
//! its prologue, rounded to bf16, zero outside the image):
//!
//! - `V = Bᵀ d B` in f32, rows first (`t[y][j] = Σₗ Bᵀ[j][l]·d[y][l]`,
//!   then `V[i][j] = Σ_y Bᵀ[i][y]·t[y][j]`, each sum over the nonzero
//!   coefficients in order), then rounded to bf16;
//! - `U = G g Gᵀ` of the fp32 filter in f64, rounded to f32, then to bf16;
//! - `M = Σ_ic U ⊙ V` and `Y = Aᵀ M A` in f64.
//!
//! The matrices are the standard ones for the points 0, ±1, ∞ (Lavin and
//! Gray 2015), written out here on their own.

use crate::precision::Precision;
use crate::tensor::Tensor;

const BT: [[f32; 4]; 4] = [
    [1.0, 0.0, -1.0, 0.0],
    [0.0, 1.0, 1.0, 0.0],
    [0.0, -1.0, 1.0, 0.0],
    [0.0, 1.0, 0.0, -1.0],
];
const G: [[f64; 3]; 4] = [
    [1.0, 0.0, 0.0],
    [0.5, 0.5, 0.5],
    [0.5, -0.5, 0.5],
    [0.0, 0.0, 1.0],
];
const AT: [[f64; 4]; 2] = [[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, -1.0]];

/// `Σ c·x` over the nonzero `c` in order, in f32 (±1 exact, others as a
/// fused multiply-add).
fn combine(row: &[f32; 4], x: [f32; 4]) -> f32 {
    let mut acc: Option<f32> = None;
    for (&c, &v) in row.iter().zip(&x) {
        if c == 0.0 {
            continue;
        }
        acc = Some(match (acc, c) {
            (None, 1.0) => v,
            (None, _) => v * c,
            (Some(a), 1.0) => a + v,
            (Some(a), -1.0) => a - v,
            (Some(a), _) => v.mul_add(c, a),
        });
    }
    acc.unwrap_or(0.0)
}

/// `U = G g Gᵀ` of one 3×3 filter, 16 values row-major, rounded by `round`
/// after f32.
fn filter(g: &[f32], round: impl Fn(f32) -> f32) -> [f64; 16] {
    let mut u = [0.0; 16];
    for i in 0..4 {
        for j in 0..4 {
            let mut s = 0.0f64;
            for k in 0..3 {
                for l in 0..3 {
                    s += G[i][k] * f64::from(g[k * 3 + l]) * G[j][l];
                }
            }
            u[i * 4 + j] = f64::from(round(s as f32));
        }
    }
    u
}

/// The 3×3 stride-1 conv (one group, padding `pad`) of `x` `[n, ic, h, w]`
/// (already rounded) by `w` `[oc, ic, 3, 3]` (fp32) as F(2×2, 3×3) with
/// the transforms rounded by `precision`, without bias.
pub fn conv2d(x: &Tensor, w: &Tensor, pad: [usize; 2], precision: Precision) -> Tensor {
    let round = |v: f32| precision.round(v);
    let (n, ic, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let oc = w.shape[0];
    let (oh, ow) = (h + 2 * pad[0] - 2, wd + 2 * pad[1] - 2);
    let (th, tw) = (oh.div_ceil(2), ow.div_ceil(2));
    let us: Vec<[f64; 16]> = w.data.chunks(9).map(|g| filter(g, round)).collect();
    let mut y = Tensor::zeros(&[n, oc, oh, ow]);
    // The input at (row, col) of the padded plane; zero outside the image.
    let at = |b: usize, c: usize, r: usize, q: usize| -> f32 {
        let (r, q) = (r as isize - pad[0] as isize, q as isize - pad[1] as isize);
        if r < 0 || q < 0 || r >= h as isize || q >= wd as isize {
            return 0.0;
        }
        x.data[((b * ic + c) * h + r as usize) * wd + q as usize]
    };
    let mut v = vec![[0.0f64; 16]; ic];
    for b in 0..n {
        for ty in 0..th {
            for tx in 0..tw {
                for (c, vc) in v.iter_mut().enumerate() {
                    let d: Vec<[f32; 4]> = (0..4)
                        .map(|r| std::array::from_fn(|q| at(b, c, 2 * ty + r, 2 * tx + q)))
                        .collect();
                    let t: Vec<[f32; 4]> = d
                        .iter()
                        .map(|row| std::array::from_fn(|j| combine(&BT[j], *row)))
                        .collect();
                    for i in 0..4 {
                        for j in 0..4 {
                            let col = std::array::from_fn(|r| t[r][j]);
                            vc[i * 4 + j] = f64::from(round(combine(&BT[i], col)));
                        }
                    }
                }
                for o in 0..oc {
                    let mut m = [0.0f64; 16];
                    for (c, vc) in v.iter().enumerate() {
                        let u = &us[o * ic + c];
                        for k in 0..16 {
                            m[k] += u[k] * vc[k];
                        }
                    }
                    for (a, ra) in AT.iter().enumerate() {
                        for (bb, rb) in AT.iter().enumerate() {
                            let (r, q) = (2 * ty + a, 2 * tx + bb);
                            if r >= oh || q >= ow {
                                continue;
                            }
                            let mut s = 0.0;
                            for i in 0..4 {
                                for j in 0..4 {
                                    s += ra[i] * m[i * 4 + j] * rb[j];
                                }
                            }
                            y.data[((b * oc + o) * oh + r) * ow + q] = s as f32;
                        }
                    }
                }
            }
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interp::kernels::{conv2d as direct, Conv2d};

    fn seeded(shape: &[usize], seed: u64) -> Tensor {
        let mut t = Tensor::zeros(shape);
        let mut s = seed;
        for v in &mut t.data {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *v = ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5;
        }
        t
    }

    /// Without rounding the transforms, F(2×2) is the direct conv up to
    /// f32 sums: odd sizes (partial tiles), both paddings, more than one
    /// image.
    #[test]
    fn unrounded_matches_the_direct_conv() {
        for (h, w, pad) in [(7, 9, [1, 1]), (6, 5, [0, 0]), (5, 8, [1, 0])] {
            let x = seeded(&[2, 5, h, w], 1);
            let wt = seeded(&[3, 5, 3, 3], 2);
            let got = conv2d(&x, &wt, pad, Precision::F32);
            let p = Conv2d {
                stride: [1, 1],
                pad,
                dilation: [1, 1],
                groups: 1,
            };
            let want = direct(&x, &wt, None, &p);
            assert_eq!(got.shape, want.shape);
            for (a, b) in got.data.iter().zip(&want.data) {
                assert!((a - b).abs() < 1e-5, "{h}x{w} pad {pad:?}: {a} vs {b}");
            }
        }
    }

    /// Rounded, it differs from the direct conv by about bf16's step, and
    /// it does differ: the rounding happens.
    #[test]
    fn rounded_transforms_stay_near_the_direct_conv() {
        let x = seeded(&[1, 16, 8, 8], 3);
        let wt = seeded(&[4, 16, 3, 3], 4);
        let p = Conv2d {
            stride: [1, 1],
            pad: [1, 1],
            dilation: [1, 1],
            groups: 1,
        };
        let want = direct(&x, &wt, None, &p);
        let got = conv2d(&x, &wt, [1, 1], Precision::Bf16);
        let scale = want.data.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = got
            .data
            .iter()
            .zip(&want.data)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
            / scale;
        assert!(err > 1e-4 && err < 2e-2, "relative error {err}");
    }
}
