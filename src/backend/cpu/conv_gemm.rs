//! Convolution as a register-tiled GEMM over shifted windows.
//!
//! Vectors are `lanes` f32 wide: 16 on AVX-512 targets, 8 on AVX2, 4 on
//! NEON (`VectorIsa`). For a conv with stride 1 and no padding, output pixel
//! `q = oy·W + ox` of input channel `ic` at tap `(ky, kx)` reads
//! `x[ic][q + ky·dh·W + kx·dw]`: for a fixed tap, consecutive output pixels
//! read consecutive inputs, so a strip of `2·lanes` output pixels is two
//! plain vector loads and no im2col matrix is ever formed. Padding, strides
//! and a pre-activation prologue are made to fit that mould by *staging*
//! the input once per conv: each channel is written, prologue applied,
//! zero-padded and split into `sh × sw` phases (every `sh`-th row and
//! `sw`-th column), so a strided tap is an unstrided one in its phase. The
//! output grid then has row pitch `wq ≥ OW`; the columns past `OW` are
//! computed and never stored.
//!
//! The pixel microkernel (`Tiling::Pixels`) holds an `MR × 2·lanes` tile
//! of (output channel, pixel) accumulators in registers, streams the
//! weights (prepacked at compile time as `[group][oc panel][ic][tap][MR]`,
//! one broadcast each) against the input vectors, then applies the fused
//! epilogue (bias, residual add, activation) in registers before the one
//! store.
//!
//! Where the junk columns and the rounding of the grid to whole pixel
//! tiles waste much (the 7×7 and 14×14 stages, 8×8 CIFAR maps), the tile
//! turns round (`Tiling::Channels`): `lanes·V` output channels (the packed
//! weights, vector loads) × `r` pixels of one output row (broadcasts of the
//! input), so no junk column is computed. Its epilogue transposes the
//! accumulators in registers so that each channel's pixels are one
//! contiguous store. A cost model picks the tiling per conv.

use super::lower::{fused_operands, prologue_value, valid_range, vprologue_value, Args, Ctx, Unit};
use crate::backend::llvm::emit::Emitter;
use crate::backend::llvm::LlvmError;
use crate::backend::llvm::VectorIsa;
use crate::ir::graph::chw;
use crate::ir::op::{ConvGeom, EpilogueStep, Fused, Op};
use crate::ir::Graph;
use crate::precision::{bf16_bits, Precision};
use inkwell::values::{FloatValue, IntValue, PointerValue, VectorValue};
use petgraph::stable_graph::NodeIndex;
use std::collections::HashMap;

/// How the input of a conv is staged: zero-padded, prologue applied, split
/// into phases.
#[derive(Clone, Debug)]
pub struct Staging {
    /// `(row phase, column phase)` of every plane, in plane order.
    pub phases: Vec<(u64, u64)>,
    pub hq: u64,
    pub h: u64,
    pub w: u64,
    pub stride: (u64, u64),
    pub pad: (u64, u64),
    /// Staging rounds the input to bf16 (`Precision::Bf16`).
    pub bf16: bool,
}

/// Whether bf16 convs on `isa` read channel pairs with `vdpbf16ps`
/// (`GemmConv::pairs`): AVX512-BF16 without AMX (Zen 4 and 5, Cooper
/// Lake). Not on the AMX Xeons, for the convs AMX does not take: there
/// `vdpbf16ps` issues at a quarter of the FMA rate (measured on a Xeon
/// with AMX: 0.58 against 0.15 ns an instruction), half the emulated
/// path's speed (docs/performance.md).
pub fn reads_pairs(isa: VectorIsa, precision: Precision) -> bool {
    precision == Precision::Bf16 && isa.dp_bf16 && !isa.amx_bf16 && isa.lanes == 16
}

/// Which way a conv's register tile is vectorized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tiling {
    /// `mr` output channels × `2·lanes` consecutive grid pixels (pixel
    /// vectors, weight broadcasts).
    Pixels,
    /// `mr = lanes·V` output channels × `r` pixels of one output row
    /// (channel vectors, input broadcasts).
    Channels { r: u64 },
}

/// Which tilings the CPU back end may use: the cost model's choice (`Auto`)
/// or one forced for every conv (for tests and comparisons).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConvKernel {
    #[default]
    Auto,
    Pixels,
    Channels,
}

/// Output rows that share one set of taps in a `Channels` tile: rows
/// `first + step·i` for `i < rows`. A conv has one (every row, every tap);
/// a transposed conv with stride `s` has `s`, each with the taps that land
/// on its rows.
#[derive(Clone, Debug)]
pub struct RowPhase {
    pub first: u64,
    pub step: u64,
    pub rows: u64,
    /// Source offset of row `i`'s first input element: `i · row_pitch`.
    pub row_pitch: u64,
    /// Per tap (index into the packed weights), the tile pixels it feeds
    /// and the source offset each reads, from the tile's source base.
    pub uses: Vec<(u64, Vec<(u64, u64)>)>,
}

/// The tiling of one conv.
#[derive(Clone, Debug)]
pub struct GemmConv {
    pub tiling: Tiling,
    /// f32 lanes per vector of the kernel.
    pub lanes: u64,
    /// Output channels per register tile.
    pub mr: u64,
    /// Output channels per panel of the packed weight: `mr`, or a multiple
    /// of it where this plan reads weights packed for a wider vector unit
    /// (a multi-level library's lower levels share the top level's), each
    /// stored panel then `wpitch / mr` register tiles.
    pub wpitch: u64,
    pub groups: u64,
    pub icg: u64,
    pub ocg: u64,
    /// Register tiles per group: `ceil(ocg / mr)`.
    pub oc_panels: u64,
    /// Kernel taps (`kh × kw`, row-major) as offsets into a channel's
    /// source planes.
    pub taps: Vec<u64>,
    /// Elements per input channel in the source (staged or the input).
    pub plane: u64,
    /// Row pitch of the output grid.
    pub wq: u64,
    pub oh: u64,
    pub ow: u64,
    /// Pixel tiles per group and image (`Pixels`).
    pub panels: u64,
    /// Pixel tiles per work unit (`Pixels`).
    pub block: u64,
    /// Row ranges the output is split into (`Channels`), so that a layer
    /// with few channel panels still has work for every thread.
    pub row_chunks: u64,
    /// Input channels per reduction block (`Channels`): `icg`, or fewer
    /// where a panel's weights outgrow L1 (`choose_kblock`).
    pub kc: u64,
    /// `Channels`: the row phases, and the source columns one `r`-pixel
    /// strip advances by.
    pub row_phases: Vec<RowPhase>,
    pub strip_cols: u64,
    /// `Channels`: the kernel's width (its rows are split into tap groups,
    /// `tap_group`).
    pub kw: u64,
    /// A transposed conv: its weight is `[ic, ocg, kh, kw]`.
    pub transposed: bool,
    /// bf16 on AVX512-BF16: the reduction runs over pairs of input
    /// channels, each staged plane element (`Rounding::Pairs`) and packed
    /// weight slot a 32-bit word of two bf16, the product `vdpbf16ps` (half the
    /// instructions and bytes of fp32 per reduction step).
    pub pairs: bool,
    /// With `pairs` and an odd `icg` (the stem's 3 channels): the last
    /// pair plane holds the odd channel at two horizontally neighbouring
    /// taps, `(x[sw·j + px], x[sw·j + px + 1])`, in place of that channel
    /// beside a zero, so it reduces over the even column taps only, each
    /// word's weights taps `kx` and `kx + 1` (`tail_tap`): the 7×7
    /// stem's 98 pair steps an output become 49 + 28.
    pub tail: bool,
    pub staging: Option<Staging>,
}

/// The sizes of a conv or transposed conv over an image, per group.
#[derive(Clone, Debug)]
pub struct ConvShape {
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
}

