//! The CPU back end, for x86-64 and (built, not run here) AArch64:
//! lowering (`lower`), the constant pool (`consts`), running through LLVM's
//! JIT (after checking that this machine has the chosen CPU's
//! instructions), and artifacts (object, static library, C header).

pub mod artifact;
pub mod consts;
pub mod conv_bf16;
pub mod conv_gemm;
pub mod conv_transpose_plan;
pub mod conv_winograd;
#[cfg(test)]
mod default_threads_tests;
mod deferred;
pub mod levels;
pub mod lower;
pub mod sizes;
pub mod tuning;

use crate::backend::llvm::{self, LlvmError};
use crate::backend::shared::symbol;
use crate::ir::Graph;
use crate::precision::Precision;
use crate::tensor::Tensor;
use crate::weights::Weights;
use consts::ConstPool;
pub use conv_gemm::ConvKernel;
pub use conv_winograd::ConvAlgo;
use inkwell::context::Context;
use inkwell::OptimizationLevel;
use petgraph::stable_graph::NodeIndex;
use std::collections::{HashMap, HashSet};
use tuning::ConvChoice;

/// Options of a CPU build.
#[derive(Clone, Debug)]
pub struct CpuOptions {
    /// The instruction set: x86-64 (the default) or AArch64 (`--triple`).
    pub arch: llvm::Arch,
    /// `native`, `x86-64-v3`, `x86-64`, ...; for AArch64 `generic`,
    /// `neoverse-n1`, ... (`llvm::aarch64::KNOWN_CPUS`).
    pub cpu: String,
    /// The conv tilings allowed (default: the cost model picks per conv).
    pub conv: ConvKernel,
    /// Direct or Winograd convolution (default: the cost model picks per
    /// conv).
    pub algo: ConvAlgo,
    /// Measured choices per conv shape (`bench --tune`), ahead of the cost
    /// model where a shape has one.
    pub tuning: Option<std::sync::Arc<tuning::Tuning>>,
    /// fp32, or bf16 convs and linear layers (`crate::precision`).
    pub precision: Precision,
    /// Further CPUs a static library also holds code for (`levels`): it
    /// runs the best of `cpu` and these that the user's CPU runs.
    pub lower: Vec<String>,
    /// The CPU whose kernels the weights are packed for, where not `cpu`'s
    /// own: what a multi-level library's lower levels read (`levels`);
    /// here so that a JIT run can test them.
    pub packed_for: Option<String>,
}

impl Default for CpuOptions {
    fn default() -> Self {
        CpuOptions {
            arch: llvm::Arch::X86_64,
            cpu: "native".into(),
            conv: ConvKernel::Auto,
            algo: ConvAlgo::Auto,
            tuning: None,
            precision: Precision::F32,
            lower: Vec::new(),
            packed_for: None,
        }
    }
}

impl CpuOptions {
    /// The vector unit the kernels are tiled for.
    pub fn isa(&self) -> llvm::VectorIsa {
        llvm::VectorIsa::for_arch(self.arch, &self.cpu)
    }

    /// The target machine of the build.
    pub fn machine(&self) -> Result<inkwell::targets::TargetMachine, LlvmError> {
        llvm::cpu_machine(self.arch, &self.cpu)
    }
}

// The thread pool of generated code (runtime/parallel.c, built by build.rs).
extern "C" {
    fn resnetc_parallel_for(units: i64, task: extern "C" fn(*mut u8, i64, i64), ctx: *mut u8);
    fn resnetc_set_num_threads(n: i32);
    fn resnetc_get_num_threads() -> i32;
    fn resnetc_now_ns() -> i64;
    fn resnetc_amx_permit() -> i32;
    fn resnetc_cpu_runs(features: *const std::ffi::c_char) -> i32;
    fn resnetc_cpu_feature_known(feature: *const std::ffi::c_char) -> i32;
}

/// Whether this machine runs code that needs every feature of the comma
/// list `features` (LLVM's names), by the check a multi-level library makes
/// at its first call (CPUID and XGETBV, `runtime/parallel.c`).
pub fn cpu_runs(features: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(features) else {
        return false;
    };
    // SAFETY: a NUL-terminated string, read during the call only.
    unsafe { resnetc_cpu_runs(c.as_ptr()) == 1 }
}

/// Whether that check knows the feature `name`.
pub fn cpu_feature_known(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: as in `cpu_runs`.
    unsafe { resnetc_cpu_feature_known(c.as_ptr()) == 1 }
}

/// Whether this process may use AMX tiles (Linux grants them on request).
pub fn amx_permitted() -> bool {
    // SAFETY: a system call with constant arguments, its result cached.
    unsafe { resnetc_amx_permit() == 1 }
}

