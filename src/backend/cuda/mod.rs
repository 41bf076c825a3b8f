//! The CUDA back end: the optimized graph lowered to NVPTX kernels through
//! LLVM (`lower`, `gemm`, `kernels`, written once as SIMT programs in
//! `simt`), a launch plan (`plan`), and three ways to run them: on a GPU
//! through the driver API (`runtime`), embedded in a static library with
//! its C runtime (`artifact`), and emulated on the host (`emulate`), which
//! is how machines without a GPU test every kernel.

pub mod artifact;
pub mod check_layers;
pub mod codegen;
pub mod emulate;
pub mod gemm;
pub mod gpus;
pub mod kernels;
pub mod lower;
pub mod plan;
pub mod runtime;
pub mod sass;
pub mod simt;
pub mod split_k;

use crate::backend::llvm::LlvmError;
use crate::ir::Graph;
use crate::weights::Weights;
use inkwell::context::Context;
use plan::LaunchPlan;

/// Options of a CUDA build.
#[derive(Clone, Debug)]
pub struct CudaOptions {
    /// An architecture of `gpus::GPUS`: `sm_80` by default, whose PTX
    /// runs on every GPU from the A100 on.
    pub gpu: String,
    /// Multiprocessors the cost model plans for; `None`: those of the
    /// architecture's reference part (`gpus::Gpu::sms`). `run` and `bench`
    /// pass the local GPU's, so an H100 PCIe (114) is not planned as an
    /// H100 SXM (132).
    pub sms: Option<u64>,
    /// The most slices a GEMM's K is split into where a batch has too few
    /// output tiles to fill the GPU (1: never split).
    pub max_split_k: u64,
    /// Threads optimizing and emitting the PTX (0: one per core, up to 8).
    pub codegen_threads: usize,
}

impl CudaOptions {
    /// The default options for `gpu`.
    pub fn for_gpu(gpu: &str) -> CudaOptions {
        CudaOptions {
            gpu: gpu.into(),
            ..Default::default()
        }
    }
}

impl Default for CudaOptions {
    fn default() -> Self {
        CudaOptions {
            gpu: "sm_80".into(),
            sms: None,
            max_split_k: 32,
            codegen_threads: 0,
        }
    }
}

/// A compiled model: PTX text, how to launch it, and the constant pool
/// (weights prepacked for the kernels).
pub struct CudaProgram {
    pub ptx: String,
    pub plan: LaunchPlan,
    pub consts: Vec<f32>,
    /// The PTX assembled for `plan.gpu` exactly (a cubin), where ptxas was
    /// found (`sass::add`); the runtimes prefer it on such a GPU.
    pub sass: Option<Vec<u8>>,
}

/// Lowers an optimized, planned graph to PTX for `opts.gpu`.
pub fn compile(
    graph: &Graph,
    weights: &Weights,
    opts: &CudaOptions,
) -> Result<CudaProgram, LlvmError> {
    let ctx = Context::create();
    let l = lower::lower(
        &ctx,
        graph,
        weights,
        simt::Mode::Gpu,
        Default::default(),
        opts,
    )?;
    let ptx = codegen::ptx(&l.module, &opts.gpu, opts.codegen_threads)?;
    Ok(CudaProgram {
        ptx,
        plan: l.plan,
        consts: l.consts,
        sass: None,
    })
}

/// The GPU architecture named `name` (`gpus::GPUS`).
pub fn gpu(name: &str) -> Result<&'static gpus::Gpu, LlvmError> {
    gpus::find(name).ok_or_else(|| LlvmError::UnknownGpu(name.to_string()))
}

/// The NVPTX target machine for the architecture `name`, with its PTX
/// version.
pub fn nvptx_machine(name: &str) -> Result<inkwell::targets::TargetMachine, LlvmError> {
    crate::backend::llvm::nvptx_machine(name, gpu(name)?.ptx)
}