impl ConvShape {
    /// The shape of the (transposed) conv at `n`, or `None` when it is not
    /// one over an image or shares its weight: the packed weight replaces
    /// the plain one, so it must be this op's alone.
    pub fn of(graph: &Graph, n: NodeIndex) -> Option<ConvShape> {
        let node = graph.node(n);
        let (Op::Conv { geom, .. } | Op::ConvTranspose { geom, .. }) = &node.op else {
            return None;
        };
        let ops = graph.operands(n);
        let (xs, ys) = (&graph.node(ops[0]).shape, &node.shape);
        if xs.len() != 3 || ys.len() != 3 || graph.users(ops[1]).len() != 1 {
            return None;
        }
        Some(ConvShape::new(geom, chw(xs), chw(ys)))
    }

    /// The sizes of `geom` on a `[c, h, w]` input giving `[oc, oh, ow]`.
    pub fn new(geom: &ConvGeom, x: (u64, u64, u64), y: (u64, u64, u64)) -> ConvShape {
        let g = geom.groups as u64;
        let pair = |v: [usize; 2]| (v[0] as u64, v[1] as u64);
        ConvShape {
            g,
            icg: x.0 / g,
            ocg: y.0 / g,
            h: x.1,
            w: x.2,
            oh: y.1,
            ow: y.2,
            k: pair(geom.kernel),
            s: pair(geom.stride),
            p: pair(geom.pad),
            d: pair(geom.dilation),
        }
    }
}

impl GemmConv {
    /// Tiles the conv at `n`, or `None` when it is not a conv over an image.
    pub fn plan(
        graph: &Graph,
        n: NodeIndex,
        isa: VectorIsa,
        precision: Precision,
        kernel: ConvKernel,
        pitch: Option<u64>,
    ) -> Option<GemmConv> {
        let Op::Conv { fused, .. } = &graph.node(n).op else {
            return None;
        };
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
        // In bf16 every conv stages its input: staging rounds it.
        let bf16 = precision == Precision::Bf16;
        let staged = (ph, pw) != (0, 0) || (sh, sw) != (1, 1) || fused.prologue.is_some() || bf16;
        let taps_rc = (0..kh).flat_map(|ky| (0..kw).map(move |kx| (ky * dh, kx * dw)));
        let (plane, wq, taps, staging) = if staged {
            let (hp, wp) = (h + 2 * ph, w + 2 * pw);
            let (hq, wq) = (hp.div_ceil(sh), wp.div_ceil(sw));
            let mut phases: Vec<(u64, u64)> =
                taps_rc.clone().map(|(y, x)| (y % sh, x % sw)).collect();
            phases.sort_unstable();
            phases.dedup();
            let taps: Vec<u64> = taps_rc
                .map(|(y, x)| {
                    let f = phases
                        .iter()
                        .position(|&q| q == (y % sh, x % sw))
                        .unwrap_or(0) as u64;
                    f * hq * wq + (y / sh) * wq + x / sw
                })
                .collect();
            let st = Staging {
                phases,
                hq,
                h,
                w,
                stride: (sh, sw),
                pad: (ph, pw),
                bf16,
            };
            let plane = st.phases.len() as u64 * hq * wq;
            (plane, wq, taps, Some(st))
        } else {
            (h * w, w, taps_rc.map(|(y, x)| y * w + x).collect(), None)
        };
        let strided = (sh, sw) != (1, 1);
        let pairs = reads_pairs(isa, precision);
        // Column taps `kx` and `kx + 1` lie in one staged word only where
        // a stride of 2 puts both in the even column phase's row.
        let tail = pairs && g == 1 && icg % 2 == 1 && sw == 2 && dw == 1 && kw >= 3;
        let (tiling, mr) = choose_tiling(ocg, (oh, ow, wq), (kw, strided), isa, kernel, pitch);
        let panels = (oh * wq).div_ceil(2 * isa.lanes);
        // A channel tile's one row phase: every row, every tap, pixel `j`
        // reading `tap + j`.
        let (row_phases, strip_cols) = match tiling {
            Tiling::Pixels => (Vec::new(), 0),
            Tiling::Channels { r } => {
                let uses = taps
                    .iter()
                    .enumerate()
                    .map(|(ti, &off)| (ti as u64, (0..r).map(|j| (j, off + j)).collect()))
                    .collect();
                let phase = RowPhase {
                    first: 0,
                    step: 1,
                    rows: oh,
                    row_pitch: wq,
                    uses,
                };
                (vec![phase], r)
            }
        };
        let mut p = GemmConv {
            tiling,
            lanes: isa.lanes,
            mr,
            wpitch: pitch.unwrap_or(mr),
            groups: g,
            icg,
            ocg,
            oc_panels: ocg.div_ceil(mr),
            taps,
            plane,
            wq,
            oh,
            ow,
            panels,
            block: (panels / MIN_UNITS).clamp(1, PIXEL_BLOCK),
            row_chunks: 1,
            kc: icg,
            row_phases,
            strip_cols,
            kw,
            transposed: false,
            pairs,
            tail,
            staging,
        };
        p.kc = p.kdim();
        p.split_rows();
        p.choose_kblock();
        Some(p)
    }

    /// Blocks the reduction of a `Channels` conv whose panel weights
    /// outgrow L1 (the late layers: 393 KiB a panel for resnet50's
    /// 2048→512 1×1, 1.7 MiB for its 512-channel 3×3s), so that a block's
    /// weights stay in L1 across the unit's rows and strips instead of
    /// coming from L2 once per strip. The accumulators of the unit's strips
    /// wait in a stack array between blocks. Where that array would not
    /// stay in cache (large maps), the reduction stays whole.
    fn choose_kblock(&mut self) {
        let Tiling::Channels { r } = self.tiling else {
            return;
        };
        let per_ic = self.panel_bytes() / self.kdim();
        if self.transposed
            || self.tail
            || self.panel_bytes() < KBLOCK_MIN_PANEL
            || self.spill_floats(r) * 4 > KBLOCK_MAX_SPILL
        {
            return;
        }
        // The largest divisor of `icg` whose weights fit the block budget,
        // so every block has the same constant trip count.
        let most = (KBLOCK_BYTES / per_ic).max(1);
        self.kc = (1..=most.min(self.kdim()))
            .rev()
            .find(|k| self.kdim().is_multiple_of(*k))
            .unwrap_or(1);
    }

    /// Bytes of one register tile's packed weights.
    fn panel_bytes(&self) -> u64 {
        4 * self.kdim() * self.taps.len() as u64 * self.mr
    }

    /// Steps of the reduction per tap: input channels, or pairs of them
    /// (`pairs`).
    pub fn kdim(&self) -> u64 {
        if self.pairs {
            self.icg.div_ceil(2)
        } else {
            self.icg
        }
    }

    /// Whether tap `ti` (row-major) is read by the tail pair (`tail`):
    /// the even column taps.
    pub fn tail_tap(&self, ti: u64) -> bool {
        (ti % self.kw).is_multiple_of(2)
    }

    /// Pairs reduced over every tap: all of them, but the tail pair.
    fn full_pairs(&self) -> u64 {
        self.kdim() - u64::from(self.tail)
    }

    /// Floats of accumulators a `Channels` unit keeps between reduction
    /// blocks: every strip of its rows.
    fn spill_floats(&self, r: u64) -> u64 {
        let rows = self.row_phases.iter().map(|p| p.rows).max().unwrap_or(1);
        rows.div_ceil(self.row_chunks) * self.ow.div_ceil(r) * r * self.mr
    }

    /// Splits a `Channels` conv's rows so that every image has at least
    /// `MIN_UNITS` work units where the rows allow.
    pub(super) fn split_rows(&mut self) {
        if let Tiling::Channels { .. } = self.tiling {
            let rows = self.row_phases.iter().map(|p| p.rows).max().unwrap_or(1);
            self.row_chunks = MIN_UNITS
                .div_ceil(self.groups * self.oc_panels)
                .min(rows)
                .max(1);
        }
    }

    /// Work units per image of the tile kernel.
    pub fn units(&self) -> u64 {
        match self.tiling {
            Tiling::Pixels => self.groups * self.panels.div_ceil(self.block),
            Tiling::Channels { .. } => self.groups * self.oc_panels * self.row_chunks,
        }
    }

    /// Floats of staging space per image, with room for the last tile's
    /// over-read (lanes past the output grid read past the last plane).
    pub fn workspace(&self) -> u64 {
        match self.staging {
            Some(_) => self.groups * self.kdim() * self.plane + self.slack(),
            None => 0,
        }
    }

