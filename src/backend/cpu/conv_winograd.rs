//! Winograd convolution F(m×m, 3×3) for 3×3 stride-1 convs.
//!
//! An `m × m` output tile is `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A` for the
//! `α × α` input patch `d` around it (`α = m + 2`): `α²` products per
//! (input channel, output channel, tile) instead of `9·m²`, 4× fewer
//! multiplications for F(4×4) and 2.25× for F(2×2). The work splits into
//! three parts:
//!
//! - the filter transform `U = G g Gᵀ`, done in f64 when the constants are
//!   laid out (bind time, like BN folding), packed `[ξ][oc panel][ic][mr]`
//!   for the GEMM's channel vectors;
//! - the input transform (one unit per input channel): the channel is
//!   staged zero-padded with the prologue applied (as the direct kernels
//!   stage it), then `Bᵀ d B` is computed for `lanes` tiles of a tile row at
//!   once (each patch row read as `m` interleaved vectors) and stored as
//!   `V[ξ][ic][tile]`;
//! - `α²` GEMMs `M_ξ = U_ξ V_ξ` with the direct kernels' channel tile
//!   (`lanes·v` output channels as vectors × `r` tiles as broadcasts), each
//!   tile's `α²` results kept in a stack scratch, then the output transform
//!   `Aᵀ M A` in registers, a transpose to pixel vectors and the fused
//!   epilogue (bias, residual add, activation) on the masked stores of each
//!   tile row: the GEMM results never go to memory as a tensor.

use super::conv_gemm::{
    conv_fused, epilogue_store, epilogue_value, pad_plane, step_source, ConvShape, Out, Rounding,
    MIN_UNITS,
};
use super::lower::{fused_operands, Args, Ctx, Unit};
use crate::backend::llvm::emit::Emitter;
use crate::backend::llvm::VectorIsa;
use crate::ir::op::{Fused, Op};
use crate::ir::Graph;
use crate::precision::bf16_bits;
use inkwell::values::{IntValue, PointerValue, VectorValue};
use petgraph::stable_graph::NodeIndex;

/// Which convolution algorithm the CPU back end uses for the convs that can
/// run either way: the cost model's choice, or one forced for every conv.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConvAlgo {
    #[default]
    Auto,
    Direct,
    /// F(4×4, 3×3) wherever eligible.
    Winograd,
    /// F(2×2, 3×3) wherever eligible (for comparisons and accuracy).
    Winograd2,
}

/// The transform matrices of F(m×m, 3×3): `Bᵀ` (α × α), `G` (α × 3) and
/// `Aᵀ` (m × α), for the interpolation points 0, ±1, ±2 (F(4×4)) or 0, ±1
/// (F(2×2)) and ∞.
pub struct Transform {
    pub bt: Vec<Vec<f64>>,
    pub g: Vec<[f64; 3]>,
    pub at: Vec<Vec<f64>>,
}

