//! What both LLVM back ends share: target machines (x86-64, AArch64,
//! NVPTX), the optimization pipeline, and `Emitter`, a thin layer over
//! inkwell's builder for loops, addressing and float math.

pub mod aarch64;
pub mod amx;
pub mod diagnostics;
pub mod dp_bf16;
pub mod emit;
pub mod exp;
pub mod features;
pub mod vector;

use inkwell::module::Module;
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{
    CodeModel, FileType, InitializationConfig, RelocMode, Target, TargetMachine, TargetTriple,
};
use inkwell::OptimizationLevel;

/// Errors of the LLVM back ends: a target LLVM does not know, memory or
/// archive limits, a library caller's input or graph that does not fit, and
/// `Internal`: LLVM failing on what resnetc generated (a bug in resnetc).
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum LlvmError {
    #[error("unknown CPU `{0}`")]
    #[diagnostic(
        code(resnetc::backend::cpu),
        help("use `native`, `x86-64-v3` (AVX2/FMA), `x86-64-v2`, `x86-64`, or an LLVM CPU name such as `skylake-avx512`")
    )]
    UnknownCpu(String),
    #[error("unknown AArch64 CPU `{cpu}`")]
    #[diagnostic(
        code(resnetc::backend::cpu),
        help("use one of: {known} (`generic`, the default, runs on every AArch64 core)")
    )]
    UnknownArmCpu { cpu: String, known: String },
    #[error("unknown target triple `{0}`")]
    #[diagnostic(
        code(resnetc::backend::triple),
        help("use `x86_64-linux-gnu` (the default) or `aarch64-linux-gnu` (also spelled `x86_64-unknown-linux-gnu`, `aarch64-unknown-linux-gnu`)")
    )]
    UnknownTriple(String),
    /// A JIT run of code for another instruction set than this machine's.
    #[error("code for {arch} cannot run on this {host} machine")]
    #[diagnostic(
        code(resnetc::backend::triple),
        help("leave out --triple to run here; `resnetc build --triple {triple}` writes a static library to run on an {arch} machine (or under qemu-{arch})")
    )]
    ForeignArch {
        arch: &'static str,
        host: &'static str,
        triple: &'static str,
    },
    /// A JIT run for a CPU whose instructions this machine lacks (it would
    /// die of SIGILL).
    #[error("this machine's CPU lacks {missing}, which code for `--cpu {cpu}` uses")]
    #[diagnostic(code(resnetc::backend::cpu_features), help("{hint}"))]
    HostLacks {
        cpu: String,
        missing: String,
        hint: String,
    },
    /// bf16 AMX code where the OS grants no tile state.
    #[error("{0}")]
    #[diagnostic(
        code(resnetc::backend::amx),
        help("use a --cpu without AMX (e.g. `--cpu icelake-server`, or `x86-64-v4`): bf16 then runs on the vector units")
    )]
    AmxRefused(String),
    /// A set of `--cpu` levels one library cannot hold.
    #[error("{0}")]
    #[diagnostic(
        code(resnetc::backend::cpu_levels),
        help("list x86-64 levels or CPU names, e.g. `--cpu x86-64-v4,x86-64-v3,x86-64-v2` (the default); `--cpu native` builds for this machine alone")
    )]
    Levels(String),
    #[error("unknown GPU architecture `{0}`")]
    #[diagnostic(
        code(resnetc::backend::cuda),
        help("use `sm_70` (V100), `sm_75` (T4, RTX 20), `sm_80` (A100; its PTX also runs on every later GPU), `sm_86` (A10, RTX 30), `sm_89` (L4, RTX 40) or `sm_90` (H100, H200); `nvidia-smi --query-gpu=compute_cap --format=csv` tells a GPU's")
    )]
    UnknownGpu(String),
    #[error("{0}")]
    #[diagnostic(code(resnetc::backend::memory), help("use a smaller batch"))]
    Memory(String),
    #[error("{0}")]
    #[diagnostic(
        code(resnetc::backend::archive),
        help("use --emit obj: an object file has no such limit")
    )]
    ArchiveTooLarge(String),
    /// A library caller's input of the wrong shape (the CLI checks first).
    #[error("input shape {got:?} does not match the model's [N, {want:?}]")]
    #[diagnostic(
        code(resnetc::backend::input),
        help("pass N ≥ 1 images of the model's input shape")
    )]
    Input { got: Vec<usize>, want: Vec<usize> },
    /// A library caller's graph that did not go through the passes.
    #[error("the graph has no memory plan")]
    #[diagnostic(
        code(resnetc::backend::unplanned),
        help("run `passes::optimize` on the graph before lowering it")
    )]
    Unplanned,
    #[error("LLVM: {0}")]
    #[diagnostic(
        code(resnetc::backend::llvm),
        help("this is a bug in resnetc; please report it with the model")
    )]
    Internal(String),
}

