//! Convolutions and linear layers as implicit GEMM, one output tile per
//! block: `Y[m, p] = Σ_k W[m, k] · X̂[k, p]` per group, where `m` is the
//! output channel, `p` the output pixel of the whole batch (batch folded
//! into the GEMM's N) and `k = (ic, ky, kx)`. The im2col matrix `X̂` is
//! never stored: each block forms its `BK × BN` slice while loading global
//! → shared memory (zero padding, stride, dilation and the DenseNet
//! prologue applied there). Every thread keeps a `TM × TN` register tile
//! and applies the fused epilogue (bias, residual add, activation) in
//! registers before its one store. A linear layer is the 1×1 case on a 1×1
//! image.
//!
//! Weights are prepacked at build time as `[group][K padded to BK][M padded
//! to 128]`, so the `BK × BM` weight tile loads are aligned vector loads
//! with no bounds checks, for every tile shape.

use super::kernels::{epilogue_value, FusedArgs};
use super::simt::{Kern, Memory};
use crate::backend::llvm::emit::Emitter;
use crate::ir::op::{ConvGeom, Fused};
use inkwell::types::BasicType;
use inkwell::values::{BasicValue, BasicValueEnum, FloatValue, IntValue, PointerValue};
use serde::Serialize;

/// Depth of one K step.
pub const BK: u64 = 8;
/// Weight rows are padded to this many channels: a multiple of every BM.
pub const M_PAD: u64 = 128;

/// A block tile: `bm × bn` outputs, `tm × tn` per thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Tile {
    pub bm: u64,
    pub bn: u64,
    pub tm: u64,
    pub tn: u64,
}

impl Tile {
    pub fn threads(&self) -> u64 {
        (self.bm / self.tm) * (self.bn / self.tn)
    }

    /// Blocks resident per multiprocessor, as registers allow: the
    /// kernels use at most 128 registers a thread for the 8×8 register
    /// tile (65536 / 128 = 512 threads: two blocks of 256, four of 128,
    /// eight of 64), 80 for the 8×4 (six blocks of 128) and 64 for the
    /// others (four blocks of 256); the ptxas test holds them to that.
    pub fn resident(&self) -> u64 {
        match self.tm * self.tn {
            64 => 512 / self.threads(),
            32 => 6,
            _ => 4,
        }
    }

    /// Registers a thread may use for `resident` blocks to fit in a
    /// multiprocessor's 65536, which it hands out to warps in units of 256
    /// (8 a thread).
    pub fn register_cap(&self) -> u64 {
        65536 / (self.threads() * self.resident()) / 8 * 8
    }

    /// FMAs a cycle relative to the 8×8 tile's: smaller register tiles
    /// load shared memory and compute addresses for fewer FMAs (about the
    /// ratio of their K loops' FFMA shares, `scripts/sass_loops.py`).
    pub fn efficiency(&self) -> f64 {
        match self.tm * self.tn {
            64 => 1.0,
            32 => 0.85,
            16 => 0.6,
            _ => 0.3,
        }
    }

    /// Weights each thread loads per K step (consecutive channels).
    pub fn weight_run(&self) -> u64 {
        BK * self.bm / self.threads()
    }

    /// im2col elements each thread loads per K step.
    pub fn column_rows(&self) -> u64 {
        BK * self.bn / self.threads()
    }

    /// Rows between a thread's im2col elements.
    pub fn column_stride(&self) -> u64 {
        self.threads() / self.bn
    }

    /// A thread's `tn` columns come in runs of this many, consecutive
    /// threads' runs side by side and the runs `bn / (tn / run)` apart:
    /// the 8×8 tile's two 4-wide shared-memory loads of a K row then read
    /// 16 consecutive bytes per thread, 512 consecutive bytes a warp,
    /// where 8 consecutive columns per thread would put threads 4 apart on
    /// the same banks (twice the wavefronts). The epilogue's stores of a
    /// column are 16 bytes apart rather than 32 for the same reason.
    pub fn col_run(&self) -> u64 {
        self.tn.min(4)
    }

    /// Column, within the block tile, of register column `j` of thread
    /// column `tx`: `tx · col_run + col_offset(j)`.
    pub fn col_offset(&self, j: u64) -> u64 {
        let run = self.col_run();
        (j / run) * (self.bn / (self.tn / run)) + j % run
    }

    /// Floats of one stage of the `BK × BM` weight and the `BK × BN`
    /// im2col tile.
    pub fn stage(&self) -> (u64, u64) {
        (BK * self.bm, BK * self.bn)
    }

    /// Bytes of shared memory: two stages.
    pub fn shared_bytes(&self) -> u64 {
        let (a, b) = self.stage();
        2 * (a + b) * 4
    }
}

/// The tile shapes the cost model picks from, largest first. The 8×8
/// register tile, whose K loop is the most FFMA for its other work (about
/// 85% of its instructions against about 60% for 4×4: `scripts/
/// sass_loops.py`), comes in four block shapes, so that layers of 64
/// channels or few pixels need not fall back to the smaller register
/// tiles. Layers of 32 channels or fewer (DenseNet's growth-rate convs,
/// CIFAR ResNets, U-Net's outer levels) get a 32×128 block of 8×4 register
/// tiles (about 72% FFMA) rather than an 8×8 tile whose rows past 32 are
/// padding.
pub const TILES: [Tile; 7] = [
    Tile {
        bm: 128,
        bn: 128,
        tm: 8,
        tn: 8,
    },
    Tile {
        bm: 128,
        bn: 64,
        tm: 8,
        tn: 8,
    },
    Tile {
        bm: 64,
        bn: 128,
        tm: 8,
        tn: 8,
    },
    Tile {
        bm: 64,
        bn: 64,
        tm: 8,
        tn: 8,
    },
    Tile {
        bm: 32,
        bn: 128,
        tm: 8,
        tn: 4,
    },
    Tile {
        bm: 64,
        bn: 64,
        tm: 4,
        tn: 4,
    },
    Tile {
        bm: 32,
        bn: 32,
        tm: 2,
        tn: 2,
    },
];