impl Transform {
    pub fn of(m: u64) -> Transform {
        match m {
            2 => Transform {
                bt: vec![
                    vec![1.0, 0.0, -1.0, 0.0],
                    vec![0.0, 1.0, 1.0, 0.0],
                    vec![0.0, -1.0, 1.0, 0.0],
                    vec![0.0, 1.0, 0.0, -1.0],
                ],
                g: vec![
                    [1.0, 0.0, 0.0],
                    [0.5, 0.5, 0.5],
                    [0.5, -0.5, 0.5],
                    [0.0, 0.0, 1.0],
                ],
                at: vec![vec![1.0, 1.0, 1.0, 0.0], vec![0.0, 1.0, -1.0, -1.0]],
            },
            _ => Transform {
                bt: vec![
                    vec![4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
                    vec![0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
                    vec![0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
                    vec![0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
                    vec![0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
                    vec![0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
                ],
                g: vec![
                    [1.0 / 4.0, 0.0, 0.0],
                    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
                    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
                    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
                    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
                    [0.0, 0.0, 1.0],
                ],
                at: vec![
                    vec![1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
                    vec![0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
                    vec![0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
                    vec![0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
                ],
            },
        }
    }

    /// `G g Gᵀ` of one 3×3 filter (row-major), `α × α` row-major, in f64.
    pub fn filter(&self, g: &[f32]) -> Vec<f64> {
        let a = self.g.len();
        // t = G g: α × 3
        let t: Vec<[f64; 3]> = self
            .g
            .iter()
            .map(|row| {
                let mut o = [0.0; 3];
                for (c, oc) in o.iter_mut().enumerate() {
                    *oc = (0..3).map(|k| row[k] * g[k * 3 + c] as f64).sum();
                }
                o
            })
            .collect();
        let mut u = vec![0.0; a * a];
        for i in 0..a {
            for j in 0..a {
                u[i * a + j] = (0..3).map(|k| t[i][k] * self.g[j][k]).sum();
            }
        }
        u
    }
}

/// The plan of one Winograd conv (groups 1, 3×3, stride 1, dilation 1).
///
/// The tile grid (`th × tw` tiles) is cut into blocks of `kr` tile rows ×
/// `c` tile columns (`c ≤ lanes`: a block row is one vector of the input
/// transform), `r = kr·c` tiles each. A GEMM unit is one block and a group
/// of output-channel panels: it transforms its block's input for every
/// input channel into its own slice of the workspace, then runs the GEMMs
/// of its panels on it while it is hot in cache, and the output transform.
#[derive(Clone, Debug)]
pub struct WinoConv {
    /// Output tile side: 4 (F(4×4)) or 2 (F(2×2)).
    pub m: u64,
    pub lanes: u64,
    pub ic: u64,
    pub oc: u64,
    /// Channel vectors per register tile.
    pub v: u64,
    /// Tile rows and columns per block.
    pub kr: u64,
    pub c: u64,
    /// Register tiles over the output channels: `ceil(oc / (v·lanes))`.
    pub panels: u64,
    /// Output channels per panel of the packed weight: `v·lanes`, or a
    /// multiple of it where this plan reads weights packed for a wider
    /// vector unit (as `GemmConv::wpitch`).
    pub wpitch: u64,
    /// Panel groups: units per block (more than one where the blocks alone
    /// leave fewer than the direct kernels' `MIN_UNITS`; then the input
    /// transform is `shared`).
    pub groups: u64,
    pub h: u64,
    pub w: u64,
    pub oh: u64,
    pub ow: u64,
    pub pad: (u64, u64),
    /// The tile grid.
    pub th: u64,
    pub tw: u64,
    /// bf16 on AVX512-BF16 (`conv_gemm::reads_pairs`): the transformed
    /// input and filter are rounded to bf16 and stored as words of two
    /// input channels' values, and the GEMMs reduce over channel pairs
    /// with `vdpbf16ps` (F(2×2) only: F(4×4)'s transforms lose about 17×
    /// direct bf16's accuracy in one layer, F(2×2)'s 1.4×).
    pub pairs: bool,
    /// The input is transformed once for every block, by the staging
    /// units (one per reduction step), where the blocks are fewer than
    /// the units a call wants (`groups > 1`: 14×14 and 7×7 maps), so the
    /// panel groups of a block share it instead of each transforming it
    /// again.
    pub shared: bool,
}

/// Whether the conv at `n` can run as Winograd: 3×3, stride 1, dilation 1,
/// one group, over an image, its weight its own.
fn eligible(graph: &Graph, n: NodeIndex) -> Option<ConvShape> {
    let Op::Conv { .. } = &graph.node(n).op else {
        return None;
    };
    let s = ConvShape::of(graph, n)?;
    let ok = s.g == 1 && s.k == (3, 3) && s.s == (1, 1) && s.d == (1, 1);
    ok.then_some(s)
}

impl WinoConv {
    /// The Winograd plan of the conv at `n`, or `None` where it runs
    /// direct: not eligible, or the cost model (`Auto`) prefers direct.
    /// With `pairs`, F(2×2) in bf16 pairs whatever `algo` asks for.
    pub fn plan(
        graph: &Graph,
        n: NodeIndex,
        isa: VectorIsa,
        algo: ConvAlgo,
        pairs: bool,
    ) -> Option<WinoConv> {
        WinoConv::plan_packed(graph, n, isa, algo, None, pairs)
    }

    /// `plan`, for weights packed `pitch` channels a panel where another
    /// plan packed them.
    pub fn plan_packed(
        graph: &Graph,
        n: NodeIndex,
        isa: VectorIsa,
        algo: ConvAlgo,
        pitch: Option<u64>,
        pairs: bool,
    ) -> Option<WinoConv> {
        let s = eligible(graph, n)?;
        let sizes: &[u64] = if pairs { &[2] } else { &[4, 2] };
        match algo {
            ConvAlgo::Direct => None,
            ConvAlgo::Winograd => Some(WinoConv::new(&s, isa, sizes[0], pitch, pairs)),
            ConvAlgo::Winograd2 => Some(WinoConv::new(&s, isa, 2, pitch, pairs)),
            ConvAlgo::Auto => {
                let k = Costs::of(isa, pairs);
                let direct = direct_cost(&s, isa, pairs, &k);
                sizes
                    .iter()
                    .map(|&m| WinoConv::new(&s, isa, m, pitch, pairs))
                    .map(|p| (p.cost(&k), p))
                    .filter(|(c, _)| *c * 100 < direct * k.margin_percent)
                    .min_by_key(|(c, _)| *c)
                    .map(|(_, p)| p)
            }
        }
    }

    fn new(s: &ConvShape, isa: VectorIsa, m: u64, pitch: Option<u64>, pairs: bool) -> WinoConv {
        let lanes = isa.lanes;
        let (th, tw) = (s.oh.div_ceil(m), s.ow.div_ceil(m));
        // The channel tile: `r·v` accumulators, `v` weight vectors and a
        // broadcast in the registers; blocks of whole tile rows where a row
        // fits a vector, else of `lanes / 2^i` columns (with pairs, also
        // those counts shared out evenly: 14 + 14 for 28 tile columns).
        let candidates: Vec<(u64, u64, u64)> = (1..=4u64)
            .filter(|v| super::conv_gemm::fits_pitch(v * lanes, pitch))
            .flat_map(|v| {
                let rmax = (isa.regs as u64 - 1) / v - 1;
                let shapes: Vec<(u64, u64)> = if tw <= lanes {
                    let k = (rmax / tw).clamp(1, th);
                    // Balanced: as many blocks as k rows need, rows shared out.
                    let k = th.div_ceil(th.div_ceil(k));
                    vec![(k, tw)]
                } else {
                    let even = |c: u64| {
                        if pairs {
                            tw.div_ceil(tw.div_ceil(c))
                        } else {
                            c
                        }
                    };
                    let mut cs: Vec<u64> = [lanes, lanes / 2, lanes / 4]
                        .into_iter()
                        .flat_map(|c| [c, even(c)])
                        .filter(|&c| c >= 2 && c <= rmax)
                        .collect();
                    cs.dedup();
                    cs.into_iter().map(|c| (1, c)).collect()
                };
                shapes
                    .into_iter()
                    .filter(move |&(k, c)| k * c <= rmax)
                    .map(move |(k, c)| (v, k, c))
            })
            .collect();
        let plan = |(v, kr, c)| WinoConv::tiled(s, isa, m, pitch, pairs, (v, kr, c));
        if pairs {
            // The pair kernels' GEMMs take half the steps: the transforms'
            // share of the time doubles, so count them in.
            let k = Costs::of(isa, pairs);
            return candidates
                .into_iter()
                .map(plan)
                .min_by_key(|p| (p.cost(&k), u64::MAX - p.r() * p.v))
                .unwrap_or_else(|| plan((1, 1, 1)));
        }
        let best = candidates
            .into_iter()
            .min_by_key(|&(v, k, c)| {
                let blocks = th.div_ceil(k) * tw.div_ceil(c);
                let steps = s.ocg.div_ceil(v * lanes) * blocks;
                (steps * step_cost(v, k * c), u64::MAX - k * c * v)
            })
            .unwrap_or((1, 1, 1));
        plan(best)
    }

    /// The plan with register tiles of `v` channel vectors and blocks of
    /// `kr × c` tiles.
    fn tiled(
        s: &ConvShape,
        isa: VectorIsa,
        m: u64,
        pitch: Option<u64>,
        pairs: bool,
        (v, kr, c): (u64, u64, u64),
    ) -> WinoConv {
        let lanes = isa.lanes;
        let (th, tw) = (s.oh.div_ceil(m), s.ow.div_ceil(m));
        let panels = s.ocg.div_ceil(v * lanes);
        let blocks = th.div_ceil(kr) * tw.div_ceil(c);
        let groups = MIN_UNITS.div_ceil(blocks).min(panels);
        WinoConv {
            m,
            lanes,
            ic: s.icg,
            oc: s.ocg,
            v,
            kr,
            c,
            panels,
            wpitch: pitch.unwrap_or(v * lanes),
            groups,
            h: s.h,
            w: s.w,
            oh: s.oh,
            ow: s.ow,
            pad: s.p,
            th,
            tw,
            pairs,
            shared: groups > 1,
        }
    }

    /// Steps of the GEMMs' reduction: input channels, or pairs of them
    /// (`pairs`).
    pub fn kdim(&self) -> u64 {
        if self.pairs {
            self.ic.div_ceil(2)
        } else {
            self.ic
        }
    }

    pub fn alpha(&self) -> u64 {
        self.m + 2
    }

    fn points(&self) -> u64 {
        self.alpha() * self.alpha()
    }

    fn mr(&self) -> u64 {
        self.v * self.lanes
    }

    /// Tiles per block.
    pub fn r(&self) -> u64 {
        self.kr * self.c
    }

    fn tiles(&self) -> u64 {
        self.th * self.tw
    }

    fn col_blocks(&self) -> u64 {
        self.tw.div_ceil(self.c)
    }

    fn blocks(&self) -> u64 {
        self.th.div_ceil(self.kr) * self.col_blocks()
    }

    /// Panels per group.
    fn group_panels(&self) -> u64 {
        self.panels.div_ceil(self.groups)
    }

    /// Units per image of the staging: one per input channel, or with
    /// `shared` or `pairs` one per reduction step (channel or channel
    /// pair).
    pub fn input_units(&self) -> u64 {
        if self.shared || self.pairs {
            self.kdim()
        } else {
            self.ic
        }
    }

    /// Units per image of the transforms and GEMMs: (block, panel group).
    pub fn gemm_units(&self) -> u64 {
        self.blocks() * self.groups
    }

    /// The staged (padded) plane: every patch inside it.
    fn hp(&self) -> u64 {
        self.th * self.m + 2
    }

    fn wp(&self) -> u64 {
        self.tw * self.m + 2
    }

    /// Floats of the staged planes: one per input channel, or with
    /// `pairs` one of words per channel pair.
    fn planes(&self) -> u64 {
        let steps = if self.pairs { self.kdim() } else { self.ic };
        steps * self.hp() * self.wp()
    }

    /// Floats (or pair words) of one unit's transformed input
    /// `V[ξ][kdim][r]`: its broadcasts are one contiguous run per point.
    fn v_floats(&self) -> u64 {
        self.points() * self.v_point()
    }

    /// Floats from one point's run of `V` to the next: `kdim·r` rounded
    /// up to an odd number of 64-byte lines, so that the α² stores of a
    /// reduction step fall in different L1 sets. At a multiple of 4 KiB
    /// (128 channels × 8 tiles) every one of them maps to one set, which
    /// 36 lines overflow (measured on Zen 4: a 128→32 F(4×4) conv at
    /// 14×14 spent most of its time in those stores).
    fn v_point(&self) -> u64 {
        ((self.kdim() * self.r()).div_ceil(16) | 1) * 16
    }

    /// Floats of workspace per image: the staged planes with room for the
    /// vector over-read of the last tile row, then each unit's transformed
    /// input (with `shared`, each block's).
    pub fn workspace(&self) -> u64 {
        let slices = if self.shared {
            self.blocks()
        } else {
            self.gemm_units()
        };
        self.v_base() + slices * self.v_floats()
    }

    fn v_base(&self) -> u64 {
        let slack = (self.m + 1) * self.lanes + self.m;
        (self.planes() + slack).div_ceil(16) * 16
    }

    /// The filter `[oc, ic, 3, 3]` (fp32, also in bf16) transformed (in
    /// f64, rounded once to f32) and packed `[ξ][panel][kdim][mr]`, zero
    /// rows past `oc`. With `pairs`, each value is rounded again to bf16
    /// and a slot holds input channels `2k` (low half) and `2k + 1` (zero
    /// past `ic`).
    pub fn pack(&self, w: &[f32]) -> Vec<f32> {
        debug_assert_eq!(self.wpitch, self.mr(), "packs are made for the top level");
        let tr = Transform::of(self.m);
        let (pts, mr) = (self.points() as usize, self.mr() as usize);
        let (ic, oc, kd) = (self.ic as usize, self.oc as usize, self.kdim() as usize);
        let panels = self.panels as usize;
        let mut out = vec![0.0f32; pts * panels * kd * mr];
        for o in 0..oc {
            for i in 0..ic {
                let at = (o * ic + i) * 9;
                let u = tr.filter(&w[at..at + 9]);
                let (panel, lane) = (o / mr, o % mr);
                let k = if self.pairs { i / 2 } else { i };
                for (xi, &val) in u.iter().enumerate() {
                    let slot = &mut out[((xi * panels + panel) * kd + k) * mr + lane];
                    if self.pairs {
                        let half = u32::from(bf16_bits(val as f32)) << (16 * (i % 2));
                        *slot = f32::from_bits(slot.to_bits() | half);
                    } else {
                        *slot = val as f32;
                    }
                }
            }
        }
        out
    }

    /// Estimated cost in vector FMA slots: the GEMMs (padded channels and
    /// tiles, register-tile overhead), the transforms, and reading the
    /// transformed weights once per block where they outgrow L2 (`k`: the
    /// machine's constants).
    fn cost(&self, k: &Costs) -> u64 {
        let l = self.lanes;
        let blocks = self.blocks();
        // The pair kernels' steps are `vdpbf16ps`-bound: each does twice an
        // FMA's work, so the broadcasts and loads keep up (measured on Zen
        // 4: layer3 of resnet18 at 0.71 ms against direct's 1.0).
        let step = if self.pairs {
            self.r() * self.v + 2
        } else {
            step_cost(self.v, self.r())
        };
        let gemm = self.points() * self.kdim() * self.panels * blocks * step;
        // Per channel and block row: the loads, shuffles and adds, and with
        // pairs the rounding and packing.
        let per_row = self.points() * if self.pairs { 13 } else { 8 };
        let times = if self.shared { 1 } else { self.groups };
        let input = times * self.ic * blocks * self.kr * per_row;
        let transposes = self.m * self.m * l.trailing_zeros() as u64;
        let output = if self.m == 2 {
            // `output_rows`: per block row, the tiles' transforms, one
            // transpose per position, then per channel the interleaves and
            // the epilogue's stores.
            let transpose = 2 * l + l * l.trailing_zeros() as u64;
            let per_row = self.c * (2 * self.points() + 8) + 4 * transpose + 30 * l;
            self.panels * self.v * self.th * self.col_blocks() * per_row
        } else {
            self.panels
                * self.v
                * self.tiles()
                * (2 * self.points() + 4 * transposes + 8 * self.m * l)
        };
        let output = output * k.output_percent / 100;
        let weight_bytes = 4 * self.points() * self.kdim() * self.panels * self.mr();
        let reads = if weight_bytes > L2_BYTES { blocks } else { 1 };
        // A pair kernel's weights are read while it streams its own steps
        // at half an FMA's bytes: they come from L3 at about four times the
        // rate `bytes_per_slot` says before they cost.
        let per_slot = if self.pairs {
            4 * k.bytes_per_slot
        } else {
            k.bytes_per_slot
        };
        let weights = weight_bytes * reads / per_slot;
        if k.weights_overlap {
            gemm.max(weights) + input + output
        } else {
            gemm + input + output + weights
        }
    }
}

/// The cost model's machine constants.
pub struct Costs {
    /// Bytes of weights from beyond L2 that take as long as one vector FMA
    /// slot.
    bytes_per_slot: u64,
    /// Whether the weights' stream overlaps the GEMMs' FMAs (the cost is
    /// the larger of the two) or adds to them.
    weights_overlap: bool,
    /// The output transform's estimate, in percent of its count of slots.
    output_percent: u64,
    /// Winograd is chosen where its estimate is below this share (percent)
    /// of the direct kernel's.
    margin_percent: u64,
}

impl Costs {
    /// The constants for `isa`'s CPU.
    ///
    /// The first set was fitted on Intel Xeons (session 16) and serves
    /// every CPU not measured apart. Weights stream at about 8 GB/s (two
    /// bytes an FMA slot at two 3 GHz FMAs a cycle), in addition to the
    /// FMAs, and the transforms' loads and shuffles cost more than their
    /// count says (the 80% margin).
    ///
    /// On AMD Zen 4 (session 23: every 3×3 conv of resnet18, resnet50,
    /// densenet121, cifar_resnet20, unet and unet_small timed as direct,
    /// F(4×4) and F(2×2), one thread) that model chose direct for 33 of 40
    /// shapes where Winograd ran 0.3-0.7× direct's time (unet: 667 ms
    /// where F(4×4) everywhere took 385). There the transformed weights'
    /// stream overlaps the FMAs at about 8 bytes a slot (resnet50's 512 →
    /// 512 7×7 conv, whose 38 MB of F(4×4) weights stream from memory, ran
    /// at 18 GB/s), and the output transform costs half again its count.
    /// Fitted by the time the chosen algorithm loses against the best per
    /// model: none on resnet18/50, densenet121, cifar_resnet20 and unet,
    /// 7-10% of unet_small's convs (F(4×4) on its 8×8 and 16×16 maps).
    /// Session 23 also kept F(4×4) off grids that pad the output by a
    /// third (14×14 and 7×7, where it ran 1.0-1.7× F(2×2)'s time); with
    /// the weights prefetched and `V`'s points apart in L1 (`v_point`),
    /// F(4×4) at 14×14 runs 0.7× F(2×2) on resnet's 256-channel convs and
    /// level with it on densenet121's 128→32, and this model picks it
    /// there and F(2×2) at 7×7 (session 24).
    pub fn of(isa: VectorIsa, pairs: bool) -> Costs {
        if isa.amd && !pairs {
            return Costs {
                bytes_per_slot: 8,
                weights_overlap: true,
                output_percent: 150,
                margin_percent: 100,
            };
        }
        Costs {
            bytes_per_slot: 2,
            weights_overlap: false,
            output_percent: 100,
            // The pair kernels' transforms' cost (rounding and packing
            // included) is counted in: on Zen 4 (one thread), resnet18's
            // and densenet121's 3×3 convs ran faster as F(2×2) at estimates
            // of 0.55-0.86 of direct (resnet's 56×56 to 14×14,
            // densenet121's 56×56 and 28×28), and slower at 1.27 and above
            // (densenet121's 14×14 and 7×7).
            margin_percent: if pairs { 90 } else { 80 },
        }
    }
}

/// The cost of one K step of a `v × r` channel tile in FMA slots: its
/// `r·v` FMAs or its `r + v` loads (a broadcast per tile, a load per
/// weight vector), which issue at about the FMAs' rate but stall on any
/// miss, whichever bounds; plus the loop.
fn step_cost(v: u64, r: u64) -> u64 {
    (r * v).max((r + v) * 5 / 4) + 2
}

/// Bytes of L2 a core can count on for the transformed weights of a conv.
const L2_BYTES: u64 = 1 << 20;

/// The direct kernel's cost on the same scale: 9 taps of FMAs (or
/// `vdpbf16ps` over channel pairs) per output (channel vector, pixel),
/// with the register tile's overhead, and its weights read once.
fn direct_cost(s: &ConvShape, isa: VectorIsa, pairs: bool, k: &Costs) -> u64 {
    let steps = if pairs { s.icg.div_ceil(2) } else { s.icg };
    let fmas = 9 * steps * s.ocg.div_ceil(isa.lanes) * s.oh * s.ow;
    let weight_bytes = 4 * 9 * steps * s.ocg;
    fmas + fmas / 8 + weight_bytes / k.bytes_per_slot
}

// ---- emission ---------------------------------------------------------

/// `Σ_k row[k]·x[k]` with the matrix's zeros skipped and ±1 as adds.
fn combine<'ctx>(e: &Emitter<'_, 'ctx>, row: &[f64], x: &[VectorValue<'ctx>]) -> VectorValue<'ctx> {
    let mut acc: Option<VectorValue<'ctx>> = None;
    for (&c, &v) in row.iter().zip(x) {
        if c == 0.0 {
            continue;
        }
        acc = Some(match (acc, c) {
            (None, 1.0) => v,
            (None, _) => e.vmul(v, e.vsplat(e.f32(c))),
            (Some(a), 1.0) => e.vadd(a, v),
            (Some(a), -1.0) => e.vsub(a, v),
            (Some(a), _) => e.vfma(v, e.vsplat(e.f32(c)), a),
        });
    }
    acc.unwrap_or_else(|| e.vzero())
}

/// `M · X` for a matrix `M` (rows × k) and `k` vectors.
fn apply<'ctx>(
    e: &Emitter<'_, 'ctx>,
    m: &[Vec<f64>],
    x: &[VectorValue<'ctx>],
) -> Vec<VectorValue<'ctx>> {
    m.iter().map(|row| combine(e, row, x)).collect()
}

/// `M · X · Mᵀ` of an `k × k` block of vectors (row-major).
fn apply2<'ctx>(
    e: &Emitter<'_, 'ctx>,
    m: &[Vec<f64>],
    x: &[VectorValue<'ctx>],
    k: usize,
) -> Vec<VectorValue<'ctx>> {
    // Columns first: each row of x times Mᵀ.
    let rows: Vec<Vec<VectorValue<'ctx>>> = x.chunks(k).map(|row| apply(e, m, row)).collect();
    let n = m.len();
    let mut out = vec![e.vzero(); n * n];
    for j in 0..n {
        let col: Vec<VectorValue<'ctx>> = rows.iter().map(|r| r[j]).collect();
        for (i, v) in apply(e, m, &col).into_iter().enumerate() {
            out[i * n + j] = v;
        }
    }
    out
}

/// Stages input channel `ic` of image `b`: zero-padded, prologue applied,
/// every transform patch inside the plane.
pub(super) fn stage<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    c: &Ctx<'_, 'ctx>,
    a: &Args<'ctx>,
    n: NodeIndex,
    p: &WinoConv,
    (b, u): Unit<'ctx>,
) {
    // Reduction step `u`: its channel, or pair of channels (the second
    // zero past an odd count), staged, then with `shared` transformed for
    // every block.
    stage_channel(e, c, a, n, p, (b, u));
    if p.shared {
        let ws = a.image(e, c.workspace(e), b);
        transform_step(e, p, ws, u);
    }
}

/// Stages reduction step `ic` of image `b`: zero-padded, prologue applied,
/// every transform patch inside the plane. With `pairs`, step `ic` is
/// channels `2·ic` and `2·ic + 1` rounded to bf16 and packed in words
/// (the second zero past an odd count): half the bytes of two fp32
/// planes, which for DenseNet's 128-channel 56×56 inputs (1.7 MB in fp32)
/// is what keeps them in L2 for the units' transforms.
fn stage_channel<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    c: &Ctx<'_, 'ctx>,
    a: &Args<'ctx>,
    n: NodeIndex,
    p: &WinoConv,
    (b, ic): Unit<'ctx>,
) {
    let fused = conv_fused(&c.graph.node(n).op).expect("a Winograd conv");
    let ops = c.graph.operands(n);
    let (pro, _, _) = fused_operands(c, &ops, fused);
    let (hp, wp) = (p.hp(), p.wp());
    let ws = a.image(e, c.workspace(e), b);
    let x = (a.image(e, c.view(ops[0]), b), p.h * p.w);
    let plane = e.at(ws, e.mul(ic, e.int(hp * wp)));
    let (src, ss, round) = step_source(e, a, x, pro, (p.ic, p.pairs), ic, Rounding::None);
    // F(2×2)'s patches start on even columns: its plane is staged as its
    // even then its odd columns (`wp` is even), so that a patch row's four
    // values over a block row's tiles are four plain vector loads
    // (`patches`) rather than two wide loads split by shuffles.
    let phases = if p.m == 2 { 2 } else { 1 };
    for px in 0..phases {
        let neg = |v: u64| e.int(0u64.wrapping_sub(v));
        let shift = (neg(p.pad.0), neg(p.pad.1.wrapping_sub(px)));
        let at = e.at(plane, e.int(px * hp * (wp / phases)));
        let (sizes, stride) = ((hp, wp / phases), (1, phases));
        pad_plane(
            e,
            fused,
            (src, at, ss),
            (p.h, p.w),
            sizes,
            stride,
            shift,
            round,
        );
    }
}

/// The input transform of one block (tile rows `row0..row0 + kr`, tile
/// columns `col0..col0 + c`) for every input channel: `Bᵀ d B` for a
/// block row's tiles at once (each patch row read as `m` interleaved
/// vectors) and stored as `V[ξ][kdim][r]` at `vb`; with `pairs`, two
/// channels' transforms rounded to bf16 and packed in each word.
fn input_transform<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    p: &WinoConv,
    planes: PointerValue<'ctx>,
    vb: PointerValue<'ctx>,
    (row0, col0): (IntValue<'ctx>, IntValue<'ctx>),
) {
    let (mask, rows) = block_bounds(e, p, (row0, col0));
    e.for_const(0, p.kdim(), |e, k| {
        e.for_range(e.int(0), rows, |e, i| {
            let z = step_row(e, p, planes, k, (e.add(row0, i), col0));
            store_step(e, p, (vb, mask), (k, i), z);
        });
    });
}

/// `Bᵀ d B` of reduction step `k`'s tiles in tile row `ty` from column
/// `col0` (`patches`): channel `k`'s, or with pairs the two channels' of
/// pair plane `k`, each rounded to bf16 and packed.
fn step_row<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    p: &WinoConv,
    planes: PointerValue<'ctx>,
    k: IntValue<'ctx>,
    at: (IntValue<'ctx>, IntValue<'ctx>),
) -> Vec<VectorValue<'ctx>> {
    let d = patches(e, p, planes, k, at);
    let (bt, alpha) = (&Transform::of(p.m).bt, p.alpha() as usize);
    if !p.pairs {
        return apply2(e, bt, &d, alpha);
    }
    let (lo, hi): (Vec<_>, Vec<_>) = d.into_iter().map(|w| e.vsplit_bf16_pairs(w)).unzip();
    let (lo, hi) = (apply2(e, bt, &lo, alpha), apply2(e, bt, &hi, alpha));
    lo.into_iter()
        .zip(hi)
        .map(|(l, h)| e.vcvt_bf16_pairs(l, h))
        .collect()
}