/// `Input` unless `got` is `[N, want...]` with N ≥ 1.
pub fn check_input(got: &[usize], want: &[usize]) -> Result<(), LlvmError> {
    if got.len() == want.len() + 1 && got[1..] == *want && got[0] > 0 {
        Ok(())
    } else {
        Err(LlvmError::Input {
            got: got.to_vec(),
            want: want.to_vec(),
        })
    }
}

/// The instruction set of a CPU build (`--triple`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Arch {
    #[default]
    X86_64,
    Aarch64,
}

impl Arch {
    /// The architecture of a Linux GNU triple, as `--triple` takes it.
    pub fn from_triple(triple: &str) -> Result<Arch, LlvmError> {
        match triple {
            "x86_64-linux-gnu" | "x86_64-unknown-linux-gnu" | "x86_64-pc-linux-gnu" => {
                Ok(Arch::X86_64)
            }
            "aarch64-linux-gnu" | "aarch64-unknown-linux-gnu" => Ok(Arch::Aarch64),
            _ => Err(LlvmError::UnknownTriple(triple.to_string())),
        }
    }

    /// The architecture resnetc itself runs on (JIT runs need it).
    pub fn host() -> Arch {
        if cfg!(target_arch = "aarch64") {
            Arch::Aarch64
        } else {
            Arch::X86_64
        }
    }

    /// As people write it: `x86-64`, `aarch64`.
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86-64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// `--triple`'s short spelling.
    pub fn triple(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-linux-gnu",
            Arch::Aarch64 => "aarch64-linux-gnu",
        }
    }

    /// `--cpu`'s default: the host for x86-64 (where the code usually
    /// runs), `generic` for AArch64 (built here, run elsewhere).
    pub fn default_cpu(self) -> &'static str {
        match self {
            Arch::X86_64 => "native",
            Arch::Aarch64 => "generic",
        }
    }

    /// `ForeignArch` unless code for `self` runs on this machine.
    pub fn check_runs_here(self) -> Result<(), LlvmError> {
        if self == Arch::host() {
            return Ok(());
        }
        Err(LlvmError::ForeignArch {
            arch: self.name(),
            host: Arch::host().name(),
            triple: self.triple(),
        })
    }
}

/// The target machine for `cpu` of `arch`.
pub fn cpu_machine(arch: Arch, cpu: &str) -> Result<TargetMachine, LlvmError> {
    match arch {
        Arch::X86_64 => x86_machine(cpu),
        Arch::Aarch64 => aarch64::machine(cpu),
    }
}

/// x86-64 CPU names accepted besides `native`.
pub const KNOWN_CPUS: &[&str] = &[
    "x86-64",
    "x86-64-v2",
    "x86-64-v3",
    "x86-64-v4",
    "haswell",
    "broadwell",
    "skylake",
    "skylake-avx512",
    "cascadelake",
    "cooperlake",
    "icelake-server",
    "sapphirerapids",
    "znver2",
    "znver3",
    "znver4",
    "znver5",
];

/// CPU names with AVX-512.
const AVX512_CPUS: &[&str] = &[
    "x86-64-v4",
    "skylake-avx512",
    "cascadelake",
    "cooperlake",
    "icelake-server",
    "sapphirerapids",
    "znver4",
    "znver5",
];

/// CPU names with AVX512-BF16 (`vdpbf16ps`): Cooper Lake, the AMX Xeons,
/// Zen 4 and Zen 5.
const DP_BF16_CPUS: &[&str] = &["cooperlake", "sapphirerapids", "znver4", "znver5"];

/// CPU names whose cores have AMX-BF16 (LLVM enables it for them).
const AMX_CPUS: &[&str] = &[
    "sapphirerapids",
    "emeraldrapids",
    "graniterapids",
    "graniterapids-d",
];