    /// How far past a source the tiles may read (junk lanes, never stored).
    pub fn slack(&self) -> u64 {
        2 * self.wq + 2 * self.nr()
    }

    /// Output pixels per `Pixels` tile: two vectors.
    pub fn nr(&self) -> u64 {
        2 * self.lanes
    }

    /// The weight `[oc, icg, kh, kw]` (transposed: `[ic, ocg, kh, kw]`) in
    /// the kernel's order `[group][oc panel][ic][tap][mr]`, zero rows past
    /// `ocg`.
    /// With `pairs`, a slot holds input channels `2k` and `2k + 1` as
    /// two bf16 (the first in the low half; zero past `icg`).
    pub fn pack(&self, w: &[f32]) -> Vec<f32> {
        debug_assert_eq!(self.wpitch, self.mr, "packs are made for the top level");
        let t = self.taps.len() as u64;
        let mut out =
            Vec::with_capacity((self.groups * self.oc_panels * self.kdim() * t * self.mr) as usize);
        let value = |g: u64, oc: u64, ic: u64, tap: u64| {
            let at = if self.transposed {
                ((g * self.icg + ic) * self.ocg + oc) * t + tap
            } else {
                ((g * self.ocg + oc) * self.icg + ic) * t + tap
            };
            if oc < self.ocg && ic < self.icg {
                w[at as usize]
            } else {
                0.0
            }
        };
        for g in 0..self.groups {
            for op in 0..self.oc_panels {
                for k in 0..self.kdim() {
                    for tap in 0..t {
                        for r in 0..self.mr {
                            let oc = op * self.mr + r;
                            let kx = tap % self.kw;
                            out.push(if self.tail && k + 1 == self.kdim() {
                                // Taps `kx` and `kx + 1` of the odd channel
                                // on the even taps (`tail_tap`), zero on
                                // the odd ones (never read).
                                let half = |tap| u32::from(bf16_bits(value(g, oc, 2 * k, tap)));
                                let next = if kx + 1 < self.kw { half(tap + 1) } else { 0 };
                                let word = if self.tail_tap(tap) {
                                    half(tap) | next << 16
                                } else {
                                    0
                                };
                                f32::from_bits(word)
                            } else if self.pairs {
                                let half = |ic| u32::from(bf16_bits(value(g, oc, ic, tap)));
                                f32::from_bits(half(2 * k) | half(2 * k + 1) << 16)
                            } else {
                                value(g, oc, k, tap)
                            });
                        }
                    }
                }
            }
        }
        out
    }

    /// `acc + w·x`: an FMA, or with `pairs` the dot product of the two
    /// words' bf16 pairs.
    fn madd<'ctx>(
        &self,
        e: &Emitter<'_, 'ctx>,
        w: VectorValue<'ctx>,
        x: VectorValue<'ctx>,
        acc: VectorValue<'ctx>,
    ) -> VectorValue<'ctx> {
        if self.pairs {
            e.vdp_bf16(acc, w, x)
        } else {
            e.vfma(w, x, acc)
        }
    }
}

/// Per-step overhead of a pixel tile, in FMA slots, for choosing `mr`:
/// the two input vectors come from L2 in every channel panel's pass over
/// a block (a block of 256 input channels is 256 KiB), so fewer, taller
/// panels pay. With 3 (the loads and the loop alone) 256→64 1×1 convs at
/// 56×56 took 8 channels a tile; with 12 a tile (and the next unit's
/// input prefetched) they ran 0.89-0.92 ms against 0.95-1.01 (one
/// thread, Intel Xeon, docs/performance.md session 19).
const TILE_STEP_OVERHEAD: u64 = 6;

/// Output channels per register tile: the candidate that fits the vector
/// registers (`2·mr` accumulators, two input vectors, one broadcast) and
/// costs least, counting padded rows and the per-step overhead above.
pub fn choose_mr(m: u64, regs: u32, pitch: Option<u64>) -> u64 {
    [1u64, 2, 4, 6, 8, 12]
        .into_iter()
        .filter(|&mr| 2 * mr + 3 <= regs as u64 && fits_pitch(mr, pitch))
        .min_by_key(|&mr| {
            (
                m.div_ceil(mr) * (2 * mr + TILE_STEP_OVERHEAD),
                u64::MAX - mr,
            )
        })
        .unwrap_or(1)
}

/// Whether a register tile of `mr` output channels reads weights packed
/// `pitch` channels a panel (`None`: packed for this tile).
pub fn fits_pitch(mr: u64, pitch: Option<u64>) -> bool {
    pitch.is_none_or(|p| p.is_multiple_of(mr))
}

/// Work units per image a `Channels` conv is split into at least (when it
/// has the rows), so that two threads, or eight, have work.
pub(super) const MIN_UNITS: u64 = 8;

/// Pixel tiles per work unit of a `Pixels` conv at most.
pub const PIXEL_BLOCK: u64 = 8;

/// The cost of a `Channels` tile step relative to a `Pixels` one of the
/// same FMA count, in percent: its weight loads are aligned and its
/// broadcasts fold into the FMAs, where the pixel tile's shifted input
/// loads straddle cache lines. Measured on resnet50's layers (one thread,
/// `resnetc bench --layers --conv-kernel ...`, docs/performance.md): at
/// equal padding the channel tile ran 10-25% faster.
const CHANNELS_COST_PERCENT: u64 = 85;

/// f32s per 64-byte cache line (what a prefetch fetches).
const LINE: u64 = 16;

/// Panels of at least this many weight bytes prefetch the next panel's.
const PREFETCH_PANEL_BYTES: u64 = 128 << 10;

/// `Channels` panels of at least this many weight bytes block their
/// reduction, into blocks of at most `KBLOCK_BYTES` of weights (half of
/// L1), where the unit's accumulators take at most `KBLOCK_MAX_SPILL`.
const KBLOCK_MIN_PANEL: u64 = 96 << 10;
const KBLOCK_BYTES: u64 = 24 << 10;
const KBLOCK_MAX_SPILL: u64 = 48 << 10;

/// The channel tile's estimate on Intel cores for 1×1 convs, relative to
/// the one above (`choose_tiling`).
const INTEL_1X1_CHANNELS_PERCENT: u64 = 130;

/// The tiling of a conv with `ocg` output channels per group over an
/// `oh × ow` output (grid row pitch `wq`), and its output channels per
/// register tile. Costs count vector FMA slots per (input channel, tap)
/// step, padded channels and junk pixels included, plus about three slots
/// of overhead per tile step (loads, loop).
pub fn choose_tiling(
    ocg: u64,
    (oh, ow, wq): (u64, u64, u64),
    (kw, strided): (u64, bool),
    isa: VectorIsa,
    kernel: ConvKernel,
    pitch: Option<u64>,
) -> (Tiling, u64) {
    let mr = choose_mr(ocg, isa.regs, pitch);
    let pixels = (oh * wq).div_ceil(2 * isa.lanes) * ocg.div_ceil(mr) * (2 * mr + 3) * 100;
    let mut channels = choose_channels(ocg, oh, ow, kw, isa, 1, pitch);
    if isa.intel && (kw == 1 || (strided && kw <= 3 && oh * ow >= 28 * 28)) {
        // On the Intel cores measured (Emerald Rapids, Sapphire Rapids)
        // the pixel tile ran 1×1 convs over 28×28 and 56×56 maps, and the
        // strided 3×3 ones onto 28×28, up to a third faster than this
        // estimate says, and 3×3 stride-1 ones slower: the channel tile's
        // estimate is raised for those there (fitted on resnet18's and
        // resnet50's measured tiles, `bench --tune`: 19 of 21 shapes).
        channels = channels.map(|(c, t, v, r)| (c * INTEL_1X1_CHANNELS_PERCENT / 100, t, v, r));
    }
    match (kernel, channels) {
        (ConvKernel::Pixels, _) | (_, None) => (Tiling::Pixels, mr),
        (ConvKernel::Channels, Some((_, _, v, r))) => (Tiling::Channels { r }, v * isa.lanes),
        (ConvKernel::Auto, Some((cost, _, v, r))) if cost < pixels => {
            (Tiling::Channels { r }, v * isa.lanes)
        }
        (ConvKernel::Auto, Some(_)) => (Tiling::Pixels, mr),
    }
}