/// The GEMM view of one conv or linear layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct ConvGemm {
    pub groups: u64,
    pub icg: u64,
    pub ocg: u64,
    pub h: u64,
    pub w: u64,
    pub oh: u64,
    pub ow: u64,
    pub kh: u64,
    pub kw: u64,
    pub sh: u64,
    pub sw: u64,
    pub ph: u64,
    pub pw: u64,
    pub dh: u64,
    pub dw: u64,
}

impl ConvGemm {
    /// A conv of `g` on a `[c, h, w]` input giving `[oc, oh, ow]`.
    pub fn conv(g: &ConvGeom, x: (u64, u64, u64), y: (u64, u64, u64)) -> ConvGemm {
        let groups = g.groups as u64;
        ConvGemm {
            groups,
            icg: x.0 / groups,
            ocg: y.0 / groups,
            h: x.1,
            w: x.2,
            oh: y.1,
            ow: y.2,
            kh: g.kernel[0] as u64,
            kw: g.kernel[1] as u64,
            sh: g.stride[0] as u64,
            sw: g.stride[1] as u64,
            ph: g.pad[0] as u64,
            pw: g.pad[1] as u64,
            dh: g.dilation[0] as u64,
            dw: g.dilation[1] as u64,
        }
    }

    /// A linear layer `in → out`.
    pub fn linear(inputs: u64, outputs: u64) -> ConvGemm {
        ConvGemm {
            groups: 1,
            icg: inputs,
            ocg: outputs,
            h: 1,
            w: 1,
            oh: 1,
            ow: 1,
            kh: 1,
            kw: 1,
            sh: 1,
            sw: 1,
            ph: 0,
            pw: 0,
            dh: 1,
            dw: 1,
        }
    }

    /// GEMM depth.
    pub fn k(&self) -> u64 {
        self.icg * self.kh * self.kw
    }

    pub fn k_padded(&self) -> u64 {
        self.k().div_ceil(BK) * BK
    }

    pub fn m_padded(&self) -> u64 {
        self.ocg.div_ceil(M_PAD) * M_PAD
    }

    /// Output pixels per image (the GEMM's N per image).
    pub fn pixels(&self) -> u64 {
        self.oh * self.ow
    }

    /// Whether K runs tap-major, `k = (ky, kx, ic)`, rather than in
    /// PyTorch's `(ic, ky, kx)`: when the channels fill whole K steps, all
    /// `BK` rows of a step share one filter tap, so a thread finds the tap
    /// and the input pixel once per step and its im2col loads lie a
    /// constant apart, with no per-element division or bounds check.
    pub fn tap_major(&self) -> bool {
        self.icg.is_multiple_of(BK)
    }

    /// Weights `[groups·ocg][k]` (PyTorch's order) → `[group][Kp][Mp]`,
    /// K in the kernel's order (`tap_major`).
    pub fn pack(&self, w: &[f32]) -> Vec<f32> {
        let (k, kp, mp) = (self.k(), self.k_padded(), self.m_padded());
        let taps = self.kh * self.kw;
        let mut out = vec![0.0; (self.groups * kp * mp) as usize];
        for g in 0..self.groups {
            for m in 0..self.ocg {
                let row = ((g * self.ocg + m) * k) as usize;
                for kk in 0..k {
                    let (ic, tap) = (kk / taps, kk % taps);
                    let at = if self.tap_major() {
                        tap * self.icg + ic
                    } else {
                        kk
                    };
                    out[((g * kp + at) * mp + m) as usize] = w[row + kk as usize];
                }
            }
        }
        out
    }

    /// Output elements per image (all groups).
    pub fn outputs(&self) -> u64 {
        self.groups * self.ocg * self.pixels()
    }

    /// Outputs tile `t` computes at batch `n`, padding included.
    pub fn padded(&self, t: &Tile, n: u64) -> u64 {
        let rows = self.ocg.div_ceil(t.bm) * t.bm;
        rows * (n * self.pixels()).div_ceil(t.bn) * t.bn * self.groups
    }

    /// Modelled cycles of tile `t` with K split `split` ways at batch `n`
    /// on a GPU of `sms` multiprocessors (`Cost`).
    pub fn cost(&self, t: &Tile, split: u64, n: u64, sms: u64) -> f64 {
        let tiles = self.ocg.div_ceil(t.bm) * (n * self.pixels()).div_ceil(t.bn) * self.groups;
        Cost::GPU.gemm(
            t,
            tiles * split,
            (self.k_padded() / BK).div_ceil(split),
            sms,
        ) + if split > 1 {
            Cost::GPU.split_sum(split * self.outputs() * n)
        } else {
            0.0
        }
    }