/// Block `block`'s first tile row and column.
fn block_origin<'ctx>(
    e: &Emitter<'_, 'ctx>,
    p: &WinoConv,
    block: IntValue<'ctx>,
) -> (IntValue<'ctx>, IntValue<'ctx>) {
    let cb = e.int(p.col_blocks());
    let row0 = e.mul(e.sdiv(block, cb), e.int(p.kr));
    (row0, e.mul(e.srem(block, cb), e.int(p.c)))
}

/// Transformed-input slice `i` of the workspace `ws` (a unit's, or with
/// `shared` a block's).
fn v_slice<'ctx>(
    e: &Emitter<'_, 'ctx>,
    p: &WinoConv,
    ws: PointerValue<'ctx>,
    i: IntValue<'ctx>,
) -> PointerValue<'ctx> {
    e.at(ws, e.add(e.int(p.v_base()), e.mul(i, e.int(p.v_floats()))))
}

/// The block at `(row0, col0)`'s lanes inside the tile grid, and its tile
/// rows inside it.
fn block_bounds<'ctx>(
    e: &Emitter<'_, 'ctx>,
    p: &WinoConv,
    (row0, col0): (IntValue<'ctx>, IntValue<'ctx>),
) -> (VectorValue<'ctx>, IntValue<'ctx>) {
    let cols = e.smin(e.int(p.c), e.sub(e.int(p.tw), col0));
    let mask = e.vin_range(e.vindices(e.int(0), 0), e.int(0), cols);
    (mask, e.smin(e.int(p.kr), e.sub(e.int(p.th), row0)))
}