/// Taps of a kernel row `kw` wide whose weights a `Channels` tile holds at
/// once: the whole row where it is not huge. Groups never straddle rows
/// (a row's taps share their input elements, the next row's do not): for
/// the 7×7 stem, groups of 4 taps ran at 155 GFLOP/s, whole rows at 209.
pub fn tap_group(kw: u64) -> u64 {
    kw.clamp(1, 8)
}

/// The cheapest `Channels` tile `(cost, -r·v, v, r)` with `r` a multiple
/// of `r_step`, for a kernel `kw` taps wide: `r·v` accumulators, the `v`
/// weight vectors of each tap of a group and one broadcast in registers.
pub fn choose_channels(
    ocg: u64,
    oh: u64,
    ow: u64,
    kw: u64,
    isa: VectorIsa,
    r_step: u64,
    pitch: Option<u64>,
) -> Option<(u64, u64, u64, u64)> {
    let g = tap_group(kw);
    (1..=4u64)
        .flat_map(|v| (1..=16u64).map(move |r| (v, r)))
        .filter(|&(v, r)| r * v + g * v < isa.regs as u64 && r.is_multiple_of(r_step))
        .filter(|&(v, _)| fits_pitch(v * isa.lanes, pitch))
        .map(|(v, r)| {
            let cost = oh * ow.div_ceil(r) * ocg.div_ceil(v * isa.lanes) * (r * v + 3);
            (cost * CHANNELS_COST_PERCENT, u64::MAX - r * v, v, r)
        })
        .min()
}

/// Every conv the GEMM kernel runs, with its tiling (`kernel_of` says
/// which tilings each may use, `pitch_of` how its weights are packed where
/// another plan packed them).
pub fn plans(
    graph: &Graph,
    isa: VectorIsa,
    precision: Precision,
    kernel_of: impl Fn(NodeIndex) -> ConvKernel,
    pitch_of: impl Fn(NodeIndex) -> Option<u64>,
) -> HashMap<NodeIndex, GemmConv> {
    graph
        .schedule()
        .into_iter()
        .filter_map(|n| {
            let pitch = pitch_of(n);
            GemmConv::plan(graph, n, isa, precision, kernel_of(n), pitch)
                .or_else(|| super::conv_transpose_plan::plan(graph, n, isa, precision, pitch))
                .map(|p| (n, p))
        })
        .collect()
}

/// Floats per image the arena needs past the memory plan: the largest
/// staging area, and slack for tiles reading past an unstaged input.
pub fn workspace(plans: &HashMap<NodeIndex, GemmConv>) -> u64 {
    plans
        .values()
        .map(|p| p.workspace().max(p.slack()))
        .max()
        .unwrap_or(0)
}

// ---- emission ---------------------------------------------------------

/// Stages input channel `ch` of image `b` (with `pairs`, the pair of
/// channels `ch` of `kdim()` per group): every phase plane, prologue
/// applied, zeros where the padded input is padding.
pub(super) fn stage<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    c: &Ctx<'_, 'ctx>,
    a: &Args<'ctx>,
    n: NodeIndex,
    p: &GemmConv,
    (b, ch): Unit<'ctx>,
) -> Result<(), LlvmError> {
    let (Some(st), Some(fused)) = (&p.staging, conv_fused(&c.graph.node(n).op)) else {
        return Err(LlvmError::Internal("staging an unstaged conv".into()));
    };
    let ops = c.graph.operands(n);
    let (pro, _, _) = fused_operands(c, &ops, fused);
    let (h, w, hq, wq) = (st.h, st.w, st.hq, p.wq);
    let ((sh, sw), (ph, pw)) = (st.stride, st.pad);
    let dst = e.at(a.image(e, c.workspace(e), b), e.mul(ch, e.int(p.plane)));
    let x = (a.image(e, c.view(ops[0]), b), h * w);
    let alone = if st.bf16 {
        Rounding::Bf16
    } else {
        Rounding::None
    };
    let (src, ss, round) = step_source(e, a, x, pro, (p.icg, p.pairs), ch, alone);
    let planes = |e: &mut Emitter<'_, 'ctx>| {
        for (f, &(py, px)) in st.phases.iter().enumerate() {
            let base = e.at(dst, e.int(f as u64 * hq * wq));
            let signed = |v: i64| e.int(v as u64);
            let shift = (signed(py as i64 - ph as i64), signed(px as i64 - pw as i64));
            pad_plane(
                e,
                fused,
                (src, base, ss),
                (h, w),
                (hq, wq),
                (sh, sw),
                shift,
                round,
            );
        }
    };
    if p.tail {
        let k = e.srem(ch, e.int(p.kdim()));
        let paired = e.ult(k, e.int(p.kdim() - 1));
        e.if_else(paired, planes, |e| {
            stage_tail(e, fused, (src, dst, ss), st, wq)
        });
    } else {
        planes(e);
    }
    Ok(())
}

/// Where staging reads reduction step `ch` of the input `x` (`hw` values
/// a channel, `icg` channels a group; `pro`: the prologue's per-channel
/// operands): with `pairs`, channels `2k` and `2k + 1` of the step's
/// group, the second as `Rounding::Pairs`, zero past an odd `icg` (read
/// from the first, then dropped); else channel `ch`, stored as `alone`.
pub(super) fn step_source<'ctx>(
    e: &Emitter<'_, 'ctx>,
    a: &Args<'ctx>,
    (x, hw): (PointerValue<'ctx>, u64),
    pro: Option<(IntValue<'ctx>, IntValue<'ctx>)>,
    (icg, pairs): (u64, bool),
    ch: IntValue<'ctx>,
    alone: Rounding<'ctx>,
) -> (PointerValue<'ctx>, ScaleShift<'ctx>, Rounding<'ctx>) {
    let channel = |ch: IntValue<'ctx>| {
        let ss = pro.map(|(s, t)| (e.load(a.konst(e, s), ch), e.load(a.konst(e, t), ch)));
        (e.at(x, e.mul(ch, e.int(hw))), ss)
    };
    if !pairs {
        let (src, ss) = channel(ch);
        return (src, ss, alone);
    }
    let steps = e.int(icg.div_ceil(2));
    let (g, k) = (e.sdiv(ch, steps), e.srem(ch, steps));
    let first = e.add(e.mul(g, e.int(icg)), e.mul(k, e.int(2)));
    let live = e.ult(e.add(e.mul(k, e.int(2)), e.int(1)), e.int(icg));
    let (src, ss) = channel(first);
    let (x, ss2) = channel(e.pick(live, e.add(first, e.int(1)), first));
    (src, ss, Rounding::Pairs { x, ss: ss2, live })
}

/// Stages the tail pair of a `tail` conv (stride 2 across): its even
/// column phase planes' words are `(x[2j + px], x[2j + px + 1])` of the
/// padded row, i.e. the padded row itself as consecutive bf16, two
/// vectors of it rounded by one `vcvtne2ps2bf16` per 16 words. The odd
/// column phases are not read (the tail reads the even taps only).
fn stage_tail<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    fused: &Fused,
    (src, dst, ss): (PointerValue<'ctx>, PointerValue<'ctx>, ScaleShift<'ctx>),
    st: &Staging,
    wq: u64,
) {
    let (h, w, hq) = (st.h, st.w, st.hq);
    let ((sh, _), (ph, pw)) = (st.stride, st.pad);
    let lanes = e.lanes;
    for (f, &(py, px)) in st.phases.iter().enumerate() {
        if px != 0 {
            continue;
        }
        let plane = e.at(dst, e.int(f as u64 * hq * wq));
        e.for_const(0, hq, |e, i| {
            // Row `iy` of the input, or none (a padding row: every lane
            // masked off, no load).
            let iy = e.add(e.mul(i, e.int(sh)), e.int((py as i64 - ph as i64) as u64));
            let hi = e.pick(e.ult(iy, e.int(h)), e.int(w), e.int(0));
            let row = e.at_unchecked(src, e.mul(iy, e.int(w)));
            let out = e.at(plane, e.mul(i, e.int(wq)));
            for k in 0..wq.div_ceil(lanes) {
                let half = |e: &Emitter<'_, 'ctx>, m: u64| {
                    let c = e.int((((2 * k + m) * lanes) as i64 - pw as i64) as u64);
                    let mask = e.vin_range(e.vindices(c, 0), e.int(0), hi);
                    let v = vprologue_value(e, fused, e.vload_masked(row, c, mask), ss);
                    let v = e.b.build_select(mask, v, e.vzero(), "").expect("select");
                    v.into_vector_value()
                };
                let words = e.vcvt_bf16_halves(half(e, 0), half(e, 1));
                let words = e.b.build_bit_cast(words, e.vty(), "").expect("bitcast");
                let (at, words) = (e.int(k * lanes), words.into_vector_value());
                if (k + 1) * lanes <= wq {
                    e.vstore(out, at, words);
                } else {
                    let mask = e.vin_range(e.vindices(at, 0), e.int(0), e.int(wq));
                    e.vstore_masked(out, at, words, mask);
                }
            }
        });
    }
}