    /// The tile and K split (at most `max_split` ways) for batch `n`, of
    /// a kernel with a BN-ReLU `prologue` on its input or without, for a
    /// GPU with `cp.async` (`async_copies`) or without.
    pub fn choose(
        &self,
        n: u64,
        sms: u64,
        max_split: u64,
        prologue: bool,
        async_copies: bool,
    ) -> Choice {
        let steps = self.k_padded() / BK;
        let mut best = Choice {
            tile: TILES[0],
            split: 1,
        };
        // A prologue kernel holds its im2col column and the columns'
        // channels in registers during the FMAs (`TileLoad::fetch`), and
        // without `cp.async` every kernel holds its column and its weight
        // run there. ptxas fits twelve such values a thread under the
        // register caps: a prologue's four column elements and channels
        // (128×128, 128×64), and on sm_75 eight column elements and four
        // weights (64×128) or eight and two (the 8×4 tile). Sixteen
        // spilled: the 64-channel blocks and the 8×4 tile with a prologue
        // (sm_80), a 128×64 prologue kernel with its weights (sm_75).
        let staged = prologue || !async_copies;
        let in_flight = |t: &Tile| {
            t.column_rows() * (1 + u64::from(prologue))
                + if async_copies { 0 } else { t.weight_run() }
        };
        //
        // The 32-channel 8×4 tile is for layers of at most 32 channels a
        // group, where every 8×8 tile computes half its rows or more for
        // nothing. On wider layers it wins in the model only by a few
        // percent of wave quantization, against 2.5 times the L2 traffic
        // per FMA of a 128×128 tile and fewer FFMAs per instruction, which
        // the uncalibrated model weighs too roughly to trust.
        let tiles = TILES
            .iter()
            .filter(|t| (!staged || in_flight(t) <= 12) && (t.tm * t.tn != 32 || self.ocg <= t.bm));
        for &tile in tiles {
            for split in SPLITS {
                // Equal slices of at least MIN_SLICE steps.
                let uneven = !steps.is_multiple_of(split) || steps < MIN_SLICE * split;
                // grid.z (groups × slices) is at most 65535.
                let too_many = split > max_split || self.groups * split > 65535;
                if split > 1 && (uneven || too_many) {
                    continue;
                }
                // Where the model sees a tie (latency-bound steps cost
                // the same whatever their FMAs), the tile that issues
                // fewer instructions for its outputs, padding included.
                let key = |c: &Choice| {
                    let issued = self.padded(&c.tile, n) as f64 / c.tile.efficiency();
                    (self.cost(&c.tile, c.split, n, sms), issued)
                };
                let c = Choice { tile, split };
                if key(&c) < key(&best) {
                    best = c;
                }
            }
        }
        best
    }
}

/// What the cost model picks for a layer at one batch size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Choice {
    pub tile: Tile,
    /// Slices of K (1: no split). Each slice's block writes its partial
    /// tile to the scratch and a second kernel (`split_k`) sums them in
    /// order and applies the epilogue, so results do not depend on timing.
    pub split: u64,
}

/// The K splits the cost model tries.
const SPLITS: [u64; 6] = [1, 2, 4, 8, 16, 32];
/// The fewest K steps a slice may have: the pipeline's fill and the
/// epilogue cost about as much as a few steps.
const MIN_SLICE: u64 = 8;

/// The constants of the cost model: a GPU in round numbers (cycles at the
/// multiprocessor clock). Estimates, not measurements: nothing here has
/// been calibrated on a GPU yet (`resnetc bench --target cuda --layers`
/// times every launch, for that).
struct Cost {
    /// FMAs a multiprocessor issues per cycle (fp32).
    fma: f64,
    /// The shortest K step: a global load's latency and the barrier, which
    /// the register prefetch hides only behind that many FMAs.
    step_latency: f64,
    /// Filling the pipeline and storing the tile, per wave of blocks.
    fixed: f64,
    /// One more dependent kernel in a CUDA graph.
    launch: f64,
    /// Bytes per cycle the whole GPU moves through L2.
    bytes: f64,
}

impl Cost {
    const GPU: Cost = Cost {
        fma: 128.0,
        step_latency: 600.0,
        fixed: 1500.0,
        launch: 2500.0,
        bytes: 2000.0,
    };

    /// `blocks` blocks of tile `t`, `steps` K steps each: waves of blocks
    /// over the multiprocessors (as many resident at once as registers
    /// allow), each step as long as its FMAs on the multiprocessor shared
    /// by the blocks resident on it, its loads through the GPU's L2, or
    /// its latency.
    fn gemm(&self, t: &Tile, blocks: u64, steps: u64, sms: u64) -> f64 {
        let eff = t.efficiency();
        let per_sm = blocks.div_ceil(sms);
        let resident = t.resident();
        let waves = per_sm.div_ceil(resident) as f64;
        let active = per_sm.min(resident) as f64;
        let fmas = active * (t.bm * t.bn * BK) as f64 / (self.fma * eff);
        // Every busy multiprocessor's blocks load their `BK`-deep slices of
        // the weight and the input through L2 each step: small tiles load
        // more per FMA, which at large batches makes L2 the bound.
        let busy = blocks.min(sms) as f64;
        let loads = busy * active * ((t.bm + t.bn) * BK * 4) as f64 / self.bytes;
        let step = fmas.max(loads).max(self.step_latency);
        waves * (steps as f64 * step + self.fixed)
    }

    /// The split-K sum of `partials` partial elements: one more launch,
    /// the partials written once and read once.
    fn split_sum(&self, partials: u64) -> f64 {
        self.launch + 8.0 * partials as f64 / self.bytes
    }
}

/// A kernel computing one slice of K: block `z` is slice `z % ways` of
/// group `z / ways`, and writes its raw tile to the scratch at argument
/// `scratch`, as `[slice][channel][pixel of the batch]`.
#[derive(Clone, Copy, Debug)]
pub struct Split {
    pub ways: u64,
    pub scratch: usize,
}