/// Threads JIT-run code uses (the pool is per process; default: the CPUs
/// the process may use, within its cgroup's CPU limit).
pub fn set_num_threads(n: usize) {
    // SAFETY: a plain store of a clamped integer.
    unsafe { resnetc_set_num_threads(n.min(256) as i32) }
}

pub fn num_threads() -> usize {
    // SAFETY: a plain load.
    unsafe { resnetc_get_num_threads() as usize }
}

/// The bf16 convs of `graph` (optimized) that run as Winograd F(2×2) for
/// `opts` and so round their transforms, not their input and weight
/// (`interp::winograd_bf16`): what `interp::layer_check` must be told.
/// Empty in fp32.
pub fn bf16_winograd(graph: &Graph, opts: &CpuOptions) -> HashSet<NodeIndex> {
    if opts.precision != Precision::Bf16 {
        return HashSet::new();
    }
    consts::conv_choices(graph, opts)
        .into_iter()
        .filter(|(_, c)| matches!(c, ConvChoice::Winograd2 | ConvChoice::Winograd4))
        .map(|(n, _)| n)
        .collect()
}

/// Every conv of `graph` (optimized) by name and how it runs for `opts`:
/// `direct`, or `winograd F(mxm, 3x3)` (its transformed filter made at bind
/// time).
pub fn conv_algorithms(graph: &Graph, opts: &CpuOptions) -> Vec<(String, String)> {
    consts::conv_choices(graph, opts)
        .into_iter()
        .map(|(n, c)| (graph.node(n).name.clone(), c.algorithm().to_string()))
        .collect()
}

/// Lowers and optimizes `graph` into a module for `opts.cpu`; also returns
/// what each parallel call of `_run` computes (for profiles).
pub fn compile<'ctx>(
    ctx: &'ctx Context,
    graph: &Graph,
    pool: &ConstPool,
    opts: &CpuOptions,
) -> Result<Compiled<'ctx>, LlvmError> {
    compile_as(ctx, graph, pool, opts, &symbol(&graph.name))
}

/// A compiled module, the target machine it was made for, and what each
/// parallel call of its `_run` computes.
pub type Compiled<'ctx> = (
    inkwell::module::Module<'ctx>,
    inkwell::targets::TargetMachine,
    Vec<String>,
);

/// `compile` with the functions' symbol prefix `sym` (`<sym>_run`, ...).
pub fn compile_as<'ctx>(
    ctx: &'ctx Context,
    graph: &Graph,
    pool: &ConstPool,
    opts: &CpuOptions,
    sym: &str,
) -> Result<Compiled<'ctx>, LlvmError> {
    // First: an unknown CPU is refused before any work.
    let machine = opts.machine()?;
    let (module, labels) = lower::lower(ctx, graph, pool, sym)?;
    // Per-function CPU attributes: the JIT's own target machine is a
    // generic x86-64 one, and without these it would compile the vector
    // kernels for SSE2 (no FMA, half-width vectors).
    let cpu_name = machine.get_cpu().to_string();
    let features = machine.get_feature_string().to_string_lossy().to_string();
    // 512-bit kernels: without this LLVM may split `<16 x float>` into
    // halves on CPUs it tunes to prefer 256-bit vectors.
    let wide = (pool.isa.lanes * 32).to_string();
    for f in module.get_functions() {
        if f.count_basic_blocks() == 0 {
            continue;
        }
        let attr = |k: &str, v: &str| ctx.create_string_attribute(k, v);
        f.add_attribute(
            inkwell::attributes::AttributeLoc::Function,
            attr("target-cpu", &cpu_name),
        );
        // (x86 attributes; NEON has one width.)
        if opts.arch == llvm::Arch::X86_64 {
            f.add_attribute(
                inkwell::attributes::AttributeLoc::Function,
                attr("min-legal-vector-width", &wide),
            );
            f.add_attribute(
                inkwell::attributes::AttributeLoc::Function,
                attr("prefer-vector-width", &wide),
            );
        }
        if !features.is_empty() {
            f.add_attribute(
                inkwell::attributes::AttributeLoc::Function,
                attr("target-features", &features),
            );
        }
    }
    llvm::target(&module, &machine);
    llvm::optimize(&module, &machine)?;
    Ok((module, machine, labels))
}

/// The `_run` entry: input, output, batch, constants, arena, profile
/// ticks (null: none).
type RunFn = unsafe extern "C" fn(*const f32, *mut f32, i64, *const f32, *mut f32, *mut i64);

/// How a JIT-compiled model is run: on an input, optionally recording the
/// time of every parallel call.
pub type JitRun<'a> = dyn FnMut(&Tensor, Option<&mut Profile>) -> Result<Tensor, LlvmError> + 'a;