/// The vector unit the CPU kernels are tiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VectorIsa {
    /// Vector registers a register tile may use.
    pub regs: u32,
    /// f32 lanes per vector.
    pub lanes: u64,
    /// An Intel core (by LLVM's name for the CPU): the conv cost model's
    /// constants differ per microarchitecture (docs/performance.md).
    pub intel: bool,
    /// An AMD Zen core (`znver*`): the Winograd cost model's constants
    /// were fitted there apart (docs/performance.md, session 23).
    pub amd: bool,
    /// AMX tiles with bf16 products (`tdpbf16ps`): Sapphire Rapids and
    /// later Xeons.
    pub amx_bf16: bool,
    /// AVX512-BF16's `vdpbf16ps` (bf16 pair products summed into 16 f32
    /// lanes): the bf16 kernels where there is no AMX (Zen 4 and 5).
    pub dp_bf16: bool,
}

impl VectorIsa {
    /// AVX-512: 32 registers of 16 lanes. Zen 5 and the Xeons run two
    /// 512-bit FMAs a cycle, twice the f32 work of 256-bit code (measured
    /// on Zen 5: 272 vs 137 GFLOP/s per core); Zen 4 splits them in two
    /// halves and loses nothing.
    pub const AVX512: VectorIsa = VectorIsa {
        regs: 32,
        lanes: 16,
        intel: false,
        amd: false,
        amx_bf16: false,
        dp_bf16: false,
    };
    /// AVX2: 16 registers of 8 lanes.
    pub const AVX2: VectorIsa = VectorIsa {
        regs: 16,
        lanes: 8,
        intel: false,
        amd: false,
        amx_bf16: false,
        dp_bf16: false,
    };
    /// SSE (x86-64-v2 and older: no AVX): 16 registers of 4 lanes. Code
    /// tiled for 8 lanes would run there as pairs of halves, half the
    /// registers a tile counts on.
    pub const SSE: VectorIsa = VectorIsa {
        regs: 16,
        lanes: 4,
        intel: false,
        amd: false,
        amx_bf16: false,
        dp_bf16: false,
    };

    /// NEON, on every AArch64 core: 32 registers of 4 lanes, FMA. (SVE's
    /// wider vectors, where a core has them, are not used.)
    pub const NEON: VectorIsa = VectorIsa {
        regs: 32,
        lanes: 4,
        intel: false,
        amd: false,
        amx_bf16: false,
        dp_bf16: false,
    };

    /// The vector unit of `cpu` of `arch`.
    pub fn for_arch(arch: Arch, cpu: &str) -> VectorIsa {
        match arch {
            Arch::X86_64 => VectorIsa::of(cpu),
            Arch::Aarch64 => VectorIsa::NEON,
        }
    }

    /// The vector unit of the x86-64 `cpu` (`native`: the host's features).
    pub fn of(cpu: &str) -> VectorIsa {
        let host = TargetMachine::get_host_cpu_features().to_string();
        let host_has = |f: &str| host.split(',').any(|h| h == f);
        let (avx512, amx_bf16, dp_bf16, avx) = if cpu == "native" {
            (
                host_has("+avx512f"),
                host_has("+amx-bf16") && host_has("+amx-tile"),
                host_has("+avx512bf16"),
                host_has("+avx"),
            )
        } else {
            // (A name LLVM does not know is refused before code is made.)
            let avx = features::runtime_needs(cpu).map_or(true, |f| f.iter().any(|x| x == "avx"));
            (
                AVX512_CPUS.contains(&cpu),
                AMX_CPUS.contains(&cpu),
                DP_BF16_CPUS.contains(&cpu),
                avx,
            )
        };
        let name = if cpu == "native" {
            host_cpu_name()
        } else {
            cpu.to_string()
        };
        let isa = match (avx512, avx) {
            (true, _) => VectorIsa::AVX512,
            (false, true) => VectorIsa::AVX2,
            (false, false) => VectorIsa::SSE,
        };
        VectorIsa {
            intel: is_intel(&name),
            amd: name.starts_with("znver"),
            amx_bf16,
            dp_bf16: dp_bf16 && avx512,
            ..isa
        }
    }
}