/// Stores the α² vectors `z` of reduction step `k`, block row `i`, into a
/// block's `V[ξ][kdim][r]` at `vb` (lanes in `mask`).
fn store_step<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    p: &WinoConv,
    (vb, mask): (PointerValue<'ctx>, VectorValue<'ctx>),
    (k, i): (IntValue<'ctx>, IntValue<'ctx>),
    z: Vec<VectorValue<'ctx>>,
) {
    let r = p.r();
    let at0 = e.add(e.mul(k, e.int(r)), e.mul(i, e.int(p.c)));
    for (xi, v) in z.into_iter().enumerate() {
        let at = e.add(at0, e.int(xi as u64 * p.v_point()));
        e.vstore_masked(vb, at, v, mask);
    }
}

/// `shared`: reduction step `k` of every block's `V`.
fn transform_step<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    p: &WinoConv,
    ws: PointerValue<'ctx>,
    k: IntValue<'ctx>,
) {
    e.for_const(0, p.blocks(), |e, block| {
        let (row0, col0) = block_origin(e, p, block);
        let vb = v_slice(e, p, ws, block);
        let (mask, rows) = block_bounds(e, p, (row0, col0));
        e.for_range(e.int(0), rows, |e, i| {
            let z = step_row(e, p, ws, k, (e.add(row0, i), col0));
            store_step(e, p, (vb, mask), (k, i), z);
        });
    });
}