/// Per-call times of one run: `labels[i]` took `ns[i]`.
#[derive(Clone, Debug, Default)]
pub struct Profile {
    pub labels: Vec<String>,
    pub ns: Vec<i64>,
}

/// Compiles an optimized, planned graph and runs it on `input` through
/// LLVM's JIT.
pub fn run_jit(
    graph: &Graph,
    weights: &Weights,
    input: &Tensor,
    opts: &CpuOptions,
) -> Result<Tensor, LlvmError> {
    with_jit(graph, weights, opts, |run| run(input, None))?
}

/// Runs `graph` (optimized) on `input` with a memory plan that reuses
/// nothing, and returns the output and the value of every activation as
/// the compiled code left it: what `interp::layer_check` judges.
pub fn run_jit_layers(
    graph: &Graph,
    weights: &Weights,
    input: &Tensor,
    opts: &CpuOptions,
) -> Result<(Tensor, HashMap<NodeIndex, Tensor>), LlvmError> {
    let mut g = graph.clone();
    crate::passes::plan_memory::run_keeping_all(&mut g);
    let mut values = HashMap::new();
    let y = jit(&g, weights, opts, |run| {
        run(
            input,
            None,
            Some(&mut |arena: &[f32], per_image: usize| {
                values = read_values(&g, arena, per_image, input.shape[0]);
            }),
        )
    })??;
    Ok((y, values))
}

/// Every activation's value in `arena` (`batch` images of `per_image`
/// floats), by the memory plan of `g`.
fn read_values(
    g: &Graph,
    arena: &[f32],
    per_image: usize,
    batch: usize,
) -> HashMap<NodeIndex, Tensor> {
    let Some(plan) = &g.plan else {
        return HashMap::new();
    };
    let mut values = HashMap::new();
    for (&n, s) in &plan.storage {
        let shape = &g.node(n).shape;
        let per = crate::ir::graph::numel(shape);
        let base = plan.buffers[s.buffer].offset / 4 + s.elem_offset;
        let mut data = Vec::with_capacity(batch * per);
        for b in 0..batch {
            data.extend_from_slice(&arena[base + b * per_image..][..per]);
        }
        let mut full = vec![batch];
        full.extend(shape);
        values.insert(n, Tensor::from_vec(&full, data));
    }
    values
}

/// Floats in a 64-byte line.
const LINE_FLOATS: usize = 16;

/// Floats from `p` to the next line boundary (0 to 15).
fn line_offset(p: *const f32) -> usize {
    p.align_offset(64).min(LINE_FLOATS - 1)
}

extern "C" {
    fn madvise(addr: *mut u8, len: usize, advice: i32) -> i32;
}

/// Asks for 2 MiB pages for `v`'s first `n` floats before they are first
/// touched: a tile load reads 16 rows a staged row apart, each on its own
/// 4 KiB page otherwise, and the TLB misses cost more than the tiles.
fn huge_pages(v: &mut Vec<f32>, n: usize) {
    const HUGE: usize = 2 << 20;
    const MADV_HUGEPAGE: i32 = 14;
    if v.capacity() < n {
        return;
    }
    let start = v.as_mut_ptr() as usize;
    let lo = start.div_ceil(HUGE) * HUGE;
    let hi = (start + n * 4) / HUGE * HUGE;
    if cfg!(target_os = "linux") && hi > lo {
        // SAFETY: advice on pages of our own allocation; failure is harmless.
        unsafe {
            madvise(lo as *mut u8, hi - lo, MADV_HUGEPAGE);
        }
    }
}

/// What a run shows of its arena afterwards: the floats, and how many
/// belong to each image.
type ArenaView<'a> = &'a mut dyn FnMut(&[f32], usize);

/// Compiles `graph` once and hands `body` a function that runs it on an
/// input (any batch size), as often as it likes: what benchmarks need.
pub fn with_jit<R>(
    graph: &Graph,
    weights: &Weights,
    opts: &CpuOptions,
    body: impl FnOnce(&mut JitRun) -> R,
) -> Result<R, LlvmError> {
    jit(graph, weights, opts, |run| {
        body(&mut |x: &Tensor, p: Option<&mut Profile>| run(x, p, None))
    })
}

