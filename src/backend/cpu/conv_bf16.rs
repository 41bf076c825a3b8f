//! bf16 convolution on AMX tiles (`--precision bf16` where the CPU has
//! AMX-BF16): an implicit GEMM, `out[q][oc] = Σ_k X[q][k] · W[k][oc]` over
//! output pixels `q = oy·OW + ox`, with `tdpbf16ps` on 16 × 32 bf16 tiles
//! into 16 × 16 fp32 accumulators.
//!
//! *Staging* writes `X` once per conv and image as whole A tiles: per
//! chunk of 32 reduction values, one 64-byte record per pixel (its 32 bf16,
//! in pairs), so the 16 pixels of a tile are 1 KiB in one piece, at any
//! pixel offset (measured: 1.7× the speed of a pair-row layout, whose tile
//! rows lie a whole staged row apart). The reduction index `k` runs over
//! (tap, input channel): the `kw` column taps are always folded into it,
//! staged as shifted copies of the input (each with its zero padding and
//! column stride applied), and so are the row taps of a row-strided conv.
//! A stride-1 conv keeps its row taps as separate GEMMs over the same
//! staged matrix, each reading it `ky·dh·OW` pixels further on: the staged
//! rows run `(kh - 1)·dh` past the output's. Staging applies the prologue
//! (DenseNet's BN-ReLU) and rounds to bf16 (ties to even, as
//! `precision::bf16_bits`); 16 pair vectors over 16 pixels are transposed
//! in registers into 16 pixel records.
//!
//! The weights are packed at bind time as whole B tiles (VNNI): per group,
//! panel of 16 output channels, row tap and chunk of 32 reduction values,
//! 16 rows of pairs × 16 channels (zero past the real channels and
//! reduction).
//!
//! A GEMM unit is 32 pixels × 32 output channels: four accumulator tiles,
//! two A and two B tiles per chunk. The accumulators go through a stack
//! scratch, are transposed in registers to channel-major vectors and take
//! the fused epilogue (bias, residual, activation) in fp32 before the fp32
//! store: activations stay fp32 in the arena, so every other op is
//! unchanged and rounding happens only where a conv reads
//! (docs/performance.md, bf16).

use super::conv_gemm::{conv_fused, epilogue_store, ConvShape, Out};
use super::lower::{fused_operands, Args, Ctx, Unit};
use crate::backend::llvm::emit::Emitter;
use crate::backend::llvm::VectorIsa;
use crate::ir::{Graph, Op};
use crate::precision::bf16_bits;
use inkwell::values::{BasicValue, IntValue, PointerValue, VectorValue};
use inkwell::IntPredicate;
use petgraph::stable_graph::NodeIndex;

/// A prologue's scale and shift for one channel.
type ScaleShift<'ctx> = (
    inkwell::values::FloatValue<'ctx>,
    inkwell::values::FloatValue<'ctx>,
);

/// Pixels and output channels of one GEMM unit.
const UNIT: u64 = 32;
/// Reduction values per tile (16 pairs of bf16).
const KC: u64 = 32;
/// f32 slots of one packed A tile (16 rows × 32 bf16).
const TILE_SLOTS: u64 = 16 * KC / 2;

/// The plan of one bf16 AMX conv.
#[derive(Clone, Debug)]
pub struct BfConv {
    pub shape: ConvShape,
    /// Row taps folded into the reduction (a row-strided conv, or one
    /// row): then the staged rows are the output's.
    pub fold_rows: bool,
    /// The input read as one row of `h·w` pixels (1×1, stride 1, no
    /// padding): staging is a conversion.
    pub flat: bool,
    /// The input staged once as a padded image of pixels (`icg` bf16
    /// each), from which a row tap's A tile reads each pixel's `kw·icg`
    /// values in one piece, rows `sw·icg` values apart: for convs with few
    /// input channels (the stem), whose per-tap copies are mostly work.
    /// The values past `kw·icg` in a tile row are the next pixels', times
    /// zero weights.
    pub pixel_major: bool,
    /// Where this conv's flat 1×1 consumer reads its staged input: the
    /// epilogue also writes its output as that consumer's B tiles
    /// (`plan_handoffs`), rounded, at the workspace offset `handoff.at`.
    pub handoff_out: Option<Handoff>,
    /// Whether the producer of this (flat) conv's input writes its staged
    /// B tiles: the staging pass is skipped and the tiles read at
    /// `handoff.at`.
    pub handoff_in: Option<Handoff>,
}

/// A staged input written by its producer's epilogue: where it lies in an
/// image's workspace (f32 slots) and its pitch (pixel records per chunk).
#[derive(Clone, Copy, Debug)]
pub struct Handoff {
    pub at: u64,
    pub pitch: u64,
    /// Producer and consumer are in one run (`MemoryPlan::runs`, which
    /// the entry, `lower.rs`, runs image by image): one copy serves every
    /// image (`Ctx::handoffs`), in regions of its own.
    pub shared: bool,
}

/// The least fp32 input of a consumer worth a handoff: below it the
/// consumer's staging reads its input from L2 and costs less than the
/// producer's extra stores (measured on resnet50: the 256->64 1x1 at 56x56
/// (3.2 MB) 0.155 ms of staging against 0.08 ms more in its producer, at
/// 28x28 (1.6 MB) 0.05 against 0.03, at 14x14 0.024 against 0.025).
const HANDOFF_MIN_BYTES: u64 = 3 << 19;