/// The patches `d` of plane `ic`'s tiles in tile row `ty` from column
/// `col0`: α² vectors (row-major), lane `j` for tile `col0 + j`.
fn patches<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    p: &WinoConv,
    planes: PointerValue<'ctx>,
    ic: IntValue<'ctx>,
    (ty, col0): (IntValue<'ctx>, IntValue<'ctx>),
) -> Vec<VectorValue<'ctx>> {
    let (m, alpha, wp) = (p.m, p.alpha() as usize, p.wp());
    let plane = e.at(planes, e.mul(ic, e.int(p.hp() * wp)));
    let mut d = Vec::with_capacity(alpha * alpha);
    if m == 2 {
        // The even and odd column planes (`stage_channel`): patch column
        // `q` of tile `j` is column `j + q / 2` of plane `q % 2`.
        let half = wp / 2;
        for k in 0..alpha as u64 {
            let y = e.add(e.mul(ty, e.int(m)), e.int(k));
            let row = e.add(e.mul(y, e.int(half)), col0);
            for q in 0..alpha as u64 {
                let at = e.add(row, e.int((q % 2) * p.hp() * half + q / 2));
                d.push(e.vload(plane, at));
            }
        }
        return d;
    }
    for k in 0..alpha as u64 {
        let y = e.add(e.mul(ty, e.int(m)), e.int(k));
        let row = e.add(e.mul(y, e.int(wp)), e.mul(col0, e.int(m)));
        let lo = e.vload_interleaved(plane, row, m);
        let hi = e.vload_interleaved(plane, e.add(row, e.int(m)), m);
        d.extend(lo.iter().copied());
        d.extend(hi[..alpha - m as usize].iter().copied());
    }
    d
}

