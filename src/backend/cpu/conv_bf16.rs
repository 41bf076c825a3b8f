//! bf16 convolution on AMX tiles (`--precision bf16` where the CPU has
//! AMX-BF16): an implicit GEMM, `out[oc][q] = Σ_k A[oc][k] · B[k][q]`
//! over output pixels `q = oy·OW + ox`, with `tdpbf16ps` on 16 × 32 bf16
//! tiles into 16 × 16 fp32 accumulators.
//!
//! *Staging* writes `B` once per conv and image, in the tiles' pair layout
//! (VNNI): element `[k/2][q]` is one 32-bit word holding the bf16 of rows
//! `k` and `k + 1`, so a B tile is 16 consecutive words of 16 pair rows.
//! The reduction index `k` runs over (tap, input channel): the `kw` column
//! taps are always folded into it, staged as shifted copies of the input
//! (each with its zero padding and its column stride applied), and so are
//! the row taps of a row-strided conv. A stride-1 conv keeps its row taps
//! as separate GEMMs over the same staged matrix, each reading it
//! `ky·dh·OW` pixels further on: the staged rows run `(kh - 1)·dh` past the
//! output's. Staging applies the prologue (DenseNet's BN-ReLU) and rounds
//! to bf16 (ties to even, as `precision::bf16_bits`).
//!
//! The weights are packed at bind time as whole A tiles: per group, panel
//! of 16 output channels, row tap and chunk of 32 reduction values, 16
//! rows of 32 bf16 (zero past the real channels and reduction).
//!
//! A GEMM unit is 32 output channels × 32 pixels: four accumulator tiles,
//! two A and two B tiles per chunk of 32. The accumulators go through a
//! stack scratch to the fused epilogue (bias, residual, activation), which
//! runs in fp32 and stores fp32: activations stay fp32 in the arena, so
//! every other op is unchanged and rounding happens only where a conv
//! reads (docs/bf16.md).

use super::conv_gemm::{conv_fused, epilogue_store, ConvShape, Out};
use super::lower::{fused_operands, Args, Ctx, Unit};
use crate::backend::llvm::emit::Emitter;
use crate::backend::llvm::VectorIsa;
use crate::ir::{Graph, Op};
use crate::precision::bf16_bits;
use inkwell::values::{BasicValue, IntValue, PointerValue, VectorValue};
use inkwell::IntPredicate;
use petgraph::stable_graph::NodeIndex;

/// Pixels and output channels of one GEMM unit.
const UNIT: u64 = 32;
/// Reduction values per tile (16 pairs of bf16).
const KC: u64 = 32;
/// f32 slots of one packed A tile (16 rows × 32 bf16).
const TILE_SLOTS: u64 = 16 * KC / 2;

/// The plan of one bf16 AMX conv.
#[derive(Clone, Debug)]
pub struct BfConv {
    pub g: u64,
    pub icg: u64,
    pub ocg: u64,
    pub h: u64,
    pub w: u64,
    pub oh: u64,
    pub ow: u64,
    pub k: (u64, u64),
    pub s: (u64, u64),
    pub p: (u64, u64),
    pub d: (u64, u64),
    /// Row taps folded into the reduction (a row-strided conv, or one
    /// row): then the staged rows are the output's.
    pub fold_rows: bool,
    /// The input read as one row of `h·w` pixels (1×1, stride 1, no
    /// padding): staging is a conversion.
    pub flat: bool,
    /// Whether consecutive units share a weight panel (the weights
    /// outweigh one image's staged input) rather than a pixel block.
    pub panel_outer: bool,
}

