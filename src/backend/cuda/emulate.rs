//! Runs the CUDA kernels on the host: the same SIMT programs emitted in
//! `Mode::Emulate` (one call per block, the block's threads as loops
//! between barriers), JIT-compiled for x86 and driven by the launch plan
//! exactly as the GPU runtime drives it: same arena offsets, same grids,
//! same pointer arguments. What the tests use to check every CUDA kernel
//! against the interpreter without a GPU; it is slow and not a target.

use super::lower;
use super::plan::LaunchPlan;
use super::simt::{Mode, ThreadOrder, FAULT_TAKE};
use super::CudaOptions;
use crate::backend::llvm;
use crate::backend::llvm::LlvmError;
use crate::ir::Graph;
use crate::tensor::Tensor;
use crate::weights::Weights;
use inkwell::context::Context;
use inkwell::targets::FileType;
use inkwell::OptimizationLevel;

/// `kernel(args, batch, bx, by, bz)`: one block.
type BlockFn = unsafe extern "C" fn(*const *mut f32, i64, i64, i64, i64);

/// A zeroed f32 buffer whose first element is 64-byte aligned (the
/// kernels' vector loads assume 16).
struct Aligned {
    buf: Vec<f32>,
    start: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let buf = vec![0.0f32; len + 16];
        let start = buf.as_ptr().align_offset(64);
        Aligned { buf, start }
    }

    fn ptr(&mut self) -> *mut f32 {
        self.buf[self.start..].as_mut_ptr()
    }

    fn slice(&mut self) -> &mut [f32] {
        &mut self.buf[self.start..]
    }
}

/// Runs `graph` on `input` through the emulated CUDA kernels built with
/// `opts` (the architecture and the plan's multiprocessors).
/// `tune_batch` picks each launch's variant as if the batch were that one
/// (to exercise every tile shape at a small batch); `None`: the real batch.
pub fn run(
    graph: &Graph,
    weights: &Weights,
    input: &Tensor,
    opts: &CudaOptions,
    tune_batch: Option<u64>,
) -> Result<Tensor, LlvmError> {
    run_in_order(
        graph,
        weights,
        input,
        opts,
        tune_batch,
        ThreadOrder::Forward,
    )
}