/// GEMM unit `u` of image `b`: its block's input transform (unless
/// `shared`: the staging units made it); for each of the α² points, the
/// register tile over every reduction step, kept in a stack scratch; then
/// the output transform and the epilogue (`output_rows` for F(2×2),
/// else per tile, `output_transform`).
pub(super) fn gemm<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    c: &Ctx<'_, 'ctx>,
    a: &Args<'ctx>,
    n: NodeIndex,
    p: &WinoConv,
    (b, u): Unit<'ctx>,
) {
    let fused = conv_fused(&c.graph.node(n).op).expect("a Winograd conv");
    let ops = c.graph.operands(n);
    let (_, bias, residual) = fused_operands(c, &ops, fused);
    let (v, r) = (p.v, p.r());
    let pts = p.points();
    let groups = e.int(p.groups);
    let (block, group) = (e.sdiv(u, groups), e.srem(u, groups));
    let (row0, col0) = block_origin(e, p, block);
    let ws = a.image(e, c.workspace(e), b);
    let vb = if p.shared {
        v_slice(e, p, ws, block)
    } else {
        let vb = v_slice(e, p, ws, u);
        input_transform(e, p, ws, vb, (row0, col0));
        vb
    };
    let wt = a.konst(e, c.konst(ops[1]));
    let scratch_ty = e.vty().array_type((pts * r * v) as u32);
    let scratch = e.entry_alloca(scratch_ty.into());
    let slots: Vec<PointerValue<'ctx>> = (0..r * v).map(|_| e.vslot()).collect();
    // `output_rows`' transposes: m² positions × lanes tiles, the slots
    // past the block's `c` tiles set once so that no undefined value is
    // read (they reach only masked-off pixels).
    let yt = e.entry_alloca(e.vty().array_type((p.m * p.m * p.lanes) as u32).into());
    if p.m == 2 {
        for q in (0..p.m * p.m * p.lanes).filter(|q| q % p.lanes >= p.c) {
            e.vset(e.vat(yt, e.int(q)), e.vzero());
        }
    }
    let gp = p.group_panels();
    let p0 = e.mul(group, e.int(gp));
    let p1 = e.smin(e.add(p0, e.int(gp)), e.int(p.panels));
    e.for_range(p0, p1, |e, panel| {
        // A last block of fewer tile rows (resnet's 7 rows of 14×14 maps
        // in blocks of 2) runs a register tile of its own rows only,
        // where the full one spent an eighth of the layer's GEMMs on
        // junk rows.
        let short = p.th % p.kr;
        if short == 0 {
            panel_tiles(e, p, (wt, vb, scratch, &slots), panel);
        } else {
            let whole = e.ult(e.add(row0, e.int(p.kr - 1)), e.int(p.th));
            let part = &slots[..(short * p.c * v) as usize];
            e.if_else(
                whole,
                |e| panel_tiles(e, p, (wt, vb, scratch, &slots), panel),
                |e| panel_tiles(e, p, (wt, vb, scratch, part), panel),
            );
        }
        let at = PanelBlock {
            scratch,
            b,
            panel,
            row0,
            col0,
        };
        if p.m == 2 {
            output_rows(e, c, a, n, p, fused, at, yt, (bias, residual));
        } else {
            output_transform(e, c, a, n, p, fused, at, (bias, residual));
        }
    });
}