/// Pairs a bf16 conv whose epilogue can write its consumer's staged input
/// (groups 1, 32-channel blocks, flat output pixels) with a flat 1×1
/// consumer of its output (no prologue), where no other such pair opens
/// between them in `order` (the order the code runs). Handoffs lie after
/// the kernels' own workspace (`at`), alternately in two regions: a conv
/// that reads one handoff may write the next (resnet50's conv3), and must
/// not overwrite the tiles it still reads. Shared handoffs (`run_of` puts
/// producer and consumer in one run) alternate in two regions after
/// those. Returns the slots they need.
pub fn plan_handoffs(
    graph: &Graph,
    order: &[NodeIndex],
    bf: &mut std::collections::HashMap<NodeIndex, BfConv>,
    at: u64,
    run_of: impl Fn(NodeIndex) -> Option<usize>,
) -> u64 {
    let mut pairs = Vec::new();
    let mut open: Option<NodeIndex> = None;
    for &n in order {
        if open == Some(n) {
            open = None;
        }
        if open.is_some() {
            continue;
        }
        let Some(p) = bf.get(&n) else { continue };
        if p.pixel_major || p.shape.g != 1 || !p.shape.ocg.is_multiple_of(UNIT) {
            continue;
        }
        let consumer = graph.users(n).into_iter().find(|&(u, slot)| {
            slot == 0
                && bf.get(&u).is_some_and(|q| {
                    q.flat && q.shape.g == 1 && q.shape.icg * q.pixels() * 4 >= HANDOFF_MIN_BYTES
                })
                && conv_fused(&graph.node(u).op).is_some_and(|f| f.prologue.is_none())
        });
        if let Some((c, _)) = consumer {
            pairs.push((n, c));
            open = Some(c);
        }
    }
    let size = pairs
        .iter()
        .map(|(_, c)| bf[c].stage_slots().div_ceil(16) * 16)
        .max()
        .unwrap_or(0);
    // Per-image handoffs alternate in two regions, shared ones in two
    // others (an image's shared copy is written while others' per-image
    // ones are live).
    let shared = |&(n, c): &(NodeIndex, NodeIndex)| run_of(n).is_some() && run_of(n) == run_of(c);
    let kinds = [false, true].map(|s| pairs.iter().filter(|p| shared(p) == s).count() as u64);
    let mut seen = [0u64; 2];
    for &(n, c) in &pairs {
        let s = shared(&(n, c));
        let k = seen[usize::from(s)];
        seen[usize::from(s)] += 1;
        let first = if s { kinds[0].min(2) } else { 0 };
        let h = Handoff {
            at: at + (first + k % 2) * size,
            pitch: bf[&c].pitch(),
            shared: s,
        };
        bf.get_mut(&n).expect("planned").handoff_out = Some(h);
        bf.get_mut(&c).expect("planned").handoff_in = Some(h);
    }
    size * (kinds[0].min(2) + kinds[1].min(2))
}

impl BfConv {
    /// The AMX plan of the conv at `n`, where the target has AMX-BF16.
    pub fn plan(graph: &Graph, n: NodeIndex, isa: VectorIsa) -> Option<BfConv> {
        if !isa.amx_bf16 || isa.lanes != 16 || !matches!(graph.node(n).op, Op::Conv { .. }) {
            return None;
        }
        let s = ConvShape::of(graph, n)?;
        let flat = s.k == (1, 1) && s.s == (1, 1) && s.p == (0, 0);
        // Up to four channels interleave in registers; two chunks per row
        // tap at most, as the values past `kw·icg` are work for nothing.
        // Or whole chunks of channels, transposed in registers, where rows
        // of whole tiles add at most an eighth to the GEMM.
        let few = s.icg <= 4 && s.icg * s.k.1 <= 2 * KC;
        let wide = s.icg.is_multiple_of(KC) && 7 * s.ow.div_ceil(16) * 16 <= 8 * s.ow;
        let pixel_major = s.k.1 > 1 && s.d.1 == 1 && s.g == 1 && (few || wide);
        let fold_rows = !pixel_major && (s.s.0 > 1 || s.k.0 == 1);
        Some(BfConv {
            shape: s,
            fold_rows,
            flat,
            pixel_major,
            handoff_out: None,
            handoff_in: None,
        })
    }

    /// Whether the tiles' rows are pixels (input as A, weights as B, the
    /// accumulators transposed in the epilogue): where row taps read the
    /// staged input at pixel offsets, which whole 1 KiB records allow.
    /// With one row tap (1×1 and strided convs) the rows are channels
    /// (weights as A, the input staged as whole B tiles of 16 pixels), and
    /// the epilogue stores accumulator rows as they are: for the 1×1
    /// convs, whose reduction is short, the transposes cost more than the
    /// tile products (measured: resnet50's 64→256 1×1 at 56×56, 1.1 ms).
    fn pixel_rows(&self) -> bool {
        self.row_taps() > 1 || self.pixel_major
    }