/// A channel's prologue scale and shift, where the conv has a prologue.
pub(super) type ScaleShift<'ctx> = Option<(FloatValue<'ctx>, FloatValue<'ctx>)>;

/// How a staged plane's values are stored: as the f32 the prologue gives,
/// rounded to bf16, or as words of two bf16 (`GemmConv::pairs`) whose
/// high half is another channel's (`x`, with its prologue's `ss`), zero
/// where `live` is false.
#[derive(Clone, Copy)]
pub(super) enum Rounding<'ctx> {
    None,
    Bf16,
    Pairs {
        x: PointerValue<'ctx>,
        ss: ScaleShift<'ctx>,
        live: IntValue<'ctx>,
    },
}

/// Writes one staged plane `dst` (`hq × wq`): `dst[i][j]` is the input
/// `src[i·sh + shift_y][j·sw + shift_x]` (an `h × w` plane) with the
/// prologue applied (`ss`: its per-channel scale and shift), or zero where
/// that lies outside the input; rounded or paired as `round` says.
#[allow(clippy::too_many_arguments)]
pub(super) fn pad_plane<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    fused: &Fused,
    (src, dst, ss): (PointerValue<'ctx>, PointerValue<'ctx>, ScaleShift<'ctx>),
    (h, w): (u64, u64),
    (hq, wq): (u64, u64),
    (sh, sw): (u64, u64),
    (shift_y, shift_x): (IntValue<'ctx>, IntValue<'ctx>),
    round: Rounding<'ctx>,
) {
    let (i0, i1) = valid_range(e, hq, sh, shift_y, h);
    let (j0, j1) = valid_range(e, wq, sw, shift_x, w);
    let zero_row = |e: &mut Emitter<'_, 'ctx>, row: PointerValue<'ctx>, lo, hi| {
        e.for_range(lo, hi, |e, j| e.store(row, j, e.f32(0.0)));
    };
    let (z, full) = (e.int(0), e.int(wq));
    e.for_range(z, i0, |e, i| {
        zero_row(e, e.at(dst, e.mul(i, e.int(wq))), z, full)
    });
    e.for_range(i0, i1, |e, i| {
        let row = e.at(dst, e.mul(i, e.int(wq)));
        let iy = e.add(e.mul(i, e.int(sh)), shift_y);
        let xrow = e.at(src, e.mul(iy, e.int(w)));
        // The pair's second channel, same row.
        let row2 = match round {
            Rounding::Pairs { x, ss, live } => Some((e.at(x, e.mul(iy, e.int(w))), ss, live)),
            _ => None,
        };
        zero_row(e, row, z, j0);
        if sw == 1 {
            // Contiguous: whole vectors, then one masked.
            let ix0 = e.add(j0, shift_x);
            let (src, dst) = (e.at(xrow, ix0), e.at(row, j0));
            let n = e.sub(j1, j0);
            let lanes = e.int(e.lanes);
            let src2 = row2.map(|(r, ss, live)| (e.at(r, ix0), ss, live));
            // The value stored for the lanes at `at` (`mask`: those read).
            let value = |e: &Emitter<'_, 'ctx>, at, mask: Option<VectorValue<'ctx>>| {
                let load = |src| match mask {
                    Some(m) => e.vload_masked(src, at, m),
                    None => e.vload(src, at),
                };
                let hi = src2.map(|(src2, ss2, live)| (load(src2), ss2, live));
                staged_value(e, fused, round, (load(src), ss), hi)
            };
            let full = e.sdiv(n, lanes);
            e.for_range(z, full, |e, k| {
                let at = e.mul(k, lanes);
                let v = value(e, at, None);
                e.vstore(dst, at, v);
            });
            let at = e.mul(full, lanes);
            let mask = e.vin_range(e.vindices(at, 0), z, n);
            let v = value(e, at, Some(mask));
            e.vstore_masked(dst, at, v, mask);
        } else if sw == 2 {
            // Two vectors of the row, their even lanes: 16 outputs a step,
            // reading only the input's columns (masked past its ends).
            let lanes = e.int(e.lanes);
            let steps = e.sdiv(e.add(e.sub(j1, j0), e.int(e.lanes - 1)), lanes);
            e.for_range(z, steps, |e, k| {
                let j = e.add(j0, e.mul(k, lanes));
                let ix = e.add(e.mul(j, e.int(2)), shift_x);
                let even = |e: &Emitter<'_, 'ctx>, src| {
                    let [a, b] = [0, 1].map(|m| {
                        let at = e.add(ix, e.int(m * e.lanes));
                        let mask = e.vin_range(e.vindices(at, 0), z, e.int(w));
                        e.vload_masked(src, at, mask)
                    });
                    e.vevery_other(a, b, 0)
                };
                let hi = row2.map(|(src2, ss2, live)| (even(e, src2), ss2, live));
                let v = staged_value(e, fused, round, (even(e, xrow), ss), hi);
                let mask = e.vin_range(e.vindices(j, 0), z, j1);
                e.vstore_masked(row, j, v, mask);
            });
        } else {
            e.for_range(j0, j1, |e, j| {
                let ix = e.add(e.mul(j, e.int(sw)), shift_x);
                let v = prologue_value(e, fused, e.load(xrow, ix), ss);
                let v = match (row2, round) {
                    (Some((xrow2, ss2, live)), _) => {
                        let hi = prologue_value(e, fused, e.load(xrow2, ix), ss2);
                        let hi = e.b.build_select(live, hi, e.f32(0.0), "");
                        let hi = hi.expect("select").into_float_value();
                        e.pack_bf16_pair(v, hi)
                    }
                    (None, Rounding::Bf16) => e.round_bf16(v),
                    _ => v,
                };
                e.store(row, j, v);
            });
        }
        zero_row(e, row, j1, full);
    });
    e.for_range(i1, e.int(hq), |e, i| {
        zero_row(e, e.at(dst, e.mul(i, e.int(wq))), z, full)
    });
}

/// A staged vector from the input values `lo` (with the prologue's
/// `ss`) and, for pairs, the second channel's `hi` (zero where `live` is
/// false), rounded as `round` says.
fn staged_value<'ctx>(
    e: &Emitter<'_, 'ctx>,
    fused: &Fused,
    round: Rounding<'ctx>,
    (lo, ss): (VectorValue<'ctx>, ScaleShift<'ctx>),
    hi: Option<(VectorValue<'ctx>, ScaleShift<'ctx>, IntValue<'ctx>)>,
) -> VectorValue<'ctx> {
    let v = vprologue_value(e, fused, lo, ss);
    match (hi, round) {
        (Some((hi, ss2, live)), _) => {
            let hi = vprologue_value(e, fused, hi, ss2);
            let hi = e.b.build_select(live, hi, e.vzero(), "").expect("select");
            e.vcvt_bf16_pairs(v, hi.into_vector_value())
        }
        (None, Rounding::Bf16) => e.vround_bf16(v),
        _ => v,
    }
}

/// The fused prologue and epilogue of a conv or transposed conv.
pub(super) fn conv_fused(op: &Op) -> Option<&Fused> {
    match op {
        Op::Conv { fused, .. } | Op::ConvTranspose { fused, .. } => Some(fused),
        _ => None,
    }
}