/// The GEMMs of one panel over the unit's block: per point, the register
/// tile over every input channel, stored to the scratch. `slots` hold the
/// tile's accumulators: `v` per tile, for the block's first
/// `slots.len() / v` tiles (fewer than `r` in a short last block).
#[allow(clippy::type_complexity)]
fn panel_tiles<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    p: &WinoConv,
    (wt, vb, scratch, slots): (
        PointerValue<'ctx>,
        PointerValue<'ctx>,
        PointerValue<'ctx>,
        &[PointerValue<'ctx>],
    ),
    panel: IntValue<'ctx>,
) {
    let (l, v, r, mr) = (p.lanes, p.v, p.r(), p.mr());
    let used = slots.len() as u64 / v;
    let pts = p.points();
    // The stored panel holding this register tile, and the tile's rows in
    // it (`wpitch / mr` tiles a stored panel).
    let (stored, k) = (p.oc.div_ceil(p.wpitch), p.wpitch / mr);
    let (sp, rows) = (
        e.sdiv(panel, e.int(k)),
        e.mul(e.srem(panel, e.int(k)), e.int(mr)),
    );
    // The next register tile's, for the prefetch after the last point.
    let next = e.add(panel, e.int(1));
    let (next_sp, next_panel_rows) = (
        e.sdiv(next, e.int(k)),
        e.mul(e.srem(next, e.int(k)), e.int(mr)),
    );
    e.for_const(0, pts, |e, xi| {
        for s in slots {
            e.vset(*s, e.vzero());
        }
        let at = e.add(e.mul(xi, e.int(stored)), sp);
        let up = e.at(wt, e.add(e.mul(at, e.int(p.kdim() * p.wpitch)), rows));
        let vp = e.at(vb, e.mul(xi, e.int(p.v_point())));
        // The weights the next point reads (after the last, the next
        // panel's first), brought into L2 while this point's run: the
        // transformed weights of the late layers (8 MB for resnet18's
        // 512-channel convs in bf16 pairs) stream from memory, and the
        // hardware prefetcher does not cross from one point's run to the
        // next (measured on Zen 4: layer4 0.95 -> 0.66 ms).
        let more = e.ult(xi, e.int(pts - 1));
        let next_at = e.pick(more, e.add(at, e.int(stored)), next_sp);
        let next_rows = e.pick(more, rows, next_panel_rows);
        let nk = e.at_unchecked(
            wt,
            e.add(e.mul(next_at, e.int(p.kdim() * p.wpitch)), next_rows),
        );
        e.for_const(0, p.kdim(), |e, ic| {
            let wk = e.at(up, e.mul(ic, e.int(p.wpitch)));
            let xk = e.at(vp, e.mul(ic, e.int(r)));
            let wv: Vec<VectorValue<'ctx>> = (0..v).map(|k| e.vload(wk, e.int(k * l))).collect();
            let next = e.at_unchecked(nk, e.mul(ic, e.int(p.wpitch)));
            for k in 0..v {
                e.prefetch_l2(e.at_unchecked(next, e.int(k * l)));
            }
            let mut acc: Vec<VectorValue<'ctx>> = slots.iter().map(|s| e.vget(*s)).collect();
            for j in 0..used {
                let xb = e.vsplat(e.load(xk, e.int(j)));
                for k in 0..v {
                    let i = (j * v + k) as usize;
                    acc[i] = if p.pairs {
                        e.vdp_bf16(acc[i], wv[k as usize], xb)
                    } else {
                        e.vfma(wv[k as usize], xb, acc[i])
                    };
                }
            }
            for (s, x) in slots.iter().zip(&acc) {
                e.vset(*s, *x);
            }
        });
        let base = e.mul(xi, e.int(r * v));
        for (i, s) in slots.iter().enumerate() {
            let at = e.add(base, e.int(i as u64));
            e.vset(e.vat(scratch, at), e.vget(*s));
        }
    });
}

/// Where an output transform reads and writes: the GEMMs' results
/// (`scratch`), image `b`, the panel, and the block's first tile row and
/// column.
#[derive(Clone, Copy)]
struct PanelBlock<'ctx> {
    scratch: PointerValue<'ctx>,
    b: IntValue<'ctx>,
    panel: IntValue<'ctx>,
    row0: IntValue<'ctx>,
    col0: IntValue<'ctx>,
}

/// F(2×2)'s output transform of one panel over the unit's block, a block
/// row at a time: `Aᵀ M A` of each of its `c` tiles into `yt`, one
/// transpose per output position (the tiles' channel vectors become each
/// channel's vector over the tiles), then per channel and output row the
/// two positions interleaved into `2c` consecutive pixels, stored through
/// the epilogue. Four stores per channel and block row where
/// `output_transform` makes two per channel and tile.
#[allow(clippy::too_many_arguments)]
fn output_rows<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    c: &Ctx<'_, 'ctx>,
    a: &Args<'ctx>,
    n: NodeIndex,
    p: &WinoConv,
    fused: &Fused,
    at: PanelBlock<'ctx>,
    yt: PointerValue<'ctx>,
    (bias, residual): (Option<IntValue<'ctx>>, Option<NodeIndex>),
) {
    let PanelBlock {
        scratch,
        b,
        panel,
        row0,
        col0,
    } = at;
    let (l, v, r, m) = (p.lanes, p.v, p.r(), p.m);
    let out = Out {
        y: a.image(e, c.view(n), b),
        z: residual.map(|z| a.image(e, c.view(z), b)),
        bias: bias.map(|k| a.konst(e, k)),
    };
    let tr = Transform::of(m);
    let ox0 = e.mul(col0, e.int(m));
    // The block row's pixels inside the output.
    let cols = e.smin(e.int(m * p.c), e.sub(e.int(p.ow), ox0));
    let rows = e.smin(e.int(p.kr), e.sub(e.int(p.th), row0));
    let slot =
        |e: &Emitter<'_, 'ctx>, pos: u64, q: IntValue<'ctx>| e.vat(yt, e.add(e.int(pos * l), q));
    e.for_range(e.int(0), rows, |e, i| {
        let ty = e.add(row0, i);
        e.for_const(0, v, |e, k| {
            for jc in 0..p.c {
                let j = e.add(e.mul(i, e.int(p.c)), e.int(jc));
                let mvals: Vec<VectorValue<'ctx>> = (0..p.points())
                    .map(|xi| {
                        let at = e.add(e.int(xi * r * v), e.add(e.mul(j, e.int(v)), k));
                        e.vget(e.vat(scratch, at))
                    })
                    .collect();
                let y = apply2(e, &tr.at, &mvals, p.alpha() as usize);
                for (pos, yv) in y.into_iter().enumerate() {
                    e.vset(slot(e, pos as u64, e.int(jc)), yv);
                }
            }
            for pos in 0..m * m {
                let tiles: Vec<VectorValue<'ctx>> =
                    (0..l).map(|q| e.vget(slot(e, pos, e.int(q)))).collect();
                for (q, t) in e.vtranspose(&tiles).into_iter().enumerate() {
                    e.vset(slot(e, pos, e.int(q as u64)), t);
                }
            }
            let local0 = e.mul(e.add(e.mul(panel, e.int(v)), k), e.int(l));
            e.for_const(0, l, |e, lane| {
                let oc = e.add(local0, lane);
                let store = |e: &mut Emitter<'_, 'ctx>| {
                    for ay in 0..m {
                        let oy = e.add(e.mul(ty, e.int(m)), e.int(ay));
                        e.if_else(
                            e.ult(oy, e.int(p.oh)),
                            |e| {
                                let pair = e.vinterleave(
                                    e.vget(slot(e, ay * m, lane)),
                                    e.vget(slot(e, ay * m + 1, lane)),
                                );
                                let row = e.mul(e.add(e.mul(oc, e.int(p.oh)), oy), e.int(p.ow));
                                for (h, x) in pair.into_iter().enumerate() {
                                    let start = h as u64 * l;
                                    if start >= m * p.c {
                                        continue;
                                    }
                                    let mask =
                                        e.vin_range(e.vindices(e.int(start), 0), e.int(0), cols);
                                    let at = e.add(e.add(row, ox0), e.int(start));
                                    epilogue_store(e, fused, &out, x, oc, at, Some(mask));
                                }
                            },
                            |_| {},
                        );
                    }
                };
                if p.oc.is_multiple_of(p.mr()) {
                    store(e);
                } else {
                    e.if_else(e.ult(oc, e.int(p.oc)), store, |_| {});
                }
            });
        });
    });
}