    /// Taps folded into the reduction, and the GEMMs over row taps.
    fn folded_taps(&self) -> u64 {
        if self.fold_rows {
            self.shape.k.0 * self.shape.k.1
        } else {
            self.shape.k.1
        }
    }

    fn row_taps(&self) -> u64 {
        if self.fold_rows {
            1
        } else {
            self.shape.k.0
        }
    }

    /// The reduction length per row tap, and rounded to whole tiles.
    fn kred(&self) -> u64 {
        self.folded_taps() * self.shape.icg
    }

    fn kpad(&self) -> u64 {
        self.kred().div_ceil(KC) * KC
    }

    /// Staged rows and their length.
    fn rows(&self) -> u64 {
        if self.flat {
            1
        } else if self.fold_rows {
            self.shape.oh
        } else {
            self.shape.oh + (self.shape.k.0 - 1) * self.shape.d.0
        }
    }

    fn cols(&self) -> u64 {
        if self.flat {
            self.shape.h * self.shape.w
        } else {
            self.shape.ow
        }
    }

    fn pixels(&self) -> u64 {
        self.shape.oh * self.shape.ow
    }

    /// Pixel records per staged chunk: the rows, then zeros for the last
    /// unit's pixels past the end.
    fn pitch(&self) -> u64 {
        (self.rows() * self.cols() + UNIT).div_ceil(16) * 16
    }

    /// f32 slots of one image's staged input: per group and chunk, a
    /// 16-word record per pixel.
    fn stage_slots(&self) -> u64 {
        self.shape.g * self.kpad() / KC * self.pitch() * 16
    }

    fn panels(&self) -> u64 {
        self.shape.ocg.div_ceil(UNIT) * 2
    }

    fn weight_bytes(&self) -> u64 {
        self.shape.g * self.panels() * self.row_taps() * self.kpad() * 16 * 2
    }

    /// Output columns a pixel-major GEMM computes per row: whole tiles,
    /// so that a tile's 16 pixels share their row.
    fn tile_cols(&self) -> u64 {
        self.shape.ow.div_ceil(16) * 16
    }

    /// Pixel-major staging: padded rows, and pixels per staged row (whole
    /// 16-pixel vectors).
    fn image_rows(&self) -> u64 {
        self.shape.h + 2 * self.shape.p.0
    }

    fn image_cols(&self) -> u64 {
        (self.shape.w + 2 * self.shape.p.1).div_ceil(16) * 16
    }

    /// bf16 values of the pixel-major staged image: its rows, then zeros
    /// as far as the last tile row reads (a tile past the last output row
    /// reads the last row's; columns past the output's run on).
    fn image_values(&self) -> u64 {
        let s = &self.shape;
        let rows = self.image_rows() * self.image_cols() * s.icg;
        let last = ((self.image_rows() - 1) * self.image_cols() + self.tile_cols() * s.s.1) * s.icg
            + self.kpad();
        rows.max(last).div_ceil(2 * KC) * 2 * KC
    }

    /// Staging units per pixel-major row: its chunks of 32 channels, or
    /// the whole row where channels are few.
    fn image_chunks(&self) -> u64 {
        self.shape.icg.div_ceil(KC)
    }

    /// Pixels of the GEMM: the output's, or whole tiles per row.
    fn gemm_pixels(&self) -> u64 {
        if self.pixel_major {
            self.shape.oh * self.tile_cols()
        } else {
            self.pixels()
        }
    }

    fn pixel_blocks(&self) -> u64 {
        self.gemm_pixels().div_ceil(UNIT)
    }

    pub fn stage_units(&self) -> u64 {
        if self.handoff_in.is_some() {
            0
        } else if self.pixel_major {
            self.image_rows() * self.image_chunks()
        } else {
            self.shape.g * self.kpad() / KC
        }
    }

    pub fn gemm_units(&self) -> u64 {
        self.shape.g * self.shape.ocg.div_ceil(UNIT) * self.pixel_blocks()
    }

    /// Floats per image of workspace: the staged input.
    pub fn workspace(&self) -> u64 {
        if self.pixel_major {
            self.image_values() / 2
        } else {
            self.stage_slots()
        }
    }