/// Work unit `t` (of `batch × units()`) of the conv's tile kernel; run
/// `by_image`, image `b`'s units are `[b·units(), (b + 1)·units())`.
pub(super) fn gemm<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    c: &Ctx<'_, 'ctx>,
    a: &Args<'ctx>,
    n: NodeIndex,
    p: &GemmConv,
    t: IntValue<'ctx>,
    by_image: bool,
) -> Result<(), LlvmError> {
    let Some(fused) = conv_fused(&c.graph.node(n).op) else {
        return Err(LlvmError::Internal("a GEMM tile of a non-conv".into()));
    };
    match p.tiling {
        Tiling::Pixels => {
            let per = e.int(p.units());
            let unit = (e.sdiv(t, per), e.srem(t, per));
            gemm_pixels(e, c, a, n, p, fused, unit)
        }
        Tiling::Channels { r } => {
            let unit = p.channel_unit(e, a.batch, t, by_image);
            gemm_channels(e, c, a, n, p, fused, r, unit)
        }
    }
    Ok(())
}

impl GemmConv {
    /// Bytes of the packed weight.
    fn weight_bytes(&self) -> u64 {
        4 * self.groups * self.oc_panels * self.kdim() * self.taps.len() as u64 * self.mr
    }

    /// Where register tile `panel` (of `groups · oc_panels`) starts in the
    /// packed weight: its stored panel, then its rows within it.
    fn panel_weights<'ctx>(
        &self,
        e: &Emitter<'_, 'ctx>,
        wt: PointerValue<'ctx>,
        panel: IntValue<'ctx>,
    ) -> PointerValue<'ctx> {
        let per = e.int(self.kdim() * self.taps.len() as u64 * self.wpitch);
        if self.wpitch == self.mr {
            return e.at(wt, e.mul(panel, per));
        }
        // Stored panels per group, and register tiles per stored panel.
        let (stored, k) = (self.ocg.div_ceil(self.wpitch), self.wpitch / self.mr);
        let g = e.sdiv(panel, e.int(self.oc_panels));
        let local = e.srem(panel, e.int(self.oc_panels));
        let at = e.add(e.mul(g, e.int(stored)), e.sdiv(local, e.int(k)));
        let rows = e.mul(e.srem(local, e.int(k)), e.int(self.mr));
        e.at(wt, e.add(e.mul(at, per), rows))
    }

    /// Bytes of one image's source (staged or not).
    fn source_bytes(&self) -> u64 {
        4 * self.groups * self.kdim() * self.plane
    }

    /// `(image, channel panel, row chunk)` of unit `t` of a `Channels`
    /// conv. Consecutive units (which one thread runs, the pool splitting
    /// the range) share the larger operand, so it is streamed once and the
    /// smaller one is re-read from cache: panel outermost where the weights
    /// outweigh the batch's inputs (late layers, large batches), so a
    /// thread keeps a panel's weights across images and rows; else image
    /// and rows outermost, so a thread reads only its rows of the input and
    /// re-reads the small weights. Image by image, the image is outermost.
    fn channel_unit<'ctx>(
        &self,
        e: &Emitter<'_, 'ctx>,
        batch: IntValue<'ctx>,
        t: IntValue<'ctx>,
        by_image: bool,
    ) -> (IntValue<'ctx>, IntValue<'ctx>, IntValue<'ctx>) {
        let (chunks, panels) = (e.int(self.row_chunks), e.int(self.groups * self.oc_panels));
        // t = (image · chunks + chunk) · panels + panel
        let rest = e.sdiv(t, panels);
        let by_inputs = (
            e.sdiv(rest, chunks),
            e.srem(t, panels),
            e.srem(rest, chunks),
        );
        if by_image {
            return by_inputs;
        }
        // t = (panel · batch + image) · chunks + chunk
        let rest = e.sdiv(t, chunks);
        let by_weights = (e.srem(rest, batch), e.sdiv(rest, batch), e.srem(t, chunks));
        let inputs = e.mul(batch, e.int(self.source_bytes()));
        let w = e.ult(inputs, e.int(self.weight_bytes()));
        (
            e.pick(w, by_weights.0, by_inputs.0),
            e.pick(w, by_weights.1, by_inputs.1),
            e.pick(w, by_weights.2, by_inputs.2),
        )
    }
}