/// The output transform of one panel over the unit's block, tile by tile
/// (a loop: one copy of its code): `Aᵀ M A` per channel vector, a
/// transpose to pixel vectors, and the epilogue on the stores of each
/// tile row (whole rows inside the output, masked at its edge).
#[allow(clippy::too_many_arguments)]
fn output_transform<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    c: &Ctx<'_, 'ctx>,
    a: &Args<'ctx>,
    n: NodeIndex,
    p: &WinoConv,
    fused: &Fused,
    at: PanelBlock<'ctx>,
    (bias, residual): (Option<IntValue<'ctx>>, Option<NodeIndex>),
) {
    let PanelBlock {
        scratch,
        b,
        panel,
        row0,
        col0,
    } = at;
    let (l, v, r, mr) = (p.lanes, p.v, p.r(), p.mr());
    let pts = p.points();
    let yb = a.image(e, c.view(n), b);
    let zb = residual.map(|z| a.image(e, c.view(z), b));
    let bias = bias.map(|k| a.konst(e, k));
    let tr = Transform::of(p.m);
    let m = p.m;
    e.for_const(0, r, |e, j| {
        let ty = e.add(row0, e.sdiv(j, e.int(p.c)));
        let tx = e.add(col0, e.srem(j, e.int(p.c)));
        let inside =
            e.b.build_and(e.ult(ty, e.int(p.th)), e.ult(tx, e.int(p.tw)), "")
                .expect("and");
        e.if_else(
            inside,
            |e| {
                let (oy0, ox0) = (e.mul(ty, e.int(m)), e.mul(tx, e.int(m)));
                let cols = e.smin(e.int(m), e.sub(e.int(p.ow), ox0));
                let interior =
                    e.b.build_and(
                        e.ult(e.add(oy0, e.int(m)), e.int(p.oh + 1)),
                        e.ult(e.add(ox0, e.int(m)), e.int(p.ow + 1)),
                        "",
                    )
                    .expect("and");
                e.for_const(0, v, |e, k| {
                    let mvals: Vec<VectorValue<'ctx>> = (0..pts)
                        .map(|xi| {
                            let at = e.add(e.int(xi * r * v), e.add(e.mul(j, e.int(v)), k));
                            e.vget(e.vat(scratch, at))
                        })
                        .collect();
                    let y = apply2(e, &tr.at, &mvals, p.alpha() as usize);
                    let local0 = e.mul(e.add(e.mul(panel, e.int(v)), k), e.int(l));
                    // Pixel vectors: groups of `lanes` pixels of the tile (row
                    // major), transposed so that each output channel's pixels are
                    // one vector.
                    for gi in 0..(m * m).div_ceil(l) {
                        let rows: Vec<VectorValue<'ctx>> = (0..l)
                            .map(|q| {
                                y.get((gi * l + q) as usize)
                                    .copied()
                                    .unwrap_or_else(|| e.vzero())
                            })
                            .collect();
                        let cols_v = e.vtranspose(&rows);
                        let first_row = gi * l / m;
                        let last_row = ((gi + 1) * l).min(m * m).div_ceil(m);
                        for (lane, col) in cols_v.into_iter().enumerate() {
                            let store = |e: &mut Emitter<'_, 'ctx>| {
                                let oc = e.add(local0, e.int(lane as u64));
                                let plane = e.mul(oc, e.int(p.oh * p.ow));
                                // A tile inside the output: whole rows, unmasked.
                                let fast = |e: &mut Emitter<'_, 'ctx>| {
                                    let oy = e.add(oy0, e.int(first_row));
                                    let at = e.add(e.add(plane, e.mul(oy, e.int(p.ow))), ox0);
                                    let rows = (last_row - first_row, m, p.ow);
                                    let x = epilogue_value(e, fused, bias, col, oc, |e| {
                                        e.vload_rows(zb.expect("add operand"), at, rows)
                                    });
                                    e.vstore_rows(yb, at, rows, x);
                                };
                                // At the output's edge: row by row, masked.
                                let edge = |e: &mut Emitter<'_, 'ctx>| {
                                    for ty in first_row..last_row {
                                        // Row `ty` of the tile: lanes `lo..lo + m`.
                                        let lo = ty * m - gi * l;
                                        let oy = e.add(oy0, e.int(ty));
                                        let row_in = e.ult(oy, e.int(p.oh));
                                        e.if_else(
                                            row_in,
                                            |e| {
                                                let lanes = e.vindices(e.int(0), 0);
                                                let end = e.add(e.int(lo), cols);
                                                let mask = e.vin_range(lanes, e.int(lo), end);
                                                let at = e.add(plane, e.mul(oy, e.int(p.ow)));
                                                let at = e.sub(e.add(at, ox0), e.int(lo));
                                                let out = Out { y: yb, z: zb, bias };
                                                epilogue_store(
                                                    e,
                                                    fused,
                                                    &out,
                                                    col,
                                                    oc,
                                                    at,
                                                    Some(mask),
                                                );
                                            },
                                            |_| {},
                                        );
                                    }
                                };
                                e.if_else(interior, fast, edge);
                            };
                            if p.oc.is_multiple_of(mr) {
                                store(e);
                            } else {
                                let oc_in = e.ult(e.add(local0, e.int(lane as u64)), e.int(p.oc));
                                e.if_else(oc_in, store, |_| {});
                            }
                        }
                    }
                });
            },
            |_| {},
        );
    });
}