/// Emits the GEMM kernel of `c` with tile `t`. Arguments: y, x, the packed
/// weight, then the fused operands (`f`), then (when some batch splits
/// this layer) the scratch. With `split` the kernel computes a K slice and
/// leaves bias, residual and activation to the split-K sum.
#[allow(clippy::too_many_arguments)]
pub fn emit(
    k: &mut Kern<'_, '_>,
    c: &ConvGemm,
    t: &Tile,
    split: Option<Split>,
    fused: &Fused,
    f: &FusedArgs,
    strides: (u64, u64, u64),
) {
    let (ys, xs, zs) = strides;
    let mode = k.mode;
    // Registers that let `resident` blocks share a multiprocessor. ptxas
    // left alone takes a few more than that for some layers (up to 131 for
    // the 8×8 tile), which halves their occupancy. The 2×2 tile needs
    // 31-56 unasked, and a cap of 64 made ptxas spill one that needs 40
    // (a linear layer); the ptxas test holds it to the budget instead.
    if t.tm * t.tn > 4 {
        k.max_registers(t.register_cap());
    }
    let (y, x, wp) = (k.arg(0), k.arg(1), k.arg(2));
    let pro = f.prologue.map(|(s, h)| (k.arg(s), k.arg(h)));
    let bias = f.bias.map(|b| k.arg(b));
    let z = f.residual.map(|r| k.arg(r));
    let kp = c.k_padded();
    let steps = kp / BK;
    // The block's K steps: `lo..lo + per`. Slices are equal (the cost
    // model splits only where they are), so the trip count is a constant;
    // the loop counts from 0, the weight pointer is rebased to the
    // block's first row and step, and `lo` stays live only as a 32-bit
    // value for the im2col rows (the 8×8 split kernels are a register or
    // two from spilling).
    let per = split.map_or(steps, |s| steps / s.ways);
    debug_assert!(
        split.is_none_or(|s| s.ways > 1 && steps.is_multiple_of(s.ways)),
        "uneven split {split:?} of {steps} steps"
    );
    let (bn0, bm0, g, slice, lo) = {
        let e = &k.e;
        let (bn0, bm0) = (
            e.mul(k.block(0), e.int(t.bn)),
            e.mul(k.block(1), e.int(t.bm)),
        );
        match split {
            None => (bn0, bm0, k.block(2), None, e.int(0)),
            Some(s) => {
                let (g, slice) = e.udivrem(k.block(2), e.int(s.ways));
                (bn0, bm0, g, Some(slice), e.mul(slice, e.int(per)))
            }
        }
    };
    let npix = k.e.mul(k.batch, k.e.int(c.pixels()));
    let (wblock, lo32) = {
        let e = &k.e;
        let row = e.add(e.mul(g, e.int(kp)), e.mul(lo, e.int(BK)));
        let at = e.add(e.mul(row, e.int(c.m_padded())), bm0);
        (e.at(wp, at), e.narrow(lo))
    };
    // Two stages of shared tiles: while the block multiplies stage
    // `step % 2`, each thread's loads for the next step are in flight and
    // land in the other stage, so global latency hides behind the FMAs and
    // one barrier per step suffices.
    let (a_len, b_len) = t.stage();
    let a_sh = k.shared("a", 2 * a_len);
    let b_sh = k.shared("b", 2 * b_len);
    let ld = TileLoad {
        c,
        t,
        fused,
        x,
        wp: wblock,
        lo: lo32,
        pro,
        g,
        bn0,
        npix,
        xs,
        mem: k.memory(),
    };
    let acc = k.private(t.tm * t.tn);
    k.phase(|e, th| {
        for j in 0..t.tm * t.tn {
            e.b.build_store(acc.at(e, mode, th, j), e.f32(0.0))
                .expect("store");
        }
        let first = ld.fetch(e, th, e.int32(0), a_sh, b_sh);
        ld.put(e, th, a_sh, b_sh, &first);
    });
    k.copies_landed();
    k.barrier();
    // A 32-bit counter: one register fewer than 64 bits.
    let zero = k.e.int32(0);
    k.for_range(zero, k.e.int32(per), |k, i| {
        k.phase(|e, th| {
            // The last step fetches itself again: no branch, and the
            // stage it writes is not read any more.
            let next = e.smin(e.add(i, e.int32(1)), e.int32(per - 1));
            let stage = e.widen(e.b.build_and(i, e.int32(1), "").expect("and"));
            let other = e.sub(e.int(1), stage);
            let a_next = e.at(a_sh, e.mul(other, e.int(a_len)));
            let b_next = e.at(b_sh, e.mul(other, e.int(b_len)));
            let ahead = ld.fetch(e, th, next, a_next, b_next);
            let (a_now, b_now) = (e.mul(stage, e.int(a_len)), e.mul(stage, e.int(b_len)));
            let (ty, tx) = thread_tile(e, th, t);
            let mut accs: Vec<FloatValue> = (0..t.tm * t.tn)
                .map(|j| {
                    e.b.build_load(e.f32t, acc.at(e, mode, th, j), "")
                        .expect("load")
                        .into_float_value()
                })
                .collect();
            for kk in 0..BK {
                let av = load_run(
                    e,
                    &ld.mem,
                    a_sh,
                    e.add(a_now, e.add(e.int(kk * t.bm), e.mul(ty, e.int(t.tm)))),
                    t.tm,
                );
                let run = t.col_run();
                let b_row = e.add(b_now, e.add(e.int(kk * t.bn), e.mul(tx, e.int(run))));
                let mut bv: Vec<FloatValue> = Vec::new();
                for q in 0..t.tn / run {
                    let at = e.add(b_row, e.int(t.col_offset(q * run)));
                    bv.extend(load_run(e, &ld.mem, b_sh, at, run));
                }
                // accs is row-major [tm][tn].
                for (row, &a) in accs.chunks_mut(t.tn as usize).zip(&av) {
                    for (acc, &b) in row.iter_mut().zip(&bv) {
                        *acc = e.fmuladd(a, b, *acc);
                    }
                }
            }
            for (j, &v) in accs.iter().enumerate() {
                e.b.build_store(acc.at(e, mode, th, j as u64), v)
                    .expect("store");
            }
            ld.put(e, th, a_next, b_next, &ahead);
        });
        k.copies_landed();
        k.barrier();
    });
    let scratch = split.map(|s| k.arg(s.scratch));
    k.phase(|e, th| {
        let (ty, tx) = thread_tile(e, th, t);
        // Column by column, so that only one column's image and pixel are
        // live beside the accumulators (all eight at once spilled).
        for j in 0..t.tn {
            let pg = e.add(
                bn0,
                e.add(e.mul(tx, e.int(t.col_run())), e.int(t.col_offset(j))),
            );
            let inside = e.ult(pg, npix);
            e.if_else(
                inside,
                |e| {
                    let (img, pix) = e.udivrem(pg, e.int(c.pixels()));
                    let y_col = e.at(y, e.add(e.mul(img, e.int(ys)), pix));
                    let z_col = z.map(|z| e.at(z, e.add(e.mul(img, e.int(zs)), pix)));
                    for i in 0..t.tm {
                        let m = e.add(bm0, e.add(e.mul(ty, e.int(t.tm)), e.int(i)));
                        let ok_m = e.ult(m, e.int(c.ocg));
                        let a = acc.at(e, mode, th, i * t.tn + j);
                        e.if_else(
                            ok_m,
                            |e| {
                                let v =
                                    e.b.build_load(e.f32t, a, "")
                                        .expect("load")
                                        .into_float_value();
                                let oc = e.add(e.mul(g, e.int(c.ocg)), m);
                                if let (Some(ws), Some(slice)) = (scratch, slice) {
                                    // [slice][channel][pixel of the batch]
                                    let row = e.add(e.mul(slice, e.int(c.groups * c.ocg)), oc);
                                    e.store(ws, e.add(e.mul(row, npix), pg), v);
                                    return;
                                }
                                let at = e.mul(oc, e.int(c.pixels()));
                                let zi = z_col.map(|z| e.at(z, at));
                                let v = epilogue_value(e, fused, v, bias, oc, zi);
                                e.store(y_col, at, v);
                            },
                            |_| {},
                        );
                    }
                },
                |_| {},
            );
        }
    });
}

