//! Transposed convolutions as `Channels` GEMM tiles.
//!
//! Output pixel `(Y, X)` of a transposed conv with stride `s`, padding `p`
//! and dilation `d` receives `x[(Y + p - ky·d) / s][(X + p - kx·d) / s] ·
//! w[ic][oc][ky][kx]` for the taps where both divisions are exact. Rows
//! `Y = s·i + py` of one phase `py` share one set of row taps, so each row
//! phase is a plain conv over the input; within a strip that starts on a
//! multiple of `s`, pixel `j`'s column taps depend only on `j mod s`, so
//! every (tap, pixel) pair and the input offset it reads are known at
//! compile time. The input is staged once, zero-padded on every side by as
//! much as any output reaches past it, so the tile reads no bounds.

use super::conv_gemm::{
    choose_channels, reads_pairs, ConvShape, GemmConv, RowPhase, Staging, Tiling, PIXEL_BLOCK,
};
use crate::backend::llvm::VectorIsa;
use crate::ir::{Graph, Op};
use crate::precision::Precision;
use petgraph::stable_graph::NodeIndex;

/// The `Channels` tiling of the transposed conv at `n`, or `None` when it is
/// not one over an image whose weight it alone reads.
pub fn plan(
    graph: &Graph,
    n: NodeIndex,
    isa: VectorIsa,
    precision: Precision,
    pitch: Option<u64>,
) -> Option<GemmConv> {
    if !matches!(graph.node(n).op, Op::ConvTranspose { .. }) {
        return None;
    }
    let ConvShape {
        g,
        icg,
        ocg,
        h,
        w,
        oh,
        ow,
        k: (kh, kw),
        s: (sh, sw),
        p: (ph, pw),
        d: (dh, dw),
    } = ConvShape::of(graph, n)?;
    let (_, _, v, r) = choose_channels(ocg, oh, ow, kw, isa, sw, pitch)?;
    // The input index output `o` reads through tap `k`, when one.
    let source = |o: u64, k: u64, s: u64, p: u64, d: u64| -> Option<i64> {
        let at = o as i64 + p as i64 - (k * d) as i64;
        (at.rem_euclid(s as i64) == 0).then(|| at.div_euclid(s as i64))
    };
    // Zero padding on every side: as far as any output reaches past the
    // input, rows and columns alike.
    let reach = |n_out: u64, k: u64, s: u64, p: u64, d: u64, n_in: u64| -> i64 {
        (0..n_out)
            .flat_map(|o| (0..k).filter_map(move |t| source(o, t, s, p, d)))
            .map(|i| (-i).max(i - (n_in as i64 - 1)))
            .max()
            .unwrap_or(0)
            .max(0)
    };
    let pad = reach(oh, kh, sh, ph, dh, h).max(reach(ow, kw, sw, pw, dw, w)) as u64;
    let (hq, wq) = (h + 2 * pad, w + 2 * pad);
    let row_phases = (0..sh.min(oh))
        .map(|py| {
            let mut uses = Vec::new();
            for ky in 0..kh {
                // Rows of this phase read input row `i + dy` through `ky`.
                let Some(dy) = source(py, ky, sh, ph, dh) else {
                    continue;
                };
                for kx in 0..kw {
                    let pixels: Vec<(u64, u64)> = (0..r)
                        .filter_map(|j| {
                            let dx = source(j, kx, sw, pw, dw)?;
                            let off = (dy + pad as i64) * wq as i64 + dx + pad as i64;
                            Some((j, off as u64))
                        })
                        .collect();
                    if !pixels.is_empty() {
                        uses.push((ky * kw + kx, pixels));
                    }
                }
            }
            RowPhase {
                first: py,
                step: sh,
                rows: (oh - py).div_ceil(sh),
                row_pitch: wq,
                uses,
            }
        })
        .collect();
    let mr = v * isa.lanes;
    let mut p = GemmConv {
        tiling: Tiling::Channels { r },
        lanes: isa.lanes,
        mr,
        wpitch: pitch.unwrap_or(mr),
        groups: g,
        icg,
        ocg,
        oc_panels: ocg.div_ceil(mr),
        taps: (0..kh * kw).collect(),
        plane: hq * wq,
        wq,
        oh,
        ow,
        panels: 0,
        block: PIXEL_BLOCK,
        row_chunks: 1,
        kc: icg,
        row_phases,
        strip_cols: r / sw,
        kw,
        transposed: true,
        // bf16 on AVX512-BF16: channel pairs as for convs (`stage` writes
        // them, `pack` interleaves the `[ic, ocg]` rows alike).
        pairs: reads_pairs(isa, precision),
        tail: false,
        staging: Some(Staging {
            phases: vec![(0, 0)],
            hq,
            h,
            w,
            stride: (1, 1),
            pad: (pad, pad),
            bf16: precision == Precision::Bf16,
        }),
    };
    p.kc = p.kdim();
    p.split_rows();
    Some(p)
}