#[allow(clippy::type_complexity)]
fn jit<R>(
    graph: &Graph,
    weights: &Weights,
    opts: &CpuOptions,
    body: impl FnOnce(
        &mut dyn FnMut(
            &Tensor,
            Option<&mut Profile>,
            Option<ArenaView>,
        ) -> Result<Tensor, LlvmError>,
    ) -> R,
) -> Result<R, LlvmError> {
    // Before any work: code for a CPU this machine is not would die of
    // SIGILL, with no message.
    opts.arch.check_runs_here()?;
    llvm::features::check_host_runs(&opts.cpu)?;
    let plan = graph.plan.as_ref().ok_or(LlvmError::Unplanned)?;
    let derived = crate::weights::materialize(graph, weights);
    let mut pool = ConstPool::for_options(graph, weights, &derived, opts)?;
    if !pool.bf.is_empty() && !amx_permitted() {
        return Err(LlvmError::AmxRefused(
            "the operating system refused this process AMX tile state (Linux 5.16 or later grants it)".into(),
        ));
    }
    let ctx = Context::create();
    let sym = symbol(&graph.name);
    let (module, _machine, labels) = compile(&ctx, graph, &pool, opts)?;
    inkwell::targets::Target::initialize_native(&inkwell::targets::InitializationConfig::default())
        .map_err(LlvmError::Internal)?;
    // MCJIT generates the code here and at the first function lookup.
    let diagnostics = crate::backend::llvm::diagnostics::Diagnostics::attach(&module.get_context());
    let engine = module
        .create_jit_execution_engine(OptimizationLevel::Less)
        .map_err(|e| LlvmError::Internal(e.to_string()))?;
    if let Some(f) = module.get_function("resnetc_parallel_for") {
        engine.add_global_mapping(&f, resnetc_parallel_for as *const () as usize);
    }
    if let Some(f) = module.get_function("resnetc_now_ns") {
        engine.add_global_mapping(&f, resnetc_now_ns as *const () as usize);
    }
    if let Some(f) = module.get_function("resnetc_amx_permit") {
        engine.add_global_mapping(&f, resnetc_amx_permit as *const () as usize);
    }
    // SAFETY: the symbol was generated with exactly this signature.
    let f = unsafe { engine.get_function::<RunFn>(&format!("{sym}_run")) }
        .map_err(|e| LlvmError::Internal(e.to_string()))?;
    diagnostics.check()?;
    let expected = graph.input_shape().to_vec();
    // The weights from a line boundary, as a library's are: the kernels'
    // 64-byte vectors and tile rows then never straddle two lines.
    let mut weights = Vec::new();
    weights
        .try_reserve_exact(pool.data.len() + LINE_FLOATS)
        .map_err(|_| LlvmError::Memory("the weights could not be copied".into()))?;
    weights.resize(line_offset(weights.as_ptr()), 0.0);
    weights.extend_from_slice(&pool.data);
    pool.data = Vec::new();
    let mut arena: Vec<f32> = Vec::new();
    let mut ticks = vec![0i64; labels.len()];
    let mut run = |input: &Tensor,
                   profile: Option<&mut Profile>,
                   view: Option<ArenaView>|
     -> Result<Tensor, LlvmError> {
        llvm::check_input(&input.shape, &expected)?;
        let batch = input.shape[0];
        // A huge batch is a clear error, not an allocation abort.
        let elems = batch.checked_mul(pool.arena_floats(plan)).ok_or_else(|| {
            LlvmError::Memory(format!(
                "batch {batch} needs more working memory than can be addressed"
            ))
        })?;
        // Slack to start the arena at a line boundary: `_run` would skip to
        // one anyway; starting there keeps the view below in step.
        let elems = elems + LINE_FLOATS;
        if elems > arena.len() {
            arena.try_reserve_exact(elems - arena.len()).map_err(|_| {
                LlvmError::Memory(format!(
                    "batch {batch} needs {:.1} GiB of working memory, which could not be allocated",
                    (elems * 4) as f64 / (1u64 << 30) as f64
                ))
            })?;
        }
        if arena.is_empty() {
            huge_pages(&mut arena, elems);
        }
        arena.resize(elems, 0.0);
        let skip = line_offset(arena.as_ptr());
        let mut out_shape = vec![batch];
        out_shape.extend(graph.output_shape());
        let mut output = Tensor::zeros(&out_shape);
        // The profile adds each call's time to its entry.
        ticks.fill(0);
        // SAFETY: `_run` was generated for exactly these buffer sizes: the
        // input and output hold `batch` images of the model's shapes
        // (checked above), the arena `batch × arena_floats`, the pool every
        // constant offset.
        unsafe {
            f.call(
                input.data.as_ptr(),
                output.data.as_mut_ptr(),
                batch as i64,
                weights[line_offset(weights.as_ptr())..].as_ptr(),
                arena[skip..].as_mut_ptr(),
                if profile.is_some() {
                    ticks.as_mut_ptr()
                } else {
                    std::ptr::null_mut()
                },
            );
        }
        if let Some(p) = profile {
            p.labels.clone_from(&labels);
            p.ns.clone_from(&ticks);
        }
        if let Some(v) = view {
            v(&arena[skip..], pool.arena_floats(plan));
        }
        Ok(output)
    };
    Ok(body(&mut run))
}
