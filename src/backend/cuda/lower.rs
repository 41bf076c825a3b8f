//! Lowers an optimized, planned graph to CUDA kernels and the launch plan:
//! one or more launches per op in schedule order, kernels shared between
//! ops of one configuration (the pointers are arguments), constants laid
//! out once with conv and linear weights packed for the GEMM kernel.

use super::gemm::{self, Choice, ConvGemm, Split};
use super::kernels::{self, FusedArgs, OpArgs, THREADS};
use super::plan::{Arg, Launch, LaunchPlan, Scratch, Variant, Written, FORMAT};
use super::simt::{Kern, Mode, ThreadOrder};
use super::split_k;
use super::CudaOptions;
use crate::backend::llvm::LlvmError;
use crate::backend::shared::{lay_out, symbol};
use crate::ir::graph::{chw, numel};
use crate::ir::{Graph, Op};
use crate::weights::Weights;
use inkwell::context::Context;
use inkwell::module::Module;
use petgraph::stable_graph::NodeIndex;
use std::collections::HashMap;

/// Batches at which the cost model picks each GEMM's tile; a launch gets
/// one variant per distinct choice.
const TUNE_BATCHES: [u64; 4] = [1, 4, 16, 64];

pub struct Lowered<'ctx> {
    pub module: Module<'ctx>,
    pub plan: LaunchPlan,
    pub consts: Vec<f32>,
}

/// The GEMM view of a conv or linear layer.
fn gemm_of(graph: &Graph, n: NodeIndex) -> Option<ConvGemm> {
    let node = graph.node(n);
    let x = || graph.operands(n)[0];
    match &node.op {
        Op::Conv { geom, .. } => Some(ConvGemm::conv(
            geom,
            chw(&graph.node(x()).shape),
            chw(&node.shape),
        )),
        Op::Linear { out_features, .. } => Some(ConvGemm::linear(
            numel(&graph.node(x()).shape) as u64,
            *out_features as u64,
        )),
        _ => None,
    }
}