    /// The weight `[g·ocg][icg][kh][kw]` (already rounded) as B tiles:
    /// `[g][panel][row tap][chunk]`, 16 rows (reduction pairs) × 16
    /// channels × 2 bf16 each, two bf16 per f32 slot (the even reduction
    /// index in the low half).
    pub fn pack(&self, wt: &[f32]) -> Vec<f32> {
        let (kh, kw) = self.shape.k;
        let chunks = self.kpad() / KC;
        let mut out = vec![0u16; (self.weight_bytes() / 2) as usize];
        for gi in 0..self.shape.g {
            for oc in 0..self.shape.ocg {
                let (panel, col) = (oc / 16, oc % 16);
                for rt in 0..self.row_taps() {
                    for k in 0..self.kred() {
                        let (t, ic) = (k / self.shape.icg, k % self.shape.icg);
                        let (ky, kx) = if self.fold_rows {
                            (t / kw, t % kw)
                        } else {
                            (rt, t)
                        };
                        let src = (((gi * self.shape.ocg + oc) * self.shape.icg + ic) * kh + ky)
                            * kw
                            + kx;
                        let tile =
                            ((gi * self.panels() + panel) * self.row_taps() + rt) * chunks + k / KC;
                        let at = if self.pixel_rows() {
                            let (pair, half) = ((k % KC) / 2, k % 2);
                            tile * TILE_SLOTS * 2 + (pair * 16 + col) * 2 + half
                        } else {
                            // An A tile: 16 channel rows of 32 values.
                            tile * TILE_SLOTS * 2 + col * KC + k % KC
                        };
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

/// Stages chunk `u` (of `stage_units()`: a group's 32 reduction values)
/// of image `b`: every pixel's record.
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
    if p.pixel_major {
        let ws = a.image(e, c.workspace(e), b);
        let x = a.image(e, c.view(ops[0]), b);
        stage_image_row(e, p, fused, (x, pro), a, ws, u);
        return;
    }
    let chunks = p.kpad() / KC;
    let (gi, kc) = (e.sdiv(u, e.int(chunks)), e.srem(u, e.int(chunks)));
    let ws = a.image(e, c.workspace(e), b);
    let dst = e.at(ws, e.mul(u, e.int(p.pitch() * 16)));
    let x = a.image(e, c.view(ops[0]), b);
    let (rows, cols) = (p.rows(), p.cols());
    let lanes = e.int(16);
    if !p.pixel_rows() {
        stage_b_tiles(e, p, fused, (x, gi, pro), kc, a, dst);
        return;
    }
    // The 16 pair vectors of a 16-pixel block, before their transpose.
    let pairs = e.entry_alloca(e.f32t.array_type(256).into());
    e.for_const(0, rows, |e, r| {
        e.for_const(0, cols.div_ceil(16), |e, ob| {
            let ox0 = e.mul(ob, lanes);
            // A loop, not 16 copies: the body is large, and each conv has
            // its own.
            e.for_const(0, KC / 2, |e, pp| {
                let k = e.add(e.mul(kc, e.int(KC)), e.mul(pp, e.int(2)));
                let lo = half_of(e, a, p, (x, gi, pro), k);
                let lo = load_half(e, p, fused, &lo, r, ox0);
                let hi = half_of(e, a, p, (x, gi, pro), e.add(k, e.int(1)));
                let hi = load_half(e, p, fused, &hi, r, ox0);
                e.vstore(pairs, e.mul(pp, lanes), e.vpack_bf16_pairs(lo, hi));
            });
            let vs: Vec<VectorValue<'ctx>> =
                (0..16).map(|i| e.vload(pairs, e.int(16 * i))).collect();
            // Pair vectors over pixels -> one record (16 pairs) per pixel.
            // Records of columns past the row land on the next row's first
            // pixels, which that row then writes (or on the zeroed tail).
            let q = e.add(e.mul(r, e.int(cols)), ox0);
            for (l, rec) in e.vtranspose(&vs).into_iter().enumerate() {
                let at = e.mul(e.add(q, e.int(l as u64)), lanes);
                e.vstore(dst, at, rec);
            }
        });
    });
    // Zero records past the rows: the last units' pixels read them.
    e.for_const(rows * cols * 16, p.pitch() * 16, |e, i| {
        e.store(dst, i, e.f32(0.0))
    });
}

/// Staging as B tiles (`!pixel_rows()`): per 16 pixels, 16 rows of pairs
/// × 16 words, 1 KiB in one piece. A 16-pixel run of a row that does not
/// start a tile is split over two.
#[allow(clippy::type_complexity)]
fn stage_b_tiles<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    p: &BfConv,
    fused: &crate::ir::op::Fused,
    src: (
        PointerValue<'ctx>,
        IntValue<'ctx>,
        Option<(IntValue<'ctx>, IntValue<'ctx>)>,
    ),
    kc: IntValue<'ctx>,
    a: &Args<'ctx>,
    dst: PointerValue<'ctx>,
) {
    let (rows, cols) = (p.rows(), p.cols());
    // Zeros first where the last tiles run past the pixels; the rows then
    // overwrite their part.
    e.for_const(rows * cols / 16 * 256, p.pitch() * 16, |e, i| {
        e.store(dst, i, e.f32(0.0))
    });
    let (z, lanes) = (e.int(0), e.int(16));
    e.for_const(0, rows, |e, r| {
        e.for_const(0, cols.div_ceil(16), |e, ob| {
            let ox0 = e.mul(ob, lanes);
            // Lane l is pixel q + l: tile q / 16 from offset o, then the
            // next tile from 0. Lanes past the row land on the next row's
            // first pixels, which that row then writes.
            let q = e.add(e.mul(r, e.int(cols)), ox0);
            let (t, o) = (e.sdiv(q, lanes), e.srem(q, lanes));
            let idx = e.vindices(z, 0);
            let first = e.vin_range(idx, z, e.sub(lanes, o));
            let second = e.vin_range(idx, e.sub(lanes, o), lanes);
            let base = e.mul(t, e.int(256));
            e.for_const(0, KC / 2, |e, pp| {
                let k = e.add(e.mul(kc, e.int(KC)), e.mul(pp, e.int(2)));
                let lo = half_of(e, a, p, src, k);
                let lo = load_half(e, p, fused, &lo, r, ox0);
                let hi = half_of(e, a, p, src, e.add(k, e.int(1)));
                let hi = load_half(e, p, fused, &hi, r, ox0);
                let v = e.vpack_bf16_pairs(lo, hi);
                let row = e.add(base, e.mul(pp, lanes));
                e.vstore_masked(dst, e.add(row, o), v, first);
                // The second part: tile t + 1's row pp, lanes 16 - o..16 at
                // its offsets 0..o.
                let next = e.sub(e.add(row, e.int(256)), e.sub(lanes, o));
                e.vstore_masked(dst, next, v, second);
            });
        });
    });
}

/// The output row and column of GEMM pixel `q` of a pixel-major conv.
fn tile_pixel<'ctx>(
    e: &Emitter<'_, 'ctx>,
    p: &BfConv,
    q: IntValue<'ctx>,
) -> (IntValue<'ctx>, IntValue<'ctx>) {
    let cols = e.int(p.tile_cols());
    (e.sdiv(q, cols), e.srem(q, cols))
}

/// Pixel-major staging unit `u`: padded row `u / image_chunks()`, all its
/// channels where they are few (each channel's vector of 16 pixels as
/// bf16, interleaved into 16 pixels of `icg` values), else chunk
/// `u % image_chunks()` (16 pair vectors transposed into 16 records of 32
/// channels). Padding is zero after the prologue; the last unit also
/// zeroes the tail.
fn stage_image_row<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    p: &BfConv,
    fused: &crate::ir::op::Fused,
    (x, pro): (PointerValue<'ctx>, Option<(IntValue<'ctx>, IntValue<'ctx>)>),
    a: &Args<'ctx>,
    dst: PointerValue<'ctx>,
    u: IntValue<'ctx>,
) {
    let s = &p.shape;
    let (z, i16t) = (e.int(0), e.ctx.i16_type());
    let chunks = p.image_chunks();
    let (r, cc) = (e.sdiv(u, e.int(chunks)), e.srem(u, e.int(chunks)));
    let iy = e.sub(r, e.int(s.p.0));
    let row_ok = e.b.build_and(
        e.b.build_int_compare(IntPredicate::SGE, iy, z, "")
            .expect("cmp"),
        e.b.build_int_compare(IntPredicate::SLT, iy, e.int(s.h), "")
            .expect("cmp"),
        "",
    );
    let row_ok = row_ok.expect("and");
    let iy = e.pick(row_ok, iy, z);
    // Channel `ch`'s 16 pixels from input column ix0, as the conv reads
    // them (prologue, then zero outside the image).
    let channel = |e: &mut Emitter<'_, 'ctx>, ch: IntValue<'ctx>, ix0: IntValue<'ctx>| {
        let mask = e.vin_range(e.vindices(ix0, 0), z, e.int(s.w));
        let mask = and_scalar(e, mask, row_ok);
        let plane = e.at(x, e.add(e.mul(ch, e.int(s.h * s.w)), e.mul(iy, e.int(s.w))));
        let v = e.vload_masked(plane, ix0, mask);
        let ss = pro.map(|(sc, sh)| (e.load(a.konst(e, sc), ch), e.load(a.konst(e, sh), ch)));
        prologue_then_padding(e, fused, v, ss, mask)
    };
    let cols = p.image_cols();
    if s.icg >= KC {
        let pairs = e.entry_alloca(e.f32t.array_type(256).into());
        e.for_const(0, cols / 16, |e, xb| {
            let ix0 = e.sub(e.mul(xb, e.int(16)), e.int(s.p.1));
            e.for_const(0, KC / 2, |e, pp| {
                let ch = e.add(e.mul(cc, e.int(KC)), e.mul(pp, e.int(2)));
                let lo = channel(e, ch, ix0);
                let hi = channel(e, e.add(ch, e.int(1)), ix0);
                e.vstore(pairs, e.mul(pp, e.int(16)), e.vpack_bf16_pairs(lo, hi));
            });
            let vs: Vec<VectorValue<'ctx>> =
                (0..16).map(|i| e.vload(pairs, e.int(16 * i))).collect();
            let px = e.add(e.mul(r, e.int(cols)), e.mul(xb, e.int(16)));
            for (l, rec) in e.vtranspose(&vs).into_iter().enumerate() {
                // Pixel px + l's chunk cc, in f32 slots.
                let at = e.mul(e.add(px, e.int(l as u64)), e.int(s.icg / 2));
                e.vstore(dst, e.add(at, e.mul(cc, e.int(KC / 2))), rec);
            }
        });
    } else {
        // Channel vectors padded to a power of two, concatenated pairwise,
        // then lane `x·icg + ch` taken from `ch·16 + x`.
        let width = s.icg.next_power_of_two() as usize;
        let cat = |e: &Emitter<'_, 'ctx>, lo: VectorValue<'ctx>, hi: VectorValue<'ctx>| {
            let n = lo.get_type().get_size() as u64;
            let idx: Vec<_> = (0..2 * n)
                .map(|i| e.ctx.i32_type().const_int(i, false))
                .collect();
            e.b.build_shuffle_vector(lo, hi, inkwell::types::VectorType::const_vector(&idx), "")
                .expect("shuffle")
        };
        e.for_const(0, cols / 16, |e, xb| {
            let ix0 = e.sub(e.mul(xb, e.int(16)), e.int(s.p.1));
            let mut parts: Vec<VectorValue<'ctx>> = (0..s.icg)
                .map(|ch| {
                    let v = channel(e, e.int(ch), ix0);
                    bf16_halves(e, v)
                })
                .collect();
            parts.resize(width, i16t.vec_type(16).const_zero());
            while parts.len() > 1 {
                parts = parts.chunks(2).map(|w| cat(e, w[0], w[1])).collect();
            }
            let idx: Vec<_> = (0..16 * s.icg)
                .map(|j| {
                    e.ctx
                        .i32_type()
                        .const_int((j % s.icg) * 16 + j / s.icg, false)
                })
                .collect();
            let all = parts[0];
            let v = e
                .b
                .build_shuffle_vector(all, all, inkwell::types::VectorType::const_vector(&idx), "")
                .expect("shuffle");
            let at = e.mul(
                e.add(e.mul(r, e.int(cols)), e.mul(xb, e.int(16))),
                e.int(s.icg),
            );
            // SAFETY (LLVM semantics): inside the staged image.
            let ptr = unsafe { e.b.build_in_bounds_gep(i16t, dst, &[at], "") }.expect("gep");
            let st = e.b.build_store(ptr, v).expect("store");
            st.set_alignment(2).expect("a store takes an alignment");
        });
    }
    let last =
        e.b.build_int_compare(IntPredicate::EQ, u, e.int(p.stage_units() - 1), "")
            .expect("cmp");
    e.if_else(
        last,
        |e| {
            let rows = p.image_rows() * cols * s.icg / 2;
            e.for_const(rows, p.image_values() / 2, |e, i| {
                e.store(dst, i, e.f32(0.0))
            });
        },
        |_| {},
    );
}

/// Each lane of `v` rounded to bf16, as 16-bit lanes.
fn bf16_halves<'ctx>(e: &Emitter<'_, 'ctx>, v: VectorValue<'ctx>) -> VectorValue<'ctx> {
    let lanes = v.get_type().get_size();
    e.b.build_int_truncate(e.vbf16_bits(v), e.ctx.i16_type().vec_type(lanes), "")
        .expect("trunc")
}

/// What reduction index `k` of group `gi` reads: its input channel plane,
/// the prologue's scale and shift, and its tap's offsets.
#[allow(clippy::type_complexity)]
fn half_of<'ctx>(
    e: &Emitter<'_, 'ctx>,
    a: &Args<'ctx>,
    p: &BfConv,
    (x, gi, pro): (
        PointerValue<'ctx>,
        IntValue<'ctx>,
        Option<(IntValue<'ctx>, IntValue<'ctx>)>,
    ),
    k: IntValue<'ctx>,
) -> Half<'ctx> {
    let (kw, icg) = (p.shape.k.1, p.shape.icg);
    let live = e.ult(k, e.int(p.kred()));
    let k = e.pick(live, k, e.int(0));
    let (t, ic) = (e.sdiv(k, e.int(icg)), e.srem(k, e.int(icg)));
    let (ty, tx) = if p.fold_rows {
        (e.sdiv(t, e.int(kw)), e.srem(t, e.int(kw)))
    } else {
        (e.int(0), t)
    };
    let ch = e.add(e.mul(gi, e.int(icg)), ic);
    let plane = e.at(x, e.mul(ch, e.int(p.shape.h * p.shape.w)));
    let ss = pro.map(|(s, t)| (e.load(a.konst(e, s), ch), e.load(a.konst(e, t), ch)));
    let col = e.sub(e.mul(tx, e.int(p.shape.d.1)), e.int(p.shape.p.1));
    let row = e.sub(e.mul(ty, e.int(p.shape.d.0)), e.int(p.shape.p.0));
    Half {
        live,
        plane,
        ss,
        col,
        row,
    }
}