/// What `TileLoad::fetch` of a staged kernel loaded into registers: its
/// im2col column and each element's (inside, channel), and, without
/// `cp.async`, its weight run as vectors.
struct Fetched<'ctx> {
    vals: Vec<FloatValue<'ctx>>,
    gates: Vec<(IntValue<'ctx>, IntValue<'ctx>)>,
    weights: Vec<BasicValueEnum<'ctx>>,
}

/// One thread's share of a K step's loads: a run of the weight tile and
/// a column of the im2col tile (zero padding, stride, dilation and the
/// BN-ReLU prologue applied on the way), and where they go in shared
/// memory.
struct TileLoad<'c, 'ctx> {
    c: &'c ConvGemm,
    t: &'c Tile,
    fused: &'c Fused,
    x: PointerValue<'ctx>,
    /// The packed weights at this block's group, first K step and first
    /// channel.
    wp: PointerValue<'ctx>,
    /// The block's first K step (32-bit).
    lo: IntValue<'ctx>,
    pro: Option<(PointerValue<'ctx>, PointerValue<'ctx>)>,
    g: IntValue<'ctx>,
    bn0: IntValue<'ctx>,
    npix: IntValue<'ctx>,
    xs: u64,
    mem: Memory<'ctx>,
}

impl<'ctx> TileLoad<'_, 'ctx> {
    /// Weight run: `v` consecutive channels of row `r` at column `col`.
    fn weight_slot(
        &self,
        e: &Emitter<'_, 'ctx>,
        th: IntValue<'ctx>,
    ) -> (u64, IntValue<'ctx>, IntValue<'ctx>) {
        let v = self.t.weight_run();
        let per_row = self.t.bm / v;
        let (r, col) = e.udivrem(th, e.int(per_row));
        (v, r, e.mul(col, e.int(v)))
    }

    /// im2col column: pixel `p` of the tile, rows from `r0` every
    /// `threads / BN`.
    fn column(
        &self,
        e: &Emitter<'_, 'ctx>,
        th: IntValue<'ctx>,
    ) -> (IntValue<'ctx>, IntValue<'ctx>) {
        let (r0, p) = e.udivrem(th, e.int(self.t.bn));
        (p, r0)
    }

    /// Where element `j` of the column at pixel `p` from row `r0` goes in
    /// a stage of the im2col tile.
    fn column_slot(
        &self,
        e: &Emitter<'_, 'ctx>,
        (p, r0): (IntValue<'ctx>, IntValue<'ctx>),
        j: u64,
    ) -> IntValue<'ctx> {
        let row = e.add(e.narrow(r0), e.int32(j * self.t.column_stride()));
        e.widen(e.add(e.mul(row, e.int32(self.t.bn)), e.narrow(p)))
    }

    /// Thread `th`'s share of the block's K step `i` (32-bit, from its
    /// first), copied global → shared into the stage at `a_st` / `b_st`
    /// by `cp.async`, so that no register holds it in flight: its weight
    /// run, and its im2col column (zeros for padding). A kernel with a
    /// BN-ReLU prologue loads the column into registers instead and
    /// returns it raw for `put`, so that only these loads are in flight
    /// during the step's FMAs; on a GPU without `cp.async` the weight run
    /// and the column both go that way (the register prefetch of the
    /// classic double-buffered GEMM).
    fn fetch(
        &self,
        e: &mut Emitter<'_, 'ctx>,
        th: IntValue<'ctx>,
        i: IntValue<'ctx>,
        a_st: PointerValue<'ctx>,
        b_st: PointerValue<'ctx>,
    ) -> Fetched<'ctx> {
        let (c, t) = (self.c, self.t);
        let (kdim, mp) = (c.k(), c.m_padded());
        let (v, r, col) = self.weight_slot(e, th);
        let krow = e.add(e.mul(e.widen(i), e.int(BK)), r);
        let (src, dst) = (
            e.add(e.mul(krow, e.int(mp)), col),
            e.add(e.mul(r, e.int(t.bm)), col),
        );
        let width = v.min(4);
        debug_assert_eq!(v % width, 0, "a weight run of whole vectors");
        let mut f = Fetched {
            vals: Vec::new(),
            gates: Vec::new(),
            weights: Vec::new(),
        };
        for q in 0..v / width {
            let off = e.int(q * width);
            let (to, from) = (e.at(a_st, e.add(dst, off)), e.at(self.wp, e.add(src, off)));
            if self.mem.async_copies {
                self.mem.copy_async(e, to, from, 4 * width, None);
            } else {
                f.weights
                    .push(vector_access(e, &self.mem, from, width, None));
            }
        }
        let column = self.column(e, th);
        let (p, r0) = column;
        let pg = e.add(self.bn0, p);
        let inside_p = e.ult(pg, self.npix);
        let (img, pix) = e.udivrem(pg, e.int(c.pixels()));
        let (oy, ox) = e.udivrem(pix, e.int(c.ow));
        // Image 0 for a pixel past the batch: every address stays inside
        // the input, padding included (a zero-filling copy reads none).
        let img = e.pick(inside_p, img, e.int(0));
        let ximg = e.at(self.x, e.mul(img, e.int(self.xs)));
        // Within one image every index fits in 32 bits; the per-step
        // decomposition of k runs there.
        let step32 = e.add(self.lo, i);
        let (oy, ox, r0) = (e.narrow(oy), e.narrow(ox), e.narrow(r0));
        let ch0 = e.narrow(e.mul(self.g, e.int(c.icg)));
        let (rows, rstride) = (t.column_rows(), t.column_stride());
        // The input pixel of tap (ky, kx), and whether it is inside the
        // image. Without padding it always is: the output size leaves
        // every tap of every output pixel in the image.
        let tap_pixel = |e: &Emitter<'_, 'ctx>, ky, kx, ok: IntValue<'ctx>| {
            let iy = e.add(
                e.sub(e.mul(oy, e.int32(c.sh)), e.int32(c.ph)),
                e.mul(ky, e.int32(c.dh)),
            );
            let ix = e.add(
                e.sub(e.mul(ox, e.int32(c.sw)), e.int32(c.pw)),
                e.mul(kx, e.int32(c.dw)),
            );
            let mut ok = ok;
            if c.ph > 0 {
                ok = e.b.build_and(ok, e.ult(iy, e.int32(c.h)), "").expect("and");
            }
            if c.pw > 0 {
                ok = e.b.build_and(ok, e.ult(ix, e.int32(c.w)), "").expect("and");
            }
            (e.add(e.mul(iy, e.int32(c.w)), ix), ok)
        };
        let hw = e.int32(c.h * c.w);
        // Element `j` of the column: (inside, channel, index in the image),
        // the channel 0 and the index 0 where it is padding (safe
        // addresses).
        let mut elems = Vec::new();
        if c.tap_major() {
            // One tap for the whole step: `BK` divides the channels.
            let (tap, ic0) = e.udivrem(e.mul(step32, e.int32(BK)), e.int32(c.icg));
            let (ky, kx) = e.udivrem(tap, e.int32(c.kw));
            let (at, ok) = tap_pixel(e, ky, kx, inside_p);
            let ch = e.add(ch0, e.add(ic0, r0));
            let base = e.pick(ok, e.add(e.mul(ch, hw), at), e.int32(0));
            for j in 0..rows {
                let chj = e.pick(ok, e.add(ch, e.int32(j * rstride)), e.int32(0));
                let off = e.int32(j * rstride * c.h * c.w);
                elems.push((ok, chj, e.add(base, off)));
            }
        } else {
            for j in 0..rows {
                let r = e.add(r0, e.int32(j * rstride));
                let kk = e.add(e.mul(step32, e.int32(BK)), r);
                let taps = c.kh * c.kw;
                let (ic, tap) = e.udivrem(kk, e.int32(taps));
                let (ky, kx) = e.udivrem(tap, e.int32(c.kw));
                // Rows past K (its padding to whole steps) load nothing.
                let inside_k =
                    e.b.build_and(inside_p, e.ult(kk, e.int32(kdim)), "")
                        .expect("and");
                let (at, ok) = tap_pixel(e, ky, kx, inside_k);
                let ch = e.add(ch0, ic);
                let idx = e.pick(ok, e.add(e.mul(ch, hw), at), e.int32(0));
                elems.push((ok, e.pick(ok, ch, e.int32(0)), idx));
            }
        }
        for (j, (ok, ch, idx)) in elems.into_iter().enumerate() {
            let src = e.at(ximg, e.widen(idx));
            if self.pro.is_none() && self.mem.async_copies {
                let to = e.at(b_st, self.column_slot(e, column, j as u64));
                self.mem.copy_async(e, to, src, 4, Some(ok));
                continue;
            }
            // The address is safe either way; `put` zeroes the padding.
            let v = e.b.build_load(e.f32t, src, "").expect("load");
            f.vals.push(v.into_float_value());
            f.gates.push((ok, ch));
        }
        f
    }

    /// Stores what a staged kernel's `fetch` loaded into the stages at
    /// `a_st` / `b_st`: the weight run as it came, the column with the
    /// prologue applied and its padding zeroed (nothing for a kernel whose
    /// copies are asynchronous).
    fn put(
        &self,
        e: &mut Emitter<'_, 'ctx>,
        th: IntValue<'ctx>,
        a_st: PointerValue<'ctx>,
        b_st: PointerValue<'ctx>,
        f: &Fetched<'ctx>,
    ) {
        if !f.weights.is_empty() {
            let (v, r, col) = self.weight_slot(e, th);
            let width = v.min(4);
            let dst = e.add(e.mul(r, e.int(self.t.bm)), col);
            for (q, &w) in (0..).zip(&f.weights) {
                let to = e.at(a_st, e.add(dst, e.int(q * width)));
                vector_access(e, &self.mem, to, width, Some(w));
            }
        }
        let column = self.column(e, th);
        for (j, (&x, &(ok, ch))) in f.vals.iter().zip(&f.gates).enumerate() {
            let mut x = x;
            if let (Some(pro), Some((s, h))) = (self.fused.prologue, self.pro) {
                // BN-ReLU of the input; padding stays zero after it.
                let ch = e.widen(ch);
                x = e.fmuladd(x, e.load(s, ch), e.load(h, ch));
                if let Some(a) = pro.act {
                    x = e.act(x, a);
                }
            }
            x = e.pick_f32(ok, x, e.f32(0.0));
            e.store(b_st, self.column_slot(e, column, j as u64), x);
        }
    }
}