pub fn lower<'ctx>(
    ctx: &'ctx Context,
    graph: &Graph,
    weights: &Weights,
    mode: Mode,
    order: ThreadOrder,
    opts: &CudaOptions,
) -> Result<Lowered<'ctx>, LlvmError> {
    let gpu = super::gpu(&opts.gpu)?;
    let plan = graph.plan.as_ref().ok_or(LlvmError::Unplanned)?;
    let sym = symbol(&graph.name);
    let module = ctx.create_module(&sym);
    let derived = crate::weights::materialize(graph, weights);
    // Weight node -> the GEMM that reads it packed.
    let mut packed: HashMap<NodeIndex, ConvGemm> = HashMap::new();
    for &n in &plan.schedule {
        if let Some(c) = gemm_of(graph, n) {
            let w = graph.operands(n)[1];
            if packed.insert(w, c).is_some_and(|old| old != c) {
                return Err(LlvmError::Internal(format!(
                    "weight `{}` is read by two different layers",
                    graph.node(w).name
                )));
            }
        }
    }
    let (offsets, consts) = lay_out(graph, weights, &derived, |n, t| {
        packed.get(&n).map(|c| c.pack(t))
    });
    let arg_of = |s: NodeIndex| -> Arg {
        if graph.node(s).op.is_const() {
            Arg::Const {
                offset: offsets[&s] as u64,
            }
        } else {
            let st = plan.storage[&s];
            Arg::Arena {
                per_image: plan.buffers[st.buffer].offset as u64 / 4,
                offset: st.elem_offset as u64,
            }
        }
    };
    let stride_of =
        |s: NodeIndex| -> u64 { plan.storage.get(&s).map_or(0, |st| st.batch_stride as u64) };
    let sms = opts.sms.unwrap_or(gpu.sms).max(1);
    // Split-K partial sums live after the planned buffers.
    let base_per_image = plan.arena_bytes as u64 / 4;
    let scratch_arg = Arg::Arena {
        per_image: base_per_image,
        offset: 0,
    };
    let mut scratch = [0u64; TUNE_BATCHES.len()];
    let mut kernels: HashMap<String, String> = HashMap::new();
    let mut names: Vec<String> = Vec::new();
    let mut launches = Vec::new();
    // Declares the kernel for `key` once; returns its name.
    let mut kernel = |key: String,
                      kind: &str,
                      nargs: usize,
                      threads: u64,
                      body: &mut dyn FnMut(&mut Kern<'_, 'ctx>) -> Result<(), LlvmError>|
     -> Result<String, LlvmError> {
        if let Some(name) = kernels.get(&key) {
            return Ok(name.clone());
        }
        let name = format!("{sym}_k{}_{kind}", names.len());
        let mut k = Kern::new(ctx, &module, mode, &name, nargs as u32, threads);
        k.order = order;
        k.async_copies = gpu.async_copies;
        body(&mut k)?;
        k.finish();
        kernels.insert(key, name.clone());
        names.push(name.clone());
        Ok(name)
    };
    for &n in &plan.schedule {
        let node = graph.node(n);
        if matches!(node.op, Op::Input | Op::Output) || plan.is_view(graph, n) {
            continue;
        }
        let ops = graph.operands(n);
        let slots: Vec<NodeIndex> = std::iter::once(n).chain(ops.iter().copied()).collect();
        let a = OpArgs {
            shapes: slots.iter().map(|&s| chw(&graph.node(s).shape)).collect(),
            strides: slots.iter().map(|&s| stride_of(s)).collect(),
        };
        // Unnamed nodes (a pool written without a label) by their op alone.
        let label = format!("{} {}", node.name, node.op.kind())
            .trim_start()
            .to_string();
        let writes = Some(Written {
            node: n.index(),
            at: arg_of(n),
            from: 0,
            per_image: numel(&node.shape) as u64,
            stride: stride_of(n),
        });
        let key = format!("{:?}|{:?}|{:?}", node.op, a.shapes, a.strides);
        if let (Some(c), Some(fused)) = (gemm_of(graph, n), node.op.fused()) {
            let f = FusedArgs::of(fused);
            let strides = (
                a.strides[0],
                a.strides[1],
                f.residual.map_or(0, |r| a.strides[r]),
            );
            let choices: Vec<Choice> = TUNE_BATCHES
                .iter()
                .map(|&b| {
                    let pro = fused.prologue.is_some();
                    c.choose(b, sms, opts.max_split_k, pro, gpu.async_copies)
                })
                .collect();
            let splits = choices.iter().any(|ch| ch.split > 1);
            let mut args: Vec<Arg> = slots.iter().map(|&s| arg_of(s)).collect();
            if splits {
                args.push(scratch_arg);
            }
            let nargs = args.len();
            let split_of = |ch: &Choice| {
                (ch.split > 1).then_some(Split {
                    ways: ch.split,
                    scratch: nargs - 1,
                })
            };
            let mut variants: Vec<Variant> = Vec::new();
            for (i, (&b, ch)) in TUNE_BATCHES.iter().zip(&choices).enumerate() {
                if ch.split > 1 {
                    scratch[i] = scratch[i].max(ch.split * c.outputs());
                }
                if i > 0 && choices[i - 1] == *ch {
                    continue;
                }
                let t = ch.tile;
                let name = kernel(
                    format!("{key}|{ch:?}|{nargs}"),
                    node.op.kind(),
                    nargs,
                    t.threads(),
                    &mut |k| {
                        gemm::emit(k, &c, &t, split_of(ch), fused, &f, strides);
                        Ok(())
                    },
                )?;
                variants.push(Variant {
                    min_batch: b,
                    kernel: name,
                    x_per_image: c.pixels(),
                    x_tile: t.bn,
                    grid_y: c.ocg.div_ceil(t.bm),
                    grid_z: c.groups * ch.split,
                    block: t.threads(),
                });
            }
            launches.push(Launch {
                label: label.clone(),
                variants,
                args: args.clone(),
                writes: writes.clone(),
            });
            if splits {
                // The sum of the slices where the layer is split; where it
                // is not, an empty grid of the first sum kernel (never
                // launched). `kernel` declares each sum kernel once.
                let mut sum = |sp: Split| {
                    kernel(
                        format!("{key}|split-sum {}|{nargs}", sp.ways),
                        "split_sum",
                        nargs,
                        THREADS,
                        &mut |k| {
                            split_k::emit(k, &c, sp, fused, &f, (strides.0, strides.2));
                            Ok(())
                        },
                    )
                };
                let first = choices.iter().find_map(&split_of).expect("a split");
                let idle = sum(first)?;
                let mut variants: Vec<Variant> = Vec::new();
                for (i, (&b, ch)) in TUNE_BATCHES.iter().zip(&choices).enumerate() {
                    if i > 0 && choices[i - 1].split == ch.split {
                        continue;
                    }
                    let (kernel, x_per_image) = match split_of(ch) {
                        Some(sp) => (sum(sp)?, c.outputs()),
                        None => (idle.clone(), 0),
                    };
                    variants.push(Variant {
                        min_batch: b,
                        kernel,
                        x_per_image,
                        x_tile: THREADS,
                        grid_y: 1,
                        grid_z: 1,
                        block: THREADS,
                    });
                }
                launches.push(Launch {
                    label: format!("{label} (split-K sum)"),
                    variants,
                    args,
                    writes,
                });
            }
            continue;
        }
        if let Op::Concat { placed } = &node.op {
            // One copy per operand not already written into its slice.
            let mut off = 0u64;
            for (i, &o) in ops.iter().enumerate() {
                let per = numel(&graph.node(o).shape) as u64;
                if !placed.get(i).copied().unwrap_or(false) {
                    let sa = OpArgs {
                        shapes: vec![a.shapes[i + 1], a.shapes[i + 1]],
                        strides: vec![a.strides[0], a.strides[i + 1]],
                    };
                    let key = format!("copy|{:?}|{:?}", sa.shapes, sa.strides);
                    let name = kernel(key, "copy", 2, THREADS, &mut |k| {
                        kernels::emit(k, &node.op, &sa)
                    })?;
                    let dst = match arg_of(n) {
                        Arg::Arena { per_image, offset } => Arg::Arena {
                            per_image,
                            offset: offset + off,
                        },
                        c => c,
                    };
                    // Each copy completes its own slice of the value.
                    let writes = Some(Written {
                        node: n.index(),
                        at: dst,
                        from: off,
                        per_image: per,
                        stride: stride_of(n),
                    });
                    launches.push(Launch {
                        label: format!("{label} (operand {i})"),
                        variants: vec![simple(name, per)],
                        args: vec![dst, arg_of(o)],
                        writes,
                    });
                }
                off += per;
            }
            continue;
        }
        // A block per (image, channel) for global pooling; else a thread
        // per output element (per pixel for softmax).
        let (per, threads) = match node.op {
            Op::GlobalAvgPool => (
                a.shapes[0].0,
                kernels::pool_threads(a.shapes[1].1 * a.shapes[1].2),
            ),
            Op::Softmax => (a.shapes[1].1 * a.shapes[1].2, THREADS),
            _ => (numel(&node.shape) as u64, THREADS),
        };
        let name = kernel(key, node.op.kind(), slots.len(), threads, &mut |k| {
            kernels::emit(k, &node.op, &a)
        })?;
        let variant = match node.op {
            Op::GlobalAvgPool => Variant {
                x_tile: 1,
                block: threads,
                ..simple(name, per)
            },
            _ => simple(name, per),
        };
        launches.push(Launch {
            label,
            variants: vec![variant],
            args: slots.iter().map(|&s| arg_of(s)).collect(),
            writes,
        });
    }
    let out_src = graph.operands(graph.output)[0];
    let plan = LaunchPlan {
        format: FORMAT.into(),
        model: graph.name.clone(),
        gpu: gpu.name.into(),
        sms,
        input_shape: graph.input_shape().to_vec(),
        output_shape: graph.output_shape().to_vec(),
        input: arg_of(graph.input),
        input_stride: stride_of(graph.input),
        output: arg_of(out_src),
        output_stride: stride_of(out_src),
        arena_per_image: base_per_image,
        scratch: scratch_entries(&scratch),
        const_elements: consts.len() as u64,
        kernels: names,
        launches,
    };
    Ok(Lowered {
        module,
        plan,
        consts,
    })
}

/// The launch of a one-thread-per-element kernel over `per` elements of
/// every image.
fn simple(kernel: String, per: u64) -> Variant {
    Variant {
        min_batch: 1,
        kernel,
        x_per_image: per,
        x_tile: THREADS,
        grid_y: 1,
        grid_z: 1,
        block: THREADS,
    }
}

/// The scratch per image at each tuning batch, as plan entries (none when
/// no layer is split).
fn scratch_entries(per_batch: &[u64]) -> Vec<Scratch> {
    if per_batch.iter().all(|&s| s == 0) {
        return Vec::new();
    }
    let mut out: Vec<Scratch> = Vec::new();
    for (&b, &per_image) in TUNE_BATCHES.iter().zip(per_batch) {
        if out.last().is_none_or(|s| s.per_image != per_image) {
            out.push(Scratch {
                min_batch: b,
                per_image,
            });
        }
    }
    out
}