impl BfConv {
    /// The AMX plan of the conv at `n`, where the target has AMX-BF16.
    pub fn plan(graph: &Graph, n: NodeIndex, isa: VectorIsa) -> Option<BfConv> {
        if !isa.amx_bf16 || isa.lanes != 16 || !matches!(graph.node(n).op, Op::Conv { .. }) {
            return None;
        }
        let s = ConvShape::of(graph, n)?;
        let flat = s.k == (1, 1) && s.s == (1, 1) && s.p == (0, 0);
        let mut p = BfConv {
            g: s.g,
            icg: s.icg,
            ocg: s.ocg,
            h: s.h,
            w: s.w,
            oh: s.oh,
            ow: s.ow,
            k: s.k,
            s: s.s,
            p: s.p,
            d: s.d,
            fold_rows: s.s.0 > 1 || s.k.0 == 1,
            flat,
            panel_outer: false,
        };
        p.panel_outer = p.weight_bytes() > 2 * 4 * p.stage_slots();
        Some(p)
    }

    /// Taps folded into the reduction, and the GEMMs over row taps.
    fn folded_taps(&self) -> u64 {
        if self.fold_rows {
            self.k.0 * self.k.1
        } else {
            self.k.1
        }
    }

    fn row_taps(&self) -> u64 {
        if self.fold_rows {
            1
        } else {
            self.k.0
        }
    }

    /// The reduction length per row tap, and rounded to whole tiles.
    fn kred(&self) -> u64 {
        self.folded_taps() * self.icg
    }

    fn kpad(&self) -> u64 {
        self.kred().div_ceil(KC) * KC
    }

    /// Staged rows and their length.
    fn rows(&self) -> u64 {
        if self.flat {
            1
        } else if self.fold_rows {
            self.oh
        } else {
            self.oh + (self.k.0 - 1) * self.d.0
        }
    }

    fn cols(&self) -> u64 {
        if self.flat {
            self.h * self.w
        } else {
            self.ow
        }
    }

    fn pixels(&self) -> u64 {
        self.oh * self.ow
    }

    /// Words per staged pair row: the rows, then zeros for the last unit's
    /// pixels past the end.
    fn pitch(&self) -> u64 {
        (self.rows() * self.cols() + UNIT).div_ceil(16) * 16
    }

    /// f32 slots of one image's staged input.
    fn stage_slots(&self) -> u64 {
        self.g * self.kpad() / 2 * self.pitch()
    }

    fn panels(&self) -> u64 {
        self.ocg.div_ceil(UNIT) * 2
    }

    fn weight_bytes(&self) -> u64 {
        self.g * self.panels() * self.row_taps() * self.kpad() * 16 * 2
    }

    fn pixel_blocks(&self) -> u64 {
        self.pixels().div_ceil(UNIT)
    }

    pub fn stage_units(&self) -> u64 {
        self.g * self.kpad() / 2
    }

    pub fn gemm_units(&self) -> u64 {
        self.g * self.ocg.div_ceil(UNIT) * self.pixel_blocks()
    }

    /// Floats per image of workspace: the staged input.
    pub fn workspace(&self) -> u64 {
        self.stage_slots()
    }

    /// The weight `[g·ocg][icg][kh][kw]` (already rounded) as A tiles:
    /// `[g][panel][row tap][chunk]`, 16 rows × 32 bf16 each, two bf16 per
    /// f32 slot (the even reduction index in the low half).
    pub fn pack(&self, wt: &[f32]) -> Vec<f32> {
        let (kh, kw) = self.k;
        let (ft, kp) = (self.folded_taps(), self.kpad());
        let chunks = kp / KC;
        let mut out = vec![0u16; (self.weight_bytes() / 2) as usize];
        for gi in 0..self.g {
            for oc in 0..self.ocg {
                let (panel, row) = (oc / 16, oc % 16);
                for rt in 0..self.row_taps() {
                    for k in 0..self.kred() {
                        let (t, ic) = (k / self.icg, k % self.icg);
                        let (ky, kx) = if self.fold_rows {
                            (t / kw, t % kw)
                        } else {
                            (rt, t)
                        };
                        debug_assert!(t < ft);
                        let src = (((gi * self.ocg + oc) * self.icg + ic) * kh + ky) * kw + kx;
                        let tile =
                            ((gi * self.panels() + panel) * self.row_taps() + rt) * chunks + k / KC;
                        let at = tile * TILE_SLOTS * 2 + row * KC + k % KC;
                        out[at as usize] = bf16_bits(wt[src as usize]);
                    }
                }
            }
        }
        out.chunks(2)
            .map(|p| f32::from_bits(u32::from(p[0]) | (u32::from(p[1]) << 16)))
            .collect()
    }
}