/// A load of `width` floats at `p` (`store`: None) or a store of the
/// vector `store` there, as one access of `4 · width` bytes, which must
/// be that aligned (the emulation records one that is not).
fn vector_access<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    mem: &Memory<'ctx>,
    p: PointerValue<'ctx>,
    width: u64,
    store: Option<BasicValueEnum<'ctx>>,
) -> BasicValueEnum<'ctx> {
    mem.check_aligned(e, p, 4 * width);
    let ty = match width {
        1 => e.f32t.as_basic_type_enum(),
        _ => e.f32t.vec_type(width as u32).as_basic_type_enum(),
    };
    let (inst, v) = match store {
        Some(v) => (e.b.build_store(p, v).expect("store"), v),
        None => {
            let v = e.b.build_load(ty, p, "").expect("load");
            (v.as_instruction_value().expect("a load"), v)
        }
    };
    inst.set_alignment(4 * width as u32)
        .expect("an access takes an alignment");
    v
}

/// (row, column) of a thread's register tile in the block tile.
fn thread_tile<'ctx>(
    e: &Emitter<'_, 'ctx>,
    th: IntValue<'ctx>,
    t: &Tile,
) -> (IntValue<'ctx>, IntValue<'ctx>) {
    e.udivrem(th, e.int(t.bn / t.tn))
}