/// One block of pixel tiles of one group of image `b`, every output
/// channel of the group: `MR × 2·lanes` accumulators per register tile, the
/// epilogue in registers, one (masked where the tile leaves a row) store.
fn gemm_pixels<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    c: &Ctx<'_, 'ctx>,
    a: &Args<'ctx>,
    n: NodeIndex,
    p: &GemmConv,
    fused: &Fused,
    (b, u): Unit<'ctx>,
) {
    let ops = c.graph.operands(n);
    let (_, bias, residual) = fused_operands(c, &ops, fused);
    let (mr, t, nr, lanes) = (p.mr, p.taps.len() as u64, p.nr(), p.lanes);
    let pitch = p.wpitch;
    let blocks = e.int(p.panels.div_ceil(p.block));
    let g = e.sdiv(u, blocks);
    let t0 = e.mul(e.srem(u, blocks), e.int(p.block));
    let t1 = e.smin(e.add(t0, e.int(p.block)), e.int(p.panels));
    let src = match p.staging {
        Some(_) => a.image(e, c.workspace(e), b),
        None => a.image(e, c.view(ops[0]), b),
    };
    let xgroup = e.at(src, e.mul(g, e.int(p.kdim() * p.plane)));
    let yb = a.image(e, c.view(n), b);
    let zb = residual.map(|r| a.image(e, c.view(r), b));
    let slots: Vec<[PointerValue<'ctx>; 2]> = (0..mr).map(|_| [e.vslot(), e.vslot()]).collect();
    let wt = a.konst(e, c.konst(ops[1]));
    // Channel panel outer, pixel tile inner: the panel's weights stay in
    // L1 across the block's tiles, and the stores of one panel go to `mr`
    // planes rather than to every plane of the output.
    e.for_const(0, p.oc_panels, |e, op| {
        e.for_range(t0, t1, |e, tile| {
            let q0 = e.mul(tile, e.int(nr));
            let xg = e.at(xgroup, q0);
            for s in slots.iter().flatten() {
                e.vset(*s, e.vzero());
            }
            let panel = e.add(e.mul(g, e.int(p.oc_panels)), op);
            let wp = p.panel_weights(e, wt, panel);
            // Tile-panel `tp` of this unit prefetches line `tp` of every
            // input plane of the next unit's block (the one this thread
            // runs next) into L2: spread over the whole unit, that stream
            // overlaps compute, where the first panel's pass over the block
            // otherwise waits on it.
            let lines = (p.block * nr).div_ceil(LINE);
            let tp = e.add(e.mul(op, e.sub(t1, t0)), e.sub(tile, t0));
            let tp = e.smin(tp, e.int(lines - 1));
            let ahead = e.add(e.mul(e.sub(t1, tile), e.int(nr)), e.mul(tp, e.int(LINE)));
            let reduce = |e: &mut Emitter<'_, 'ctx>, ic: IntValue<'ctx>, tail: bool| {
                let xc = e.at(xg, e.mul(ic, e.int(p.plane)));
                let wk = e.at(wp, e.mul(ic, e.int(t * pitch)));
                e.prefetch_l2(e.at_unchecked(xc, ahead));
                let mut acc: Vec<[VectorValue<'ctx>; 2]> =
                    slots.iter().map(|s| [e.vget(s[0]), e.vget(s[1])]).collect();
                let taps = p.taps.iter().enumerate();
                for (ti, &off) in taps.filter(|&(ti, _)| !tail || p.tail_tap(ti as u64)) {
                    let x0 = e.vload(xc, e.int(off));
                    let x1 = e.vload(xc, e.int(off + lanes));
                    for (r, pair) in acc.iter_mut().enumerate() {
                        let wv = e.vsplat(e.load(wk, e.int(ti as u64 * pitch + r as u64)));
                        pair[0] = p.madd(e, wv, x0, pair[0]);
                        pair[1] = p.madd(e, wv, x1, pair[1]);
                    }
                }
                for (s, v) in slots.iter().zip(&acc) {
                    e.vset(s[0], v[0]);
                    e.vset(s[1], v[1]);
                }
            };
            e.for_const(0, p.full_pairs(), |e, ic| reduce(e, ic, false));
            if p.tail {
                let ic = e.int(p.kdim() - 1);
                reduce(e, ic, true);
            }
            let local0 = e.mul(op, e.int(mr));
            let tile = Tile {
                p,
                fused,
                bias,
                yb,
                zb,
                oc0: e.add(e.mul(g, e.int(p.ocg)), local0),
                local0,
                acc: slots.iter().map(|s| [e.vget(s[0]), e.vget(s[1])]).collect(),
            };
            let ohw = p.oh * p.ow;
            if p.wq == p.ow {
                // Output pixels are the grid's: one store per vector, masked
                // only in the last tile.
                let full = e.ult(e.add(q0, e.int(nr)), e.int(ohw + 1));
                e.if_else(
                    full,
                    |e| tile.store(e, a, |e, v| (e.add(q0, e.int(v * lanes)), None)),
                    |e| {
                        tile.store(e, a, |e, v| {
                            let idx = e.vindices(q0, v * lanes);
                            let m = e.vin_range(idx, e.int(0), e.int(ohw));
                            (e.add(q0, e.int(v * lanes)), Some(m))
                        })
                    },
                );
            } else {
                // The tile spans grid rows: per output row, the lanes of that
                // row shifted back by the junk columns before it.
                let wq = e.int(p.wq);
                let lo = e.sdiv(q0, wq);
                let hi = e.smin(
                    e.add(e.sdiv(e.add(q0, e.int(nr - 1)), wq), e.int(1)),
                    e.int(p.oh),
                );
                e.for_range(lo, hi, |e, oy| {
                    let first = e.mul(oy, wq);
                    let last = e.add(first, e.int(p.ow));
                    let shift = e.mul(oy, e.int(p.wq - p.ow));
                    tile.store(e, a, |e, v| {
                        let idx = e.vindices(q0, v * lanes);
                        let m = e.vin_range(idx, first, last);
                        (e.sub(e.add(q0, e.int(v * lanes)), shift), Some(m))
                    })
                });
            }
        })
    });
}

/// One channel panel (`mr = lanes·V` output channels of one group) over
/// one range of output rows of image `b`: per `r`-pixel strip of a row,
/// `r × V` vector accumulators fed by `V` weight vectors and `r` input
/// broadcasts per (input channel, tap), then the epilogue in registers on
/// `lanes × lanes` transposed blocks and one contiguous store per channel
/// and block. The panel's weights stay in cache across the strips.
#[allow(clippy::too_many_arguments)]
fn gemm_channels<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    c: &Ctx<'_, 'ctx>,
    a: &Args<'ctx>,
    n: NodeIndex,
    p: &GemmConv,
    fused: &Fused,
    r: u64,
    (b, panel, chunk): (IntValue<'ctx>, IntValue<'ctx>, IntValue<'ctx>),
) {
    let ops = c.graph.operands(n);
    let (_, bias, residual) = fused_operands(c, &ops, fused);
    let (mr, t, nv) = (p.mr, p.taps.len() as u64, p.mr / p.lanes);
    let pitch = p.wpitch;
    let lanes = p.lanes;
    let g = e.sdiv(panel, e.int(p.oc_panels));
    let local0 = e.mul(e.srem(panel, e.int(p.oc_panels)), e.int(mr));
    let oc0 = e.add(e.mul(g, e.int(p.ocg)), local0);
    let src = match p.staging {
        Some(_) => a.image(e, c.workspace(e), b),
        None => a.image(e, c.view(ops[0]), b),
    };
    let xg = e.at(src, e.mul(g, e.int(p.kdim() * p.plane)));
    let yb = a.image(e, c.view(n), b);
    let zb = residual.map(|z| a.image(e, c.view(z), b));
    let bias = bias.map(|k| a.konst(e, k));
    let wp = p.panel_weights(e, a.konst(e, c.konst(ops[1])), panel);
    let slots: Vec<PointerValue<'ctx>> = (0..r * nv).map(|_| e.vslot()).collect();
    let ohw = p.oh * p.ow;
    let strips = p.ow.div_ceil(r);
    // Reduction blocks (`choose_kblock`): the strips' accumulators wait in
    // `spill` between blocks.
    let blocks = p.kdim() / p.kc;
    let spill = (blocks > 1).then(|| e.stack_array(p.spill_floats(r)));
    for ph in &p.row_phases {
        let rows = ph.rows.div_ceil(p.row_chunks);
        // Where a panel's weights come from memory (they outgrow L2 with
        // the layer's, read once per inference), the first row of a unit
        // waits on them and the others find them in cache: each row
        // prefetches a share of the next panel's (the next unit's, which
        // this thread runs next), so the memory stream overlaps compute.
        // (Not where tiles share stored panels: the next tile's weights
        // are then not the next panel's bytes.)
        let prefetch = (rows > 1 && p.panel_bytes() >= PREFETCH_PANEL_BYTES && pitch == mr)
            .then(|| ((t * mr).div_ceil(LINE), rows));
        let i0 = e.mul(chunk, e.int(rows));
        let i1 = e.smin(e.add(i0, e.int(rows)), e.int(ph.rows));
        e.for_const(0, blocks, |e, kb| {
            e.for_range(i0, i1, |e, i| {
                let oy = e.add(e.mul(i, e.int(ph.step)), e.int(ph.first));
                e.for_const(0, strips, |e, s| {
                    let ox0 = e.mul(s, e.int(r));
                    let xq = e.at(
                        xg,
                        e.add(e.mul(i, e.int(ph.row_pitch)), e.mul(s, e.int(p.strip_cols))),
                    );
                    let saved = spill.map(|m| {
                        let strip = e.add(e.mul(e.sub(i, i0), e.int(strips)), s);
                        e.at(m, e.mul(strip, e.int(r * nv * lanes)))
                    });
                    let zero = |e: &mut Emitter<'_, 'ctx>| {
                        for s in &slots {
                            e.vset(*s, e.vzero());
                        }
                    };
                    match saved {
                        None => zero(e),
                        Some(m) => e.if_else(e.ult(kb, e.int(1)), zero, |e| {
                            for (k, s) in slots.iter().enumerate() {
                                e.vset(*s, e.vload(m, e.int(k as u64 * lanes)));
                            }
                        }),
                    }
                    let ic0 = e.mul(kb, e.int(p.kc));
                    let reduce = |e: &mut Emitter<'_, 'ctx>, ic: IntValue<'ctx>, tail: bool| {
                        let xc = e.at(xq, e.mul(ic, e.int(p.plane)));
                        let wk = e.at(wp, e.mul(ic, e.int(t * pitch)));
                        if let Some((lines, every)) = prefetch {
                            // This row's share of the next panel's weights for
                            // this input channel: lines `q, q + rows, ...`.
                            let next = e.at(wk, e.int(p.kdim() * t * mr));
                            let q = e.sub(i, i0);
                            for k in 0..lines.div_ceil(every) {
                                let line = e.add(q, e.int(k * every));
                                e.prefetch_l2(e.at_unchecked(next, e.mul(line, e.int(LINE))));
                            }
                        }
                        let mut acc: Vec<VectorValue<'ctx>> =
                            slots.iter().map(|s| e.vget(*s)).collect();
                        // Per group of taps (a row of the kernel): its weight
                        // vectors in registers, then each input element the
                        // group reads broadcast once and fed to every (tap,
                        // pixel) using it. Emitted tap by tap, LLVM merges the
                        // repeated broadcasts of neighbouring taps itself and
                        // keeps them all live: a 3×3 32 × 14 tile spilled a
                        // register per FMA.
                        let uses: Vec<&(u64, Vec<(u64, u64)>)> = ph
                            .uses
                            .iter()
                            .filter(|u| !tail || p.tail_tap(u.0))
                            .collect();
                        let rows = uses.chunk_by(|x, y| x.0 / p.kw == y.0 / p.kw);
                        for group in rows.flat_map(|row| row.chunks(tap_group(p.kw) as usize)) {
                            let wv: Vec<Vec<VectorValue<'ctx>>> = group
                                .iter()
                                .map(|(ti, _)| {
                                    (0..nv)
                                        .map(|v| e.vload(wk, e.int(ti * pitch + v * lanes)))
                                        .collect()
                                })
                                .collect();
                            let mut reads: Vec<(u64, usize, u64)> = group
                                .iter()
                                .enumerate()
                                .flat_map(|(gi, (_, uses))| {
                                    uses.iter().map(move |&(j, o)| (o, gi, j))
                                })
                                .collect();
                            reads.sort_unstable();
                            for same in reads.chunk_by(|x, y| x.0 == y.0) {
                                let xb = e.vsplat(e.load(xc, e.int(same[0].0)));
                                for &(_, gi, j) in same {
                                    let px = &mut acc[(j * nv) as usize..((j + 1) * nv) as usize];
                                    for (a, w) in px.iter_mut().zip(&wv[gi]) {
                                        *a = p.madd(e, *w, xb, *a);
                                    }
                                }
                            }
                        }
                        for (s, v) in slots.iter().zip(&acc) {
                            e.vset(*s, *v);
                        }
                    };
                    // The tail pair (`tail`: never with reduction blocks)
                    // after the others.
                    let end = e.add(ic0, e.int(p.kc - u64::from(p.tail)));
                    e.for_range(ic0, end, |e, ic| reduce(e, ic, false));
                    if p.tail {
                        let ic = e.int(p.kdim() - 1);
                        reduce(e, ic, true);
                    }
                    // Epilogue: each lanes × lanes block of (pixel, channel)
                    // accumulators is transposed in registers, so every channel's
                    // pixels are one contiguous (masked at a row's end) vector in
                    // its plane.
                    let epilogue = |e: &mut Emitter<'_, 'ctx>| {
                        let acc: Vec<VectorValue<'ctx>> =
                            slots.iter().map(|s| e.vget(*s)).collect();
                        let pix0 = e.add(e.mul(oy, e.int(p.ow)), ox0);
                        let end = e.smin(e.add(ox0, e.int(r)), e.int(p.ow));
                        for pb in 0..r.div_ceil(lanes) {
                            let full = (pb + 1) * lanes <= r && p.ow.is_multiple_of(r);
                            let mask = (!full).then(|| {
                                let ox = e.vindices(ox0, pb * lanes);
                                e.vin_range(ox, e.int(0), end)
                            });
                            let at0 = e.add(pix0, e.int(pb * lanes));
                            for v in 0..nv {
                                let rows: Vec<VectorValue<'ctx>> = (0..lanes)
                                    .map(|l| {
                                        let j = pb * lanes + l;
                                        if j < r {
                                            acc[(j * nv + v) as usize]
                                        } else {
                                            e.vzero()
                                        }
                                    })
                                    .collect();
                                for (l, col) in e.vtranspose(&rows).into_iter().enumerate() {
                                    let lane = v * lanes + l as u64;
                                    let store = |e: &mut Emitter<'_, 'ctx>| {
                                        let oc = e.add(oc0, e.int(lane));
                                        let at = e.add(e.mul(oc, e.int(ohw)), at0);
                                        let out = Out { y: yb, z: zb, bias };
                                        epilogue_store(e, fused, &out, col, oc, at, mask);
                                    };
                                    if p.ocg.is_multiple_of(mr) {
                                        store(e);
                                    } else {
                                        let live = e.ult(e.add(local0, e.int(lane)), e.int(p.ocg));
                                        e.if_else(live, store, |_| {});
                                    }
                                }
                            }
                        }
                    };
                    match saved {
                        None => epilogue(e),
                        Some(m) => e.if_else(
                            e.ult(kb, e.int(blocks - 1)),
                            |e| {
                                for (k, s) in slots.iter().enumerate() {
                                    e.vstore(m, e.int(k as u64 * lanes), e.vget(*s));
                                }
                            },
                            epilogue,
                        ),
                    }
                });
            });
        });
    }
}