// ---- emission ---------------------------------------------------------

/// Stages pair row `u` (of `stage_units()`) of image `b`.
pub(super) fn stage<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    c: &Ctx<'_, 'ctx>,
    a: &Args<'ctx>,
    n: NodeIndex,
    p: &BfConv,
    (b, u): Unit<'ctx>,
) {
    let fused = conv_fused(&c.graph.node(n).op).expect("a bf16 conv");
    let ops = c.graph.operands(n);
    let (pro, _, _) = fused_operands(c, &ops, fused);
    let pairs = p.kpad() / 2;
    let (gi, kp2) = (e.sdiv(u, e.int(pairs)), e.srem(u, e.int(pairs)));
    let ws = a.image(e, c.workspace(e), b);
    let dst = e.at(ws, e.mul(u, e.int(p.pitch())));
    let x = a.image(e, c.view(ops[0]), b);
    let (kw, icg) = (p.k.1, p.icg);
    // Both halves of the pair: reduction index, its input channel plane,
    // the prologue's scale and shift, and the tap's offsets.
    let halves: Vec<Half<'ctx>> = (0..2)
        .map(|h| {
            let k = e.add(e.mul(kp2, e.int(2)), e.int(h));
            let live = e.ult(k, e.int(p.kred()));
            let k = e.pick(live, k, e.int(0));
            let (t, ic) = (e.sdiv(k, e.int(icg)), e.srem(k, e.int(icg)));
            let (ty, tx) = if p.fold_rows {
                (e.sdiv(t, e.int(kw)), e.srem(t, e.int(kw)))
            } else {
                (e.int(0), t)
            };
            let ch = e.add(e.mul(gi, e.int(icg)), ic);
            let plane = e.at(x, e.mul(ch, e.int(p.h * p.w)));
            let ss = pro.map(|(s, t)| (e.load(a.konst(e, s), ch), e.load(a.konst(e, t), ch)));
            let col = e.sub(e.mul(tx, e.int(p.d.1)), e.int(p.p.1));
            let row = e.sub(e.mul(ty, e.int(p.d.0)), e.int(p.p.0));
            Half {
                live,
                plane,
                ss,
                col,
                row,
            }
        })
        .collect();
    let (rows, cols) = (p.rows(), p.cols());
    let blocks = cols.div_ceil(16);
    let (z, lanes) = (e.int(0), e.int(16));
    e.for_const(0, rows, |e, r| {
        e.for_const(0, blocks, |e, ob| {
            let ox0 = e.mul(ob, lanes);
            let words: Vec<VectorValue<'ctx>> = halves
                .iter()
                .map(|hf| {
                    let v = load_half(e, p, fused, hf, r, ox0);
                    let it = e.ctx.i32_type().vec_type(16);
                    let bits =
                        e.b.build_bit_cast(v, it, "")
                            .expect("cast")
                            .into_vector_value();
                    let k = |v: u64| {
                        let c = e.ctx.i32_type().const_int(v, false);
                        inkwell::types::VectorType::const_vector(&[c; 16])
                    };
                    e.round_bits_bf16(bits, k(16), k(1), k(0x7fff), k(0xffff_0000))
                })
                .collect();
            let sixteen = {
                let c = e.ctx.i32_type().const_int(16, false);
                inkwell::types::VectorType::const_vector(&[c; 16])
            };
            let lo =
                e.b.build_right_shift(words[0], sixteen, false, "")
                    .expect("shift");
            let pair = e.b.build_or(lo, words[1], "").expect("or");
            let pair =
                e.b.build_bit_cast(pair, e.vty(), "")
                    .expect("cast")
                    .into_vector_value();
            let at = e.add(e.mul(r, e.int(cols)), ox0);
            let mask = e.vin_range(e.vindices(ox0, 0), z, e.int(cols));
            e.vstore_masked(dst, at, pair, mask);
        });
    });
    // Zero words past the rows: the last units' pixels read them.
    e.for_const(rows * cols, p.pitch(), |e, i| e.store(dst, i, e.f32(0.0)));
}