/// One half of a staged pair: what its reduction index reads.
struct Half<'ctx> {
    live: IntValue<'ctx>,
    plane: PointerValue<'ctx>,
    ss: Option<ScaleShift<'ctx>>,
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
        let mask = e.vin_range(e.vindices(ox0, 0), z, e.int(p.shape.h * p.shape.w));
        let mask = and_scalar(e, mask, hf.live);
        (e.vload_masked(hf.plane, ox0, mask), mask)
    } else {
        let (sh, sw) = p.shape.s;
        let iy = if p.fold_rows {
            e.add(e.mul(r, e.int(sh)), hf.row)
        } else {
            e.sub(r, e.int(p.shape.p.0))
        };
        let row_ok = e.b.build_and(
            e.b.build_int_compare(IntPredicate::SGE, iy, z, "")
                .expect("cmp"),
            e.b.build_int_compare(IntPredicate::SLT, iy, e.int(p.shape.h), "")
                .expect("cmp"),
            "",
        );
        let row_ok =
            e.b.build_and(row_ok.expect("and"), hf.live, "")
                .expect("and");
        let iy = e.pick(row_ok, iy, z);
        let src = e.at_unchecked(hf.plane, e.mul(iy, e.int(p.shape.w)));
        // Input column of lane l: (ox0 + l)·sw + col.
        let ix0 = e.add(e.mul(ox0, e.int(sw)), hf.col);
        if sw == 1 {
            let mask = e.vin_range(e.vindices(ix0, 0), z, e.int(p.shape.w));
            let mask = and_scalar(e, mask, row_ok);
            (e.vload_masked(src, ix0, mask), mask)
        } else {
            // sw consecutive vectors, every sw-th lane of them.
            let parts: Vec<VectorValue<'ctx>> = (0..sw)
                .map(|j| {
                    let at = e.add(ix0, e.int(16 * j));
                    let m = e.vin_range(e.vindices(at, 0), z, e.int(p.shape.w));
                    let m = and_scalar(e, m, row_ok);
                    e.vload_masked(src, at, m)
                })
                .collect();
            let v = pick_strided(e, &parts, sw);
            // Lane l is valid where its column is.
            let idx = strided_indices(e, ix0, sw);
            let mask = e.vin_range(idx, z, e.int(p.shape.w));
            (v, and_scalar(e, mask, row_ok))
        }
    };
    prologue_then_padding(e, fused, v, hf.ss, mask)
}