/// `len` consecutive floats from `base[idx..]`, as 4-wide vector loads
/// where `len` allows (the index is a multiple of `len`, the base 16-byte
/// aligned).
fn load_run<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    mem: &Memory<'ctx>,
    base: PointerValue<'ctx>,
    idx: IntValue<'ctx>,
    len: u64,
) -> Vec<FloatValue<'ctx>> {
    let width = len.min(4);
    let vt = e.f32t.vec_type(width as u32);
    let mut out = Vec::new();
    for q in 0..len / width {
        let p = e.at(base, e.add(idx, e.int(q * width)));
        if width == 1 {
            out.push(
                e.b.build_load(e.f32t, p, "")
                    .expect("load")
                    .into_float_value(),
            );
            continue;
        }
        mem.check_aligned(e, p, 4 * width);
        let v = e.b.build_load(vt, p, "").expect("load");
        v.as_instruction_value()
            .and_then(|i| i.set_alignment(4 * width as u32).ok())
            .expect("a load takes an alignment");
        let v = v.into_vector_value();
        for l in 0..width {
            let x =
                e.b.build_extract_element(v, e.ctx.i32_type().const_int(l, false), "")
                    .expect("lane");
            out.push(x.into_float_value());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every tile's loads split evenly over its threads: the weight tile
    /// in runs of whole vectors, the im2col tile in whole rows.
    #[test]
    fn tiles_divide_their_loads() {
        for t in TILES {
            let th = t.threads();
            assert_eq!((BK * t.bm) % th, 0, "{t:?}");
            let run = BK * t.bm / th;
            assert!(
                run.is_multiple_of(4.min(run)) && t.bm.is_multiple_of(run),
                "{t:?}"
            );
            assert_eq!(th % t.bn, 0, "{t:?}");
            assert_eq!((BK * t.bn) % th, 0, "{t:?}");
            assert_eq!(BK % (th / t.bn), 0, "{t:?}");
            assert_eq!(M_PAD % t.bm, 0, "{t:?}");
        }
    }

    /// Shared-memory wavefronts of one warp-wide load, and the fewest its
    /// bytes need: the banks (4-byte words, 32 of them) serve one distinct
    /// word each per wavefront (a word read by several threads is a
    /// broadcast), and a wavefront moves at most 128 bytes.
    fn wavefronts(words: &[u64]) -> (u64, u64) {
        let mut distinct = words.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        let per_bank = (0..32)
            .map(|b| distinct.iter().filter(|&&w| w % 32 == b).count() as u64)
            .max()
            .unwrap_or(0);
        let least = (distinct.len() as u64 * 4).div_ceil(128);
        (per_bank.max(least), least)
    }

    /// The K loop's fragment loads are free of bank conflicts for every
    /// tile: each warp-wide vector load takes the fewest wavefronts its
    /// bytes need, and the thread columns cover the block tile once.
    #[test]
    fn fragment_loads_take_the_fewest_wavefronts() {
        for t in TILES {
            let (cols, run) = (t.bn / t.tn, t.col_run());
            let mut covered: Vec<u64> = (0..cols)
                .flat_map(|tx| (0..t.tn).map(move |j| tx * run + t.col_offset(j)))
                .collect();
            covered.sort_unstable();
            assert_eq!(covered, (0..t.bn).collect::<Vec<_>>(), "{t:?}");
            let arun = t.tm.min(4);
            for warp in 0..t.threads() / 32 {
                let ids: Vec<(u64, u64)> = (32 * warp..32 * (warp + 1))
                    .map(|th| (th / cols, th % cols))
                    .collect();
                for q in 0..t.tm / arun {
                    let words: Vec<u64> = ids
                        .iter()
                        .flat_map(|&(ty, _)| (0..arun).map(move |l| ty * t.tm + q * arun + l))
                        .collect();
                    let (got, least) = wavefronts(&words);
                    assert_eq!(got, least, "{t:?} A load {q}");
                }
                // `load_run`'s vectors: at most 4 floats, within a run.
                let width = run.min(4);
                for q in 0..t.tn / width {
                    let first = t.col_offset(q / (run / width) * run) + q % (run / width) * width;
                    let words: Vec<u64> = ids
                        .iter()
                        .flat_map(|&(_, tx)| (0..width).map(move |l| tx * run + first + l))
                        .collect();
                    let (got, least) = wavefronts(&words);
                    assert_eq!(got, least, "{t:?} B load {q}");
                }
            }
        }
    }

    #[test]
    fn packing_puts_channels_innermost() {
        let c = ConvGemm::linear(3, 2);
        // w = [[1, 2, 3], [4, 5, 6]]
        let p = c.pack(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(p.len(), 8 * 128);
        assert_eq!(
            (p[0], p[1], p[128], p[129], p[256], p[257]),
            (1.0, 4.0, 2.0, 5.0, 3.0, 6.0)
        );
        assert!(p[2..128].iter().all(|&v| v == 0.0) && p[384..].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn the_cost_model_fills_the_gpu_for_small_layers() {
        // resnet50's last 3x3 conv at batch 1 (7x7 output): 16 blocks of 128x128
        // would leave most of the GPU idle.
        let g = ConvGeom {
            out_channels: 512,
            kernel: [3, 3],
            stride: [1, 1],
            pad: [1, 1],
            dilation: [1, 1],
            groups: 1,
        };
        let late = ConvGemm::conv(&g, (512, 7, 7), (512, 7, 7));
        let c = late.choose(1, 132, 32, false, true);
        assert!(c.split > 1, "{c:?}");
        // Unsplit, 4 blocks of 128×128 or 128×64 would run; split, at
        // least nine in ten multiprocessors get a block.
        let tiles = 512u64.div_ceil(c.tile.bm) * 49u64.div_ceil(c.tile.bn);
        assert!(
            tiles * c.split * 10 >= 132 * 9,
            "{c:?} leaves multiprocessors idle"
        );
        // A 56x56 layer at batch 64: thousands of blocks, the big tile,
        // nothing to gain from splitting.
        let early = ConvGemm::conv(&g, (256, 56, 56), (256, 56, 56));
        assert_eq!(
            early.choose(64, 132, 32, false, true),
            Choice {
                tile: TILES[0],
                split: 1
            }
        );
        // A slice never gets fewer than MIN_SLICE steps.
        let shallow = ConvGemm::linear(64, 512);
        assert!(shallow.choose(1, 132, 32, false, true).split <= 64 / BK / MIN_SLICE);
        assert_eq!(late.choose(1, 132, 1, false, true).split, 1);
    }

    /// Without `cp.async` (sm_75) a tile holds at most twelve loads a
    /// thread in registers across the FMAs, so narrow and 64-channel layers
    /// keep their narrow tiles (the 8×4 tile, 64-row 8×8 blocks), and a
    /// prologue kernel never gets one holding more.
    #[test]
    fn without_async_copies_tiles_hold_few_loads_in_registers() {
        let g = |oc| ConvGeom {
            out_channels: oc,
            kernel: [3, 3],
            stride: [1, 1],
            pad: [1, 1],
            dilation: [1, 1],
            groups: 1,
        };
        let growth = ConvGemm::conv(&g(32), (128, 56, 56), (32, 56, 56));
        let t = growth.choose(64, 40, 32, false, false).tile;
        assert_eq!((t.bm, t.tm * t.tn), (32, 32), "{t:?}");
        let narrow = ConvGemm::conv(&g(64), (64, 56, 56), (64, 56, 56));
        assert_eq!(narrow.choose(64, 40, 32, false, false).tile.bm, 64);
        for c in [
            growth,
            narrow,
            ConvGemm::conv(&g(512), (512, 7, 7), (512, 7, 7)),
        ] {
            for n in [1, 4, 16, 64] {
                for prologue in [false, true] {
                    let t = c.choose(n, 40, 32, prologue, false).tile;
                    let held = t.column_rows() * (1 + u64::from(prologue)) + t.weight_run();
                    assert!(held <= 12, "{t:?} holds {held} (prologue {prologue})");
                }
            }
        }
    }

    /// DenseNet's growth-rate convs (32 channels) compute no padded rows,
    /// at large batches and at batch 1 (where the model's steps are
    /// latency-bound and the tie goes to the tile issuing least); wide
    /// layers never get the 32-row tile.
    #[test]
    fn narrow_layers_get_narrow_tiles() {
        let g = |oc, k: usize| ConvGeom {
            out_channels: oc,
            kernel: [k, k],
            stride: [1, 1],
            pad: [k / 2, k / 2],
            dilation: [1, 1],
            groups: 1,
        };
        // (At 7×7 a 64×64 tile pads as much: 49 of its 64 columns.)
        for (hw, n) in [(56, 64), (56, 16), (28, 4), (14, 1)] {
            let c = ConvGemm::conv(&g(32, 3), (128, hw, hw), (32, hw, hw));
            let t = c.choose(n, 132, 32, false, true).tile;
            assert_eq!(t.bm, 32, "{hw}x{hw} at batch {n}: {t:?}");
        }
        // resnet50's layer2 1×1 convs at batch 16 are where the model
        // alone would take it (by wave quantization).
        for (ic, oc, k) in [
            (128u64, 512u64, 1),
            (512, 128, 1),
            (128, 128, 3),
            (64, 64, 3),
        ] {
            for hw in [56, 28, 14, 7] {
                let c = ConvGemm::conv(&g(oc as usize, k), (ic, hw, hw), (oc, hw, hw));
                for n in [1, 4, 16, 64] {
                    let t = c.choose(n, 132, 32, false, true).tile;
                    assert!(
                        t.tm * t.tn != 32,
                        "{ic}->{oc} {k}x{k} {hw}x{hw} at batch {n}: {t:?}"
                    );
                }
            }
        }
    }
}