/// One half of a staged pair: what its reduction index reads.
struct Half<'ctx> {
    live: IntValue<'ctx>,
    plane: PointerValue<'ctx>,
    ss: Option<(
        inkwell::values::FloatValue<'ctx>,
        inkwell::values::FloatValue<'ctx>,
    )>,
    /// Input column of output column 0, and input row of staged row 0
    /// (before the row stride), relative to the tap.
    col: IntValue<'ctx>,
    row: IntValue<'ctx>,
}

/// Input values of staged row `r`, output columns `ox0..ox0 + 16`, for one
/// half: prologue applied, zero where padding, past the row, or past the
/// reduction.
fn load_half<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    p: &BfConv,
    fused: &crate::ir::op::Fused,
    hf: &Half<'ctx>,
    r: IntValue<'ctx>,
    ox0: IntValue<'ctx>,
) -> VectorValue<'ctx> {
    let z = e.int(0);
    let (v, mask) = if p.flat {
        let mask = e.vin_range(e.vindices(ox0, 0), z, e.int(p.h * p.w));
        let mask = and_scalar(e, mask, hf.live);
        (e.vload_masked(hf.plane, ox0, mask), mask)
    } else {
        let (sh, sw) = p.s;
        let iy = if p.fold_rows {
            e.add(e.mul(r, e.int(sh)), hf.row)
        } else {
            e.sub(r, e.int(p.p.0))
        };
        let row_ok = e.b.build_and(
            e.b.build_int_compare(IntPredicate::SGE, iy, z, "")
                .expect("cmp"),
            e.b.build_int_compare(IntPredicate::SLT, iy, e.int(p.h), "")
                .expect("cmp"),
            "",
        );
        let row_ok =
            e.b.build_and(row_ok.expect("and"), hf.live, "")
                .expect("and");
        let iy = e.pick(row_ok, iy, z);
        let src = e.at_unchecked(hf.plane, e.mul(iy, e.int(p.w)));
        // Input column of lane l: (ox0 + l)·sw + col.
        let ix0 = e.add(e.mul(ox0, e.int(sw)), hf.col);
        if sw == 1 {
            let mask = e.vin_range(e.vindices(ix0, 0), z, e.int(p.w));
            let mask = and_scalar(e, mask, row_ok);
            (e.vload_masked(src, ix0, mask), mask)
        } else {
            // sw consecutive vectors, every sw-th lane of them.
            let parts: Vec<VectorValue<'ctx>> = (0..sw)
                .map(|j| {
                    let at = e.add(ix0, e.int(16 * j));
                    let m = e.vin_range(e.vindices(at, 0), z, e.int(p.w));
                    let m = and_scalar(e, m, row_ok);
                    e.vload_masked(src, at, m)
                })
                .collect();
            let v = pick_strided(e, &parts, sw);
            // Lane l is valid where its column is.
            let idx = strided_indices(e, ix0, sw);
            let mask = e.vin_range(idx, z, e.int(p.w));
            (v, and_scalar(e, mask, row_ok))
        }
    };
    let v = match (fused.prologue, hf.ss) {
        (Some(pr), Some((s, t))) => {
            let v = e.vfma(v, e.vsplat(s), e.vsplat(t));
            pr.act.map_or(v, |f| e.vact(v, f))
        }
        _ => v,
    };
    // Padding is zero after the prologue, as in PyTorch.
    e.b.build_select(mask, v, e.vzero(), "")
        .expect("select")
        .into_vector_value()
}