/// The prologue (scale, shift, activation) on `v`, then zero where `mask`
/// is clear: padding is zero after the prologue, as in PyTorch.
fn prologue_then_padding<'ctx>(
    e: &Emitter<'_, 'ctx>,
    fused: &crate::ir::op::Fused,
    v: VectorValue<'ctx>,
    ss: Option<ScaleShift<'ctx>>,
    mask: VectorValue<'ctx>,
) -> VectorValue<'ctx> {
    let v = match (fused.prologue, ss) {
        (Some(pr), Some((s, t))) => {
            let v = e.vfma(v, e.vsplat(s), e.vsplat(t));
            pr.act.map_or(v, |f| e.vact(v, f))
        }
        _ => v,
    };
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

/// GEMM unit `u` (of `gemm_units()`) of image `b`: 32 pixels × 32 output
/// channels, then the epilogue. The caller loads the tile configuration.
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
    let (ocbs, pbs) = (e.int(p.shape.ocg.div_ceil(UNIT)), e.int(p.pixel_blocks()));
    let per_group = e.mul(ocbs, pbs);
    let gi = e.sdiv(u, per_group);
    let rest = e.srem(u, per_group);
    // Consecutive units share a weight panel and walk the pixels: the
    // output is written as 32 streams, one per channel plane, and the
    // panel stays in cache (measured on resnet50 in bf16: 12.8-13.9 ms
    // with consecutive units sharing a pixel block instead, 10.2-11.5 ms
    // this way; the 1x1 convs to 256 channels at 56x56 0.33 -> 0.14 ms).
    let (ocb, pb) = (e.sdiv(rest, pbs), e.srem(rest, pbs));
    let chunks = p.kpad() / KC;
    let panel_slots = p.row_taps() * chunks * TILE_SLOTS;
    let wt = a.konst(e, c.konst(ops[1]));
    let panel0 = e.add(e.mul(gi, e.int(p.panels())), e.mul(ocb, e.int(2)));
    let w0 = e.at(wt, e.mul(panel0, e.int(panel_slots)));
    let w1 = e.at(w0, e.int(panel_slots));
    let q0 = e.mul(pb, e.int(UNIT));
    let ws = a.image(e, c.workspace(e), b);
    // Handoffs outlive their producer: every image's own, or one copy
    // inside a run (`Handoff::shared`).
    let hs = |h: Handoff| (h, a.image(e, c.handoffs(e, h.shared), b));
    let hout = p.handoff_out.map(hs);
    // The producer's epilogue staged the input here.
    let staged = match p.handoff_in.map(hs) {
        Some((h, hin)) => e.at(hin, e.int(h.at)),
        None => ws,
    };
    let rec = 16;
    let s = &p.shape;
    // Each input tile's first row, and (in f32 slots) the steps to the next
    // row tap and chunk, and the bytes between its rows.
    let (xs, row_step, chunk_step, x_stride) = if p.pixel_major {
        let cols = p.image_cols();
        let xs = [0, 1].map(|m| {
            let (oy, ox) = tile_pixel(e, p, e.add(q0, e.int(16 * m)));
            // A tile past the last output row reads the last row's
            // pixels; its results are never stored.
            let oy = e.smin(oy, e.int(s.oh - 1));
            let first = e.add(
                e.mul(e.mul(oy, e.int(s.s.0)), e.int(cols)),
                e.mul(ox, e.int(s.s.1)),
            );
            // `first` is even (whole tiles, rows of whole vectors): in f32
            // slots, first / 2 · icg.
            e.at(ws, e.mul(e.sdiv(first, e.int(2)), e.int(s.icg)))
        });
        (xs, s.d.0 * cols * s.icg / 2, KC / 2, s.s.1 * s.icg * 2)
    } else {
        let x0 = e.at(
            staged,
            e.mul(e.add(e.mul(gi, e.int(chunks * p.pitch())), q0), e.int(rec)),
        );
        let row_step = s.d.0 * p.cols() * rec;
        (
            [x0, e.at(x0, e.int(16 * rec))],
            row_step,
            p.pitch() * rec,
            64,
        )
    };
    for t in 0..4 {
        e.tile_zero(t);
    }
    let stride = e.int(64);
    let x_stride = e.int(x_stride);
    e.for_const(0, p.row_taps(), |e, rt| {
        let step = e.mul(rt, e.int(row_step));
        let wr = e.mul(rt, e.int(chunks * TILE_SLOTS));
        e.for_const(0, chunks, |e, kc| {
            let off = e.add(step, e.mul(kc, e.int(chunk_step)));
            let (xk0, xk1) = (e.at(xs[0], off), e.at(xs[1], off));
            let wk = e.add(wr, e.mul(kc, e.int(TILE_SLOTS)));
            if !p.pixel_rows() {
                // Weights as A (channel rows), the input as B.
                e.tile_load(4, e.at(w0, wk), stride);
                e.tile_load(5, e.at(w1, wk), stride);
                e.tile_load(6, xk0, x_stride);
                e.tile_load(7, xk1, x_stride);
                e.tile_dp_bf16(0, 4, 6);
                e.tile_dp_bf16(1, 4, 7);
                e.tile_dp_bf16(2, 5, 6);
                e.tile_dp_bf16(3, 5, 7);
                return;
            }
            e.tile_load(4, xk0, x_stride);
            e.tile_load(5, xk1, x_stride);
            // The first pixel block streams the panel from L3: ask for its
            // tiles four chunks ahead (measured: a tenth off resnet18's 7x7
            // stage).
            let ahead = e.add(wk, e.int(4 * TILE_SLOTS));
            for line in 0..16 {
                e.prefetch_l2(e.at_unchecked(w0, e.add(ahead, e.int(16 * line))));
                e.prefetch_l2(e.at_unchecked(w1, e.add(ahead, e.int(16 * line))));
            }
            e.tile_load(6, e.at(w0, wk), stride);
            e.tile_load(7, e.at(w1, wk), stride);
            // Tile 2m + n: pixels 16m.., channels 16n...
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
        e.tile_store(t, e.at(scratch, e.int(u64::from(t) * 256)), stride);
    }
    // Epilogue: each accumulator's 16 pixel rows transposed into 16
    // channel vectors over its pixels.
    let q = p.pixels();
    let yb = a.image(e, c.view(n), b);
    let zb = residual.map(|r| a.image(e, c.view(r), b));
    let oc_local0 = e.mul(ocb, e.int(UNIT));
    let (z, qn) = (e.int(0), e.int(q));
    for m in 0..2u64 {
        let (idx, mask) = if p.pixel_major {
            // 16 pixels of one row: those inside it and the output.
            let (oy, ox) = tile_pixel(e, p, e.add(q0, e.int(16 * m)));
            let live = e.ult(oy, e.int(s.oh));
            let mask = e.vin_range(e.vindices(ox, 0), z, e.int(s.ow));
            (e.add(e.mul(oy, e.int(s.ow)), ox), and_scalar(e, mask, live))
        } else {
            let idx = e.add(q0, e.int(16 * m));
            (idx, e.vin_range(e.vindices(idx, 0), z, qn))
        };
        for nn in 0..2u64 {
            let tile = (2 * m + nn) * 256;
            let rows: Vec<VectorValue<'ctx>> = (0..16)
                .map(|r| e.vload(scratch, e.int(tile + 16 * r)))
                .collect();
            // Pixel rows: tile 2m + n is pixels 16m.., channels 16n..;
            // channel rows: channels 16m.., pixels 16n.. .
            let (cols, oc_half, idx, mask) = if p.pixel_rows() {
                (e.vtranspose(&rows), nn, idx, mask)
            } else {
                let idx = e.add(q0, e.int(16 * nn));
                (rows, m, idx, e.vin_range(e.vindices(idx, 0), z, qn))
            };
            let mut finals = Vec::new();
            for (j, v) in cols.into_iter().enumerate() {
                let local = e.add(oc_local0, e.int(16 * oc_half + j as u64));
                let store = |e: &mut Emitter<'_, 'ctx>| {
                    let oc = e.add(e.mul(gi, e.int(p.shape.ocg)), local);
                    let out = Out {
                        y: e.at(yb, e.mul(oc, e.int(q))),
                        z: zb.map(|z| e.at(z, e.mul(oc, e.int(q)))),
                        bias: bias.map(|bb| a.konst(e, bb)),
                    };
                    epilogue_store(e, fused, &out, v, oc, idx, Some(mask))
                };
                if p.shape.ocg.is_multiple_of(UNIT) {
                    finals.push(store(e));
                } else {
                    let live = e.ult(local, e.int(p.shape.ocg));
                    e.if_else(live, |e| _ = store(e), |_| {});
                }
            }
            // The consumer's B tile rows: channel pairs over these 16
            // pixels (a whole tile: pixels past the image fill columns
            // whose outputs the consumer drops).
            if let Some((h, hout)) = hout {
                let tile = e.sdiv(idx, e.int(16));
                let base = e.add(
                    e.int(h.at),
                    e.mul(
                        e.add(e.mul(ocb, e.int(h.pitch)), e.mul(tile, e.int(16))),
                        e.int(16),
                    ),
                );
                for (i, pair) in finals.chunks(2).enumerate() {
                    let row = e.add(base, e.int((8 * oc_half + i as u64) * 16));
                    e.vstore(hout, row, e.vpack_bf16_pairs(pair[0], pair[1]));
                }
            }
        }
    }
}