/// `run`, with the threads of every phase walked in `order`.
pub fn run_in_order(
    graph: &Graph,
    weights: &Weights,
    input: &Tensor,
    opts: &CudaOptions,
    tune_batch: Option<u64>,
    order: ThreadOrder,
) -> Result<Tensor, LlvmError> {
    // Before any compiling: the caller's mistake is cheap to report.
    llvm::check_input(&input.shape, graph.input_shape())?;
    let ctx = Context::create();
    let l = lower::lower(&ctx, graph, weights, Mode::Emulate, order, opts)?;
    l.module
        .verify()
        .map_err(|e| LlvmError::Internal(e.to_string()))?;
    inkwell::targets::Target::initialize_native(&inkwell::targets::InitializationConfig::default())
        .map_err(LlvmError::Internal)?;
    // MCJIT generates the code here and at the first function lookup.
    let diagnostics =
        crate::backend::llvm::diagnostics::Diagnostics::attach(&l.module.get_context());
    let engine = l
        .module
        .create_jit_execution_engine(OptimizationLevel::Default)
        .map_err(|e| LlvmError::Internal(e.to_string()))?;
    let plan: &LaunchPlan = &l.plan;
    let n = input.shape.first().copied().unwrap_or(0) as u64;
    let mut consts = Aligned::new(l.consts.len());
    consts.slice()[..l.consts.len()].copy_from_slice(&l.consts);
    let arena_len = plan.arena_elements(n, tune_batch.unwrap_or(n)) as usize;
    let mut arena = Aligned::new(arena_len);
    let per_in: usize = plan.input_shape.iter().product();
    let at = plan.input.elements(n) as usize;
    for i in 0..n as usize {
        let dst = at + i * plan.input_stride as usize;
        arena.slice()[dst..dst + per_in].copy_from_slice(&input.data[i * per_in..(i + 1) * per_in]);
    }
    let (cbase, abase) = (consts.ptr(), arena.ptr());
    // SAFETY: generated as `i64 ()`; absent where the model has no kernel.
    let take_fault =
        unsafe { engine.get_function::<unsafe extern "C" fn() -> i64>(FAULT_TAKE) }.ok();
    for launch in &plan.launches {
        let v = launch.variant(tune_batch.unwrap_or(n));
        if !v.runs(n) {
            continue;
        }
        // SAFETY: the kernel was generated with exactly this signature.
        let f = unsafe { engine.get_function::<BlockFn>(&v.kernel) }
            .map_err(|e| LlvmError::Internal(e.to_string()))?;
        diagnostics.check()?;
        let args: Vec<*mut f32> = launch
            .args
            .iter()
            // Offsets come from the plan, inside each buffer.
            .map(|a| a.address(n, abase as u64, cbase as u64) as *mut f32)
            .collect();
        let [gx, gy, gz] = v.grid(n);
        let blocks = gx * gy * gz;
        for b in 0..blocks {
            let b = match order {
                ThreadOrder::Forward => b,
                ThreadOrder::Backward => blocks - 1 - b,
            };
            let (bx, by, bz) = (b % gx, b / gx % gy, b / (gx * gy));
            // SAFETY: the kernel reads and writes inside the arena
            // of `n` images and the constant pool, as planned.
            unsafe { f.call(args.as_ptr(), n as i64, bx as i64, by as i64, bz as i64) };
        }
        // SAFETY: a plain read of the module's fault record (made with the
        // first kernel, so present for every launch).
        let addr = take_fault.as_ref().map_or(0, |t| unsafe { t.call() }) as u64;
        if addr != 0 {
            let inside = |base: *mut f32, len: usize| {
                let lo = base as u64;
                (lo..lo + 4 * len as u64).contains(&addr).then(|| addr - lo)
            };
            let place = match (inside(abase, arena_len), inside(cbase, l.consts.len())) {
                (Some(off), _) => format!("arena + {off} bytes"),
                (_, Some(off)) => format!("constants + {off} bytes"),
                _ => format!("{addr:#x} (shared memory)"),
            };
            return Err(LlvmError::Internal(format!(
                "emulated kernel {}: misaligned vector access or cp.async at {place}",
                v.kernel
            )));
        }
    }
    let per_out: usize = plan.output_shape.iter().product();
    let mut shape = vec![n as usize];
    shape.extend(&plan.output_shape);
    let mut out = Tensor::zeros(&shape);
    let at = plan.output.elements(n) as usize;
    for i in 0..n as usize {
        let src = at + i * plan.output_stride as usize;
        out.data[i * per_out..(i + 1) * per_out]
            .copy_from_slice(&arena.slice()[src..src + per_out]);
    }
    Ok(out)
}

/// The emulated kernels as an x86-64 object (PIC, one exported
/// `kernel(args, batch, bx, by, bz)` per kernel of the PTX, same names),
/// with the launch plan they were lowered with. Linked into a shared
/// object, it is what the tests' model of the CUDA driver
/// (`tests/fake_cuda`) runs for each launch, so the GPU runtimes can be
/// exercised end to end without a GPU.
pub fn emulation_object(
    graph: &Graph,
    weights: &Weights,
    opts: &CudaOptions,
) -> Result<(Vec<u8>, LaunchPlan), LlvmError> {
    let machine = llvm::x86_machine("native")?;
    let ctx = Context::create();
    let l = lower::lower(
        &ctx,
        graph,
        weights,
        Mode::Emulate,
        ThreadOrder::Forward,
        opts,
    )?;
    llvm::target(&l.module, &machine);
    llvm::optimize(&l.module, &machine)?;
    Ok((llvm::write(&l.module, &machine, FileType::Object)?, l.plan))
}