/// Whether LLVM's CPU name `name` is an Intel core (the generic
/// `x86-64-v*` levels are not).
pub fn is_intel(name: &str) -> bool {
    const INTEL: [&str; 20] = [
        "haswell",
        "broadwell",
        "skylake",
        "skylake-avx512",
        "cascadelake",
        "cooperlake",
        "cannonlake",
        "icelake-client",
        "icelake-server",
        "tigerlake",
        "rocketlake",
        "alderlake",
        "raptorlake",
        "meteorlake",
        "sapphirerapids",
        "emeraldrapids",
        "graniterapids",
        "graniterapids-d",
        "arrowlake",
        "lunarlake",
    ];
    INTEL.contains(&name)
}

/// The host CPU's name as LLVM knows it (`sapphirerapids`, `znver5`, ...).
pub fn host_cpu_name() -> String {
    TargetMachine::get_host_cpu_name().to_string()
}

/// The x86-64 target machine for `cpu` (`native` is the host).
pub fn x86_machine(cpu: &str) -> Result<TargetMachine, LlvmError> {
    Target::initialize_x86(&InitializationConfig::default());
    let triple = TargetTriple::create("x86_64-unknown-linux-gnu");
    let target = Target::from_triple(&triple).map_err(|e| LlvmError::Internal(e.to_string()))?;
    let (name, features) = if cpu == "native" {
        (
            TargetMachine::get_host_cpu_name().to_string(),
            TargetMachine::get_host_cpu_features().to_string(),
        )
    } else {
        (cpu.to_string(), String::new())
    };
    // LLVM accepts any name and silently falls back to a generic CPU, so
    // only names we know are passed through.
    if cpu != "native" && !KNOWN_CPUS.contains(&cpu) {
        return Err(LlvmError::UnknownCpu(cpu.to_string()));
    }
    target
        .create_target_machine(
            &triple,
            &name,
            &features,
            OptimizationLevel::Aggressive,
            // Position independent: the objects go into static libraries.
            RelocMode::PIC,
            CodeModel::Default,
        )
        .ok_or_else(|| LlvmError::Internal(format!("cannot create a target machine for `{cpu}`")))
}

/// Points `module` at `machine`: its triple and data layout.
pub fn target(module: &Module, machine: &TargetMachine) {
    module.set_triple(&machine.get_triple());
    module.set_data_layout(&machine.get_target_data().get_data_layout());
}

/// `module` written by `machine` as an object file or assembly text.
pub fn write(
    module: &Module,
    machine: &TargetMachine,
    kind: FileType,
) -> Result<Vec<u8>, LlvmError> {
    let diagnostics = diagnostics::Diagnostics::attach(&module.get_context());
    let buf = machine
        .write_to_memory_buffer(module, kind)
        .map(|b| b.as_slice().to_vec())
        .map_err(|e| LlvmError::Internal(e.to_string()))?;
    diagnostics.check()?;
    Ok(buf)
}

/// Runs LLVM's `default<O2>` pipeline on `module` for `machine`.
pub fn optimize(module: &Module, machine: &TargetMachine) -> Result<(), LlvmError> {
    module
        .verify()
        .map_err(|e| LlvmError::Internal(e.to_string()))?;
    let diagnostics = diagnostics::Diagnostics::attach(&module.get_context());
    module
        .run_passes("default<O2>", machine, PassBuilderOptions::create())
        .map_err(|e| LlvmError::Internal(e.to_string()))?;
    diagnostics.check()
}

/// The NVPTX target machine for the architecture `gpu` (`sm_80`) with
/// `features` (its PTX version, `+ptx75`; the CUDA back end's GPU table
/// knows both).
pub fn nvptx_machine(gpu: &str, features: &str) -> Result<TargetMachine, LlvmError> {
    Target::initialize_nvptx(&InitializationConfig::default());
    let triple = TargetTriple::create("nvptx64-nvidia-cuda");
    let target = Target::from_triple(&triple).map_err(|e| LlvmError::Internal(e.to_string()))?;
    target
        .create_target_machine(
            &triple,
            gpu,
            features,
            OptimizationLevel::Aggressive,
            RelocMode::Default,
            CodeModel::Default,
        )
        .ok_or_else(|| LlvmError::Internal(format!("cannot create a target machine for `{gpu}`")))
}