/// Where a tile's epilogue writes and reads: the output and residual (the
/// same index in both) and the bias array.
pub(super) struct Out<'ctx> {
    pub y: PointerValue<'ctx>,
    pub z: Option<PointerValue<'ctx>>,
    pub bias: Option<PointerValue<'ctx>>,
}

/// Applies the epilogue to vector `x` of output channel `oc` and stores it
/// at `y[idx..]` (masked when `mask` is given); returns what it stored.
pub(super) fn epilogue_store<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    fused: &Fused,
    out: &Out<'ctx>,
    x: VectorValue<'ctx>,
    oc: IntValue<'ctx>,
    idx: IntValue<'ctx>,
    mask: Option<VectorValue<'ctx>>,
) -> VectorValue<'ctx> {
    let x = epilogue_value(e, fused, out.bias, x, oc, |e| {
        let z = out.z.expect("add operand");
        match mask {
            Some(m) => e.vload_masked(z, idx, m),
            None => e.vload(z, idx),
        }
    });
    match mask {
        Some(m) => e.vstore_masked(out.y, idx, x, m),
        None => e.vstore(out.y, idx, x),
    }
    x
}

/// The epilogue of vector `x` of output channel `oc`: bias, the residual
/// (`residual` loads it where the epilogue adds it) and activation, in
/// order.
pub(super) fn epilogue_value<'ctx>(
    e: &Emitter<'_, 'ctx>,
    fused: &Fused,
    bias: Option<PointerValue<'ctx>>,
    mut x: VectorValue<'ctx>,
    oc: IntValue<'ctx>,
    residual: impl Fn(&Emitter<'_, 'ctx>) -> VectorValue<'ctx>,
) -> VectorValue<'ctx> {
    for step in &fused.epilogue {
        x = match step {
            EpilogueStep::Bias => {
                let bias = bias.expect("bias operand");
                e.vadd(x, e.vsplat(e.load(bias, oc)))
            }
            EpilogueStep::Add => e.vadd(x, residual(e)),
            EpilogueStep::Act(f) => e.vact(x, *f),
        };
    }
    x
}

/// A finished register tile and where its epilogue reads and writes.
struct Tile<'a, 'ctx> {
    p: &'a GemmConv,
    fused: &'a Fused,
    bias: Option<IntValue<'ctx>>,
    yb: PointerValue<'ctx>,
    zb: Option<PointerValue<'ctx>>,
    /// First output channel of the tile, in the model and in its group.
    oc0: IntValue<'ctx>,
    local0: IntValue<'ctx>,
    acc: Vec<[VectorValue<'ctx>; 2]>,
}

impl<'ctx> Tile<'_, 'ctx> {
    /// Epilogue and store of every row; `at(v)` gives vector `v`'s index in
    /// the output plane and its lane mask (`None`: all lanes).
    fn store(
        &self,
        e: &mut Emitter<'_, 'ctx>,
        a: &Args<'ctx>,
        at: impl Fn(&Emitter<'_, 'ctx>, u64) -> (IntValue<'ctx>, Option<VectorValue<'ctx>>),
    ) {
        let ohw = self.p.oh * self.p.ow;
        for (r, vals) in self.acc.iter().enumerate() {
            let row = |e: &mut Emitter<'_, 'ctx>| {
                let oc = e.add(self.oc0, e.int(r as u64));
                let yplane = e.at(self.yb, e.mul(oc, e.int(ohw)));
                let zplane = self.zb.map(|z| e.at(z, e.mul(oc, e.int(ohw))));
                for (v, &val) in vals.iter().enumerate() {
                    let (idx, mask) = at(e, v as u64);
                    let out = Out {
                        y: yplane,
                        z: zplane,
                        bias: self.bias.map(|b| a.konst(e, b)),
                    };
                    epilogue_store(e, self.fused, &out, val, oc, idx, mask);
                }
            };
            if self.p.ocg.is_multiple_of(self.p.mr) {
                row(e);
            } else {
                let live = e.ult(e.add(self.local0, e.int(r as u64)), e.int(self.p.ocg));
                e.if_else(live, row, |_| {});
            }
        }
    }
}