/// `mask` with every lane also requiring `bit`.
fn and_scalar<'ctx>(
    e: &Emitter<'_, 'ctx>,
    mask: VectorValue<'ctx>,
    bit: IntValue<'ctx>,
) -> VectorValue<'ctx> {
    let splat =
        e.b.build_int_s_extend(bit, e.ctx.i64_type(), "")
            .expect("ext");
    let all = e.isplat(splat);
    let all =
        e.b.build_int_compare(IntPredicate::NE, all, e.isplat(e.int(0)), "")
            .expect("cmp");
    e.b.build_and(mask, all, "").expect("and")
}

/// Lanes `ix0 + l·sw`, as i64.
fn strided_indices<'ctx>(e: &Emitter<'_, 'ctx>, ix0: IntValue<'ctx>, sw: u64) -> VectorValue<'ctx> {
    let steps: Vec<_> = (0..16).map(|l| e.i64t.const_int(l * sw, false)).collect();
    e.b.build_int_add(
        e.isplat(ix0),
        inkwell::types::VectorType::const_vector(&steps),
        "",
    )
    .expect("add")
}

/// Lane `l` of the result is lane `l·sw` of `parts` laid end to end.
fn pick_strided<'ctx>(
    e: &Emitter<'_, 'ctx>,
    parts: &[VectorValue<'ctx>],
    sw: u64,
) -> VectorValue<'ctx> {
    let i32t = e.ctx.i32_type();
    // Pairwise: shuffles take two sources, so gather lane by lane from a
    // running concatenation where sw > 2.
    if sw == 2 {
        let idx: Vec<_> = (0..16).map(|l| i32t.const_int(2 * l, false)).collect();
        return e
            .b
            .build_shuffle_vector(
                parts[0],
                parts[1],
                inkwell::types::VectorType::const_vector(&idx),
                "",
            )
            .expect("shuffle");
    }
    let mut v = e.vzero();
    for l in 0..16u64 {
        let src = l * sw;
        let x =
            e.b.build_extract_element(
                parts[(src / 16) as usize],
                i32t.const_int(src % 16, false),
                "",
            )
            .expect("lane");
        v =
            e.b.build_insert_element(v, x, i32t.const_int(l, false), "")
                .expect("lane");
    }
    v
}

/// GEMM unit `u` (of `gemm_units()`) of image `b`: 32 output channels × 32
/// pixels, then the epilogue. The caller loads the tile configuration.
pub(super) fn gemm<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    c: &Ctx<'_, 'ctx>,
    a: &Args<'ctx>,
    n: NodeIndex,
    p: &BfConv,
    (b, u): Unit<'ctx>,
) {
    let fused = conv_fused(&c.graph.node(n).op).expect("a bf16 conv");
    let ops = c.graph.operands(n);
    let (_, bias, residual) = fused_operands(c, &ops, fused);
    let (ocbs, pbs) = (e.int(p.ocg.div_ceil(UNIT)), e.int(p.pixel_blocks()));
    let per_group = e.mul(ocbs, pbs);
    let gi = e.sdiv(u, per_group);
    let rest = e.srem(u, per_group);
    let (ocb, pb) = if p.panel_outer {
        (e.sdiv(rest, pbs), e.srem(rest, pbs))
    } else {
        (e.srem(rest, ocbs), e.sdiv(rest, ocbs))
    };
    let chunks = p.kpad() / KC;
    let panel_slots = p.row_taps() * chunks * TILE_SLOTS;
    let wt = a.konst(e, c.konst(ops[1]));
    let panel0 = e.add(e.mul(gi, e.int(p.panels())), e.mul(ocb, e.int(2)));
    let a0 = e.at(wt, e.mul(panel0, e.int(panel_slots)));
    let a1 = e.at(a0, e.int(panel_slots));
    let q0 = e.mul(pb, e.int(UNIT));
    let ws = a.image(e, c.workspace(e), b);
    let pairs = p.kpad() / 2;
    let b0 = e.at(ws, e.add(e.mul(gi, e.int(pairs * p.pitch())), q0));
    for t in 0..4 {
        e.tile_zero(t);
    }
    let (a_stride, b_stride) = (e.int(64), e.int(4 * p.pitch()));
    let row_step = p.d.0 * p.cols();
    e.for_const(0, p.row_taps(), |e, rt| {
        let bt = e.at(b0, e.mul(rt, e.int(row_step)));
        let at = e.mul(rt, e.int(chunks * TILE_SLOTS));
        e.for_const(0, chunks, |e, kc| {
            let ak = e.add(at, e.mul(kc, e.int(TILE_SLOTS)));
            e.tile_load(4, e.at(a0, ak), a_stride);
            e.tile_load(5, e.at(a1, ak), a_stride);
            let bk = e.at(bt, e.mul(kc, e.int(16 * p.pitch())));
            // The next chunk's 16 B rows are 16 staged rows apart, a pattern
            // no hardware prefetcher follows: fetch them into L1 now
            // (measured: a fifth off the loop).
            let next = e.at_unchecked(bk, e.int(16 * p.pitch()));
            for r in 0..16 {
                let row = e.at_unchecked(next, e.int(r * p.pitch()));
                e.prefetch_l1(row);
                e.prefetch_l1(e.at_unchecked(row, e.int(16)));
            }
            e.tile_load(6, bk, b_stride);
            e.tile_load(7, e.at(bk, e.int(16)), b_stride);
            e.tile_dp_bf16(0, 4, 6);
            e.tile_dp_bf16(1, 4, 7);
            e.tile_dp_bf16(2, 5, 6);
            e.tile_dp_bf16(3, 5, 7);
        });
    });
    let scratch = e.entry_alloca(e.f32t.array_type(1024).into());
    if let Some(i) = scratch.as_instruction_value() {
        i.set_alignment(64).expect("an alloca takes an alignment");
    }
    for t in 0..4u8 {
        e.tile_store(t, e.at(scratch, e.int(u64::from(t) * 256)), a_stride);
    }
    // Epilogue: accumulator (m, n) row r is channel oc0 + 16m + r, pixels
    // q0 + 16n + lane.
    let q = p.pixels();
    let yb = a.image(e, c.view(n), b);
    let zb = residual.map(|r| a.image(e, c.view(r), b));
    let oc_local0 = e.mul(ocb, e.int(UNIT));
    let (z, qn) = (e.int(0), e.int(q));
    let masks: Vec<VectorValue<'ctx>> = (0..2)
        .map(|nn| e.vin_range(e.vindices(q0, 16 * nn), z, qn))
        .collect();
    e.for_const(0, UNIT, |e, r| {
        let local = e.add(oc_local0, r);
        let live = e.ult(local, e.int(p.ocg));
        let body = |e: &mut Emitter<'_, 'ctx>| {
            let oc = e.add(e.mul(gi, e.int(p.ocg)), local);
            let out = Out {
                y: e.at(yb, e.mul(oc, e.int(q))),
                z: zb.map(|z| e.at(z, e.mul(oc, e.int(q)))),
                bias: bias.map(|bb| a.konst(e, bb)),
            };
            // Tile m = r / 16, row r % 16.
            let (m, rr) = (e.sdiv(r, e.int(16)), e.srem(r, e.int(16)));
            for (nn, &mask) in masks.iter().enumerate() {
                let tile = e.add(e.mul(m, e.int(2)), e.int(nn as u64));
                let at = e.add(e.mul(tile, e.int(256)), e.mul(rr, e.int(16)));
                let v = e.vload(scratch, at);
                let idx = e.add(q0, e.int(16 * nn as u64));
                epilogue_store(e, fused, &out, v, oc, idx, Some(mask));
            }
        };
        if p.ocg.is_multiple_of(UNIT) {
            body(e);
        } else {
            e.if_else(live, body, |_| {});
        }
    });
}
