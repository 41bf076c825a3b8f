//! The `resnetc` command line.

use clap::{Parser, Subcommand, ValueEnum};
use miette::Report;
use resnetc::front::{self, CompileError, Compiled};
use resnetc::weights::{self, Weights};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `eprintln!` that cannot panic: with stderr closed (`2>&1 | head -1`)
/// the message is lost, not the command's work or its exit code.
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

#[derive(Parser)]
#[command(
    name = "resnetc",
    version,
    about = "A compiler for residual neural networks (ResNet, DenseNet, U-Net)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// A directory searched for `use`d files not found next to the file
    /// that uses them (repeatable; then the directories of RESNETC_PATH).
    #[arg(short = 'L', value_name = "DIR", global = true)]
    lib_dir: Vec<PathBuf>,
}

/// An input size: height and width.
#[derive(Clone, Debug)]
struct Size(Vec<usize>);

fn parse_size(text: &str) -> std::result::Result<Size, String> {
    front::signature::parse_size(text).map(Size)
}

/// `--input-size` for the commands that compile one size.
#[derive(clap::Args, Clone, Default)]
struct SizeArgs {
    /// Compile at this input height and width (HxW, or S for SxS), for a
    /// model whose signature names them, as `f32[N, 3, H = 224, W = 224]`
    /// does (default: the signature's sizes).
    #[arg(long, value_name = "HxW", value_parser = parse_size)]
    input_size: Option<Size>,
}

#[derive(Subcommand)]
enum Command {
    /// Parse and check a model; exit 0 when it is well formed.
    Check {
        file: PathBuf,
        #[command(flatten)]
        size: SizeArgs,
    },
    /// Per-layer shapes, parameters and multiply-adds (and each conv's
    /// algorithm on the CPU target with these CPU options).
    Summary {
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
        format: SummaryFormat,
        #[command(flatten)]
        opt: OptArgs,
        #[command(flatten)]
        size: SizeArgs,
        #[command(flatten)]
        cpu: CpuArgs,
    },
    /// Graphviz view of the network.
    Graph {
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
        format: GraphFormat,
        /// Output file (default: standard output).
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        size: SizeArgs,
    },
    /// Print the IR text form (optimized unless -O0), then each conv's
    /// algorithm on the CPU target with these CPU options.
    Ir {
        file: PathBuf,
        #[command(flatten)]
        opt: OptArgs,
        #[command(flatten)]
        size: SizeArgs,
        #[command(flatten)]
        cpu: CpuArgs,
    },
    /// List the optimization passes in pipeline order.
    Passes,
    /// Run a model on an input .npy and write the output .npy.
    Run {
        file: PathBuf,
        #[command(flatten)]
        weights: WeightsArgs,
        /// The input batch as a float32 .npy of the model's input shape
        /// (N, C, H, W for an image model); a model with named sizes
        /// (`H = 224`) is compiled at the input's height and width.
        #[arg(long, value_name = "X.npy")]
        input: PathBuf,
        /// Where to write the output as a float32 .npy (whole or not at all).
        #[arg(long, value_name = "Y.npy")]
        output: PathBuf,
        #[command(flatten)]
        load: LoadArgs,
        #[arg(long, value_enum, default_value_t = Target::Cpu)]
        target: Target,
        #[command(flatten)]
        cpu: CpuArgs,
        /// Threads for --target cpu, 1 to 256 (default: the CPUs this
        /// process may use).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
        threads: Option<u16>,
        #[command(flatten)]
        cuda: CudaArgs,
        /// Compare every layer's output with the interpreter's (1e-4
        /// relative) on the layer's own inputs as the back end computed them
        /// (--target cuda: launch by launch); prints a table naming the
        /// first layer that differs and exits 1 if any does.
        #[arg(long)]
        check_layers: bool,
    },
    /// Compile a model into the directory given by -o. CPU: a static library
    /// and C header (default), an object file, assembly or LLVM IR. CUDA: the
    /// artifact (PTX, launch plan, weights; default), the PTX alone, LLVM IR,
    /// or a static library and C header.
    Build {
        file: PathBuf,
        #[command(flatten)]
        weights: WeightsArgs,
        #[arg(long, value_enum, default_value_t = Target::Cpu)]
        target: Target,
        /// What to write (default: staticlib for cpu, artifact for cuda).
        #[arg(long, value_enum)]
        emit: Option<EmitKind>,
        #[command(flatten)]
        load: LoadArgs,
        #[command(flatten)]
        cpu: CpuArgs,
        #[command(flatten)]
        cuda: CudaArgs,
        /// Output directory (created if missing); for an --emit that writes
        /// one file (asm, llvm-ir, ptx), a path with an extension that is
        /// not a directory names that file (`-o m.ptx`).
        #[arg(short, long, default_value = ".")]
        output: PathBuf,
        /// No progress messages.
        #[arg(long)]
        quiet: bool,
        /// Compile at this input height and width (HxW, or S for SxS), for
        /// a model whose signature names them (`f32[N, 3, H = 224, W =
        /// 224]`). Repeated: a CPU static library holding every size, with
        /// `<model>_forward_hw` taking the height and width.
        #[arg(long, value_name = "HxW", value_parser = parse_size)]
        input_size: Vec<Size>,
    },
    /// Time a model: warm-up, then runs until the median is stable.
    Bench {
        file: PathBuf,
        /// Weights (default: --random-weights 0).
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Seeded random weights instead of a file.
        #[arg(long, value_name = "SEED", conflicts_with = "weights")]
        random_weights: Option<u64>,
        #[arg(long, value_enum, default_value_t = Target::Cpu)]
        target: Target,
        #[command(flatten)]
        cpu: CpuArgs,
        /// Threads for --target cpu, 1 to 256 (default: the CPUs this
        /// process may use).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
        threads: Option<u16>,
        #[command(flatten)]
        cuda: CudaArgs,
        #[command(flatten)]
        size: SizeArgs,
        /// Images per run, 1 to 4096.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
        batch: u32,
        /// text, or json (one object).
        #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
        format: SummaryFormat,
        /// Also time every parallel call (cpu) or every kernel launch (cuda,
        /// each on its own, outside the graph): median over runs, slowest
        /// first.
        #[arg(long)]
        layers: bool,
        /// Time every conv kernel candidate (direct pixel and channel
        /// tiles, Winograd F(4x4) and F(2x2)) on this model and machine,
        /// write the fastest per conv shape to FILE (merged with what FILE
        /// holds), then bench with it. Later builds read it with --tuning.
        #[arg(long, value_name = "FILE")]
        tune: Option<PathBuf>,
    },
    /// Write the model with its weights in another format (ONNX opset 17,
    /// dynamic batch) to run it in other runtimes.
    Export {
        file: PathBuf,
        #[command(flatten)]
        weights: WeightsArgs,
        #[arg(long, value_enum, default_value_t = ExportFormat::Onnx)]
        format: ExportFormat,
        #[command(flatten)]
        load: LoadArgs,
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        size: SizeArgs,
    },
    /// Import an ONNX model (opsets 11-21, as torch.onnx.export writes
    /// them) as a readable .res and its weights as safetensors.
    Import {
        file: PathBuf,
        /// The .res to write.
        #[arg(short, long)]
        output: PathBuf,
        /// The weights to write (default: the output with .safetensors).
        #[arg(long, value_name = "FILE")]
        weights_out: Option<PathBuf>,
        /// The input size where the model leaves it open: NxCxHxW.
        #[arg(long, value_name = "SHAPE")]
        input_shape: Option<String>,
    },
    /// Write seeded random weights (Kaiming init, non-trivial BN) as safetensors.
    Init {
        file: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        size: SizeArgs,
    },
}

#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct WeightsArgs {
    /// Weights as safetensors, named by PyTorch state_dict keys.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Use seeded random weights instead of a file.
    #[arg(long, value_name = "SEED")]
    random_weights: Option<u64>,
}

/// A non-strict weights load (off by default: every tensor must match).
#[derive(clap::Args, Clone, Copy, Default)]
struct LoadArgs {
    /// Tensors the model declares and --weights lacks (a backbone's
    /// checkpoint for a model with a new head) get seeded random values;
    /// each is named on stderr.
    #[arg(long)]
    allow_missing: bool,
    /// Tensors in --weights the model does not declare are ignored; each
    /// is named on stderr.
    #[arg(long)]
    ignore_unused: bool,
}

impl LoadArgs {
    fn options(self) -> weights::BindOptions {
        weights::BindOptions {
            allow_missing: self.allow_missing,
            ignore_unused: self.ignore_unused,
        }
    }
}

/// Says on stderr what a non-strict load filled in or left out.
fn report_skipped(file: &Path, s: &weights::Skipped) {
    let list = |names: &[String]| {
        let shown: Vec<&str> = names.iter().take(8).map(String::as_str).collect();
        let more = names.len().saturating_sub(shown.len());
        if more > 0 {
            format!("{} and {more} more", shown.join(", "))
        } else {
            shown.join(", ")
        }
    };
    if !s.filled.is_empty() {
        note!(
            "note: {} tensors missing from {} got seeded random values (--allow-missing): {}",
            s.filled.len(),
            file.display(),
            list(&s.filled)
        );
    }
    if !s.ignored.is_empty() {
        note!(
            "note: {} tensors in {} that the model does not declare were ignored (--ignore-unused): {}",
            s.ignored.len(),
            file.display(),
            list(&s.ignored)
        );
    }
}

/// How the CUDA back end generates code.
#[derive(clap::Args, Clone)]
struct CudaArgs {
    /// GPU architecture for --target cuda: sm_70 (V100), sm_75 (T4), sm_80
    /// (A100), sm_86 (A10), sm_89 (L4) or sm_90 (H100, H200). The code runs
    /// on that GPU and every later one; the cost model plans for the GPU
    /// named. Default: for build, sm_80 (PTX for every GPU from the A100
    /// on); for run and bench, GPU 0's own (the newest it runs whose PTX
    /// its driver knows).
    #[arg(long)]
    gpu: Option<String>,
    /// For --target cuda: the multiprocessors the cost model plans tiles
    /// and K splits for. Default: for build, those of the --gpu's
    /// reference part (sm_80: 108, an A100; sm_90: 132, an H100 SXM; an
    /// H100 PCIe has 114); for run and bench, GPU 0's.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1024))]
    sms: Option<u64>,
    /// For --target cuda: the most slices a conv's or linear layer's K is
    /// split into where a small batch has too few output tiles to fill the
    /// GPU (1: never; default 32).
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u64).range(1..=32))]
    max_split_k: Option<u64>,
}

impl CudaArgs {
    fn options(&self) -> resnetc::backend::cuda::CudaOptions {
        resnetc::backend::cuda::CudaOptions {
            gpu: self.gpu.clone().unwrap_or_else(|| "sm_80".into()),
            sms: self.sms,
            max_split_k: self.max_split_k.unwrap_or(32),
            ..Default::default()
        }
    }
}

/// How the CPU back end generates code.
#[derive(clap::Args)]
struct CpuArgs {
    /// Target triple: x86_64-linux-gnu (the default) or aarch64-linux-gnu
    /// (`build` only: a static library for 64-bit ARM Linux, NEON kernels).
    #[arg(long, value_name = "TRIPLE")]
    triple: Option<String>,
    /// CPU to generate code for: native (the default), x86-64-v3, x86-64,
    /// ...; for aarch64: generic (the default), neoverse-n1, neoverse-v1,
    /// cortex-a72, apple-m1, ...
    #[arg(long)]
    cpu: Option<String>,
    /// Conv tiling: the cost model's per-conv choice (auto, the default),
    /// or one for every conv.
    #[arg(long, value_enum)]
    conv_kernel: Option<ConvKernelArg>,
    /// Conv algorithm for 3×3 stride-1 convs: the cost model's per-conv
    /// choice (auto, the default), or one for every eligible conv.
    #[arg(long, value_enum)]
    conv_algo: Option<ConvAlgoArg>,
    /// A tuning record (`bench --tune FILE`): each conv shape it measured
    /// runs the kernel that was fastest there, ahead of the cost model.
    #[arg(long, value_name = "FILE")]
    tuning: Option<PathBuf>,
    /// Arithmetic: fp32 (the default), or bf16 convs and linear layers
    /// (inputs and weights rounded to bfloat16, fp32 sums and epilogues).
    /// With --target ref, the interpreter rounds at the same points as the
    /// direct kernels (the AVX512-BF16 Winograd convs round their
    /// transforms instead; --check-layers judges those by their own rule).
    #[arg(long, value_enum)]
    precision: Option<PrecisionArg>,
    /// Weights packed as for this CPU (a portable library's top level),
    /// kernels for --cpu: how a library's lower level runs, for
    /// benchmarks (bench/side_by_side.py --portable).
    #[arg(long, value_name = "CPU", hide = true)]
    packed_for: Option<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PrecisionArg {
    Fp32,
    Bf16,
}

impl CpuArgs {
    /// `--triple`'s instruction set (default: x86-64).
    fn arch(&self) -> Result<resnetc::backend::llvm::Arch> {
        use resnetc::backend::llvm::Arch;
        match &self.triple {
            None => Ok(Arch::X86_64),
            Some(t) => Ok(Arch::from_triple(t)?),
        }
    }

    /// Refuses what a JIT run on this machine cannot do: code for another
    /// instruction set, or for a CPU this one is not.
    fn check_runs_here(&self) -> Result<()> {
        self.arch()?.check_runs_here()?;
        resnetc::backend::llvm::features::check_host_runs(self.cpu.as_deref().unwrap_or("native"))?;
        Ok(())
    }

    fn precision(&self) -> resnetc::precision::Precision {
        match self.precision {
            None | Some(PrecisionArg::Fp32) => resnetc::precision::Precision::F32,
            Some(PrecisionArg::Bf16) => resnetc::precision::Precision::Bf16,
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ConvAlgoArg {
    Auto,
    /// Direct convolution (register-tiled GEMM over shifted windows).
    Direct,
    /// Winograd F(4×4, 3×3).
    Winograd,
    /// Winograd F(2×2, 3×3).
    Winograd2,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ConvKernelArg {
    Auto,
    /// Vectors over 16 output pixels, weights broadcast.
    Pixels,
    /// Vectors over output channels, input pixels broadcast.
    Channels,
}

impl CpuArgs {
    fn options(&self) -> Result<resnetc::backend::cpu::CpuOptions> {
        let arch = self.arch()?;
        let cpu = self
            .cpu
            .clone()
            .unwrap_or_else(|| arch.default_cpu().into());
        self.options_for(cpu)
    }

    /// The options with the code's CPU `cpu`.
    fn options_for(&self, cpu: String) -> Result<resnetc::backend::cpu::CpuOptions> {
        use resnetc::backend::cpu::{ConvAlgo, ConvKernel};
        let tuning = match &self.tuning {
            Some(p) => Some(std::sync::Arc::new(
                resnetc::backend::cpu::tuning::Tuning::load(p)?,
            )),
            None => None,
        };
        let arch = self.arch()?;
        // An unknown CPU name is refused here, before the model is loaded.
        resnetc::backend::llvm::cpu_machine(arch, &cpu)?;
        Ok(resnetc::backend::cpu::CpuOptions {
            arch,
            cpu,
            conv: match self.conv_kernel {
                None | Some(ConvKernelArg::Auto) => ConvKernel::Auto,
                Some(ConvKernelArg::Pixels) => ConvKernel::Pixels,
                Some(ConvKernelArg::Channels) => ConvKernel::Channels,
            },
            algo: match self.conv_algo {
                None | Some(ConvAlgoArg::Auto) => ConvAlgo::Auto,
                Some(ConvAlgoArg::Direct) => ConvAlgo::Direct,
                Some(ConvAlgoArg::Winograd) => ConvAlgo::Winograd,
                Some(ConvAlgoArg::Winograd2) => ConvAlgo::Winograd2,
            },
            tuning,
            precision: self.precision(),
            lower: Vec::new(),
            packed_for: self.packed_for.clone(),
        })
    }

    /// `options` for a static library or object: for x86-64, `--cpu` may
    /// list several levels, and without it the library holds every default
    /// level (AArch64 builds have one: NEON is every AArch64 CPU's).
    fn build_options(&self) -> Result<resnetc::backend::cpu::CpuOptions> {
        if self.arch()? != resnetc::backend::llvm::Arch::X86_64 {
            return self.options();
        }
        let (cpu, lower) =
            resnetc::backend::cpu::levels::requested(self.cpu.as_deref(), self.precision());
        for l in &lower {
            resnetc::backend::llvm::cpu_machine(resnetc::backend::llvm::Arch::X86_64, l)?;
        }
        Ok(resnetc::backend::cpu::CpuOptions {
            lower,
            ..self.options_for(cpu)?
        })
    }
}

#[derive(clap::Args)]
struct OptArgs {
    /// Optimization level: 0 runs no pass, 1 every pass.
    #[arg(short = 'O', value_name = "LEVEL", value_parser = clap::value_parser!(u8).range(0..=1), default_value_t = 1)]
    level: u8,
    /// Stop after this pass (see `resnetc passes`).
    #[arg(long, value_name = "PASS")]
    print_after: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum SummaryFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum ExportFormat {
    Onnx,
}

#[derive(Clone, Copy, ValueEnum)]
enum EmitKind {
    Staticlib,
    Obj,
    LlvmIr,
    Asm,
    /// CUDA: PTX, launch plan and weights.
    Artifact,
    /// CUDA: the PTX alone.
    Ptx,
}

#[derive(Clone, Copy, ValueEnum)]
enum GraphFormat {
    Dot,
    Svg,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum Target {
    /// The reference interpreter.
    Ref,
    /// Native x86-64 code.
    Cpu,
    /// NVIDIA GPUs.
    Cuda,
}

/// A user error (exit 1) with everything already rendered or renderable.
enum Failure {
    Compile(CompileError),
    Other(Report),
}

impl<E: miette::Diagnostic + Send + Sync + 'static> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure::Other(Report::new(e))
    }
}

type Result<T> = std::result::Result<T, Failure>;

/// Exit status of a failure: 1 for the user's errors, 70 (`EX_SOFTWARE`)
/// for the internal errors resnetc catches (`LlvmError::Internal`: code
/// LLVM refused, a stage that found what an earlier one should have
/// removed), which are bugs.
fn exit_code(r: &Report) -> u8 {
    match r.code().map(|c| c.to_string()).as_deref() {
        Some("resnetc::backend::llvm") => 70,
        Some(USAGE) => 2,
        _ => 1,
    }
}

fn main() -> ExitCode {
    // Honour COLUMNS (as `ls` does) so piped or logged messages wrap at a
    // known width; below 40 columns a message would be a word a line.
    if let Some(width) = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse::<usize>().ok())
        .map(|c| c.max(40))
    {
        let _ = miette::set_hook(Box::new(move |_| {
            Box::new(miette::MietteHandlerOpts::new().width(width).build())
        }));
    }
    let cli = Cli::parse();
    let search = front::Options {
        search_path: cli.lib_dir,
        ..Default::default()
    }
    .with_env_path()
    .search_path;
    match dispatch(cli.command, &search) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Compile(e)) => {
            for d in e.diags {
                note!("{:?}", Report::new(d));
            }
            ExitCode::from(1)
        }
        Err(Failure::Other(r)) => {
            note!("{r:?}");
            ExitCode::from(exit_code(&r))
        }
    }
}

/// A user error (exit 1) with its code: every message resnetc prints
/// names one.
fn other(code: &str, msg: String, help: &str) -> Failure {
    Failure::Other(miette::miette!(
        code = code.to_string(),
        help = help.to_string(),
        "{msg}"
    ))
}

/// A write's failure, with its code.
fn cannot_write(path: &Path, e: std::io::Error) -> Failure {
    other(
        OUTPUT,
        format!("cannot write `{}`: {e}", path.display()),
        "check the output path",
    )
}

const OUTPUT: &str = "resnetc::output";

/// An output file's directory must exist: said before any work is done
/// (compiling, binding, running), not after.
fn output_dir_exists(path: &Path, flag: &str) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => return Ok(()),
    };
    if dir.is_dir() {
        return Ok(());
    }
    Err(other(
        OUTPUT,
        format!(
            "cannot write `{}`: the directory `{}` does not exist",
            path.display(),
            dir.display()
        ),
        &format!(
            "create it first (mkdir -p {}), or give {flag} another path",
            dir.display()
        ),
    ))
}

/// A command line whose flags are each valid but do not go together
/// (exit 2, as clap's own usage errors).
fn usage(msg: String, help: &str) -> Failure {
    Failure::Other(miette::miette!(
        code = USAGE,
        help = help.to_string(),
        "{msg}"
    ))
}

const USAGE: &str = "resnetc::usage";

/// Flags that only one target reads are an error with another, rather
/// than silently ignored.
fn flags_fit_target(
    target: Target,
    cpu: &CpuArgs,
    cuda: &CudaArgs,
    threads: Option<u16>,
) -> Result<()> {
    let misplaced = |flag: &str, wants: &str| {
        Err(usage(
            format!(
                "{flag} applies to --target {wants}, not --target {}",
                flag_value(target)
            ),
            &format!("leave out {flag}, or use --target {wants}"),
        ))
    };
    if target != Target::Cuda {
        if cuda.gpu.is_some() {
            return misplaced("--gpu", "cuda");
        }
        if cuda.sms.is_some() {
            return misplaced("--sms", "cuda");
        }
        if cuda.max_split_k.is_some() {
            return misplaced("--max-split-k", "cuda");
        }
    }
    if target != Target::Cpu {
        if cpu.triple.is_some() {
            return misplaced("--triple", "cpu");
        }
        if cpu.cpu.is_some() {
            return misplaced("--cpu", "cpu");
        }
        if cpu.conv_kernel.is_some() {
            return misplaced("--conv-kernel", "cpu");
        }
        if cpu.conv_algo.is_some() {
            return misplaced("--conv-algo", "cpu");
        }
        if cpu.tuning.is_some() {
            return misplaced("--tuning", "cpu");
        }
        if threads.is_some() {
            return misplaced("--threads", "cpu");
        }
    }
    if target == Target::Cuda && cpu.precision.is_some() {
        return misplaced("--precision", "cpu");
    }
    Ok(())
}

/// A flag's value as it is typed (`cuda`, `llvm-ir`).
fn flag_value(v: impl ValueEnum) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

/// Compiles `file` at `size` (default: its signature's sizes), `use`
/// looking in `search` after the file's own directory.
fn compile(file: &Path, search: &[PathBuf], size: Option<&Size>) -> Result<Compiled> {
    let opts = front::Options {
        input_size: size.map(|s| s.0.clone()),
        search_path: search.to_vec(),
        ..Default::default()
    };
    compile_with(file, &opts)
}

fn compile_with(file: &Path, opts: &front::Options) -> Result<Compiled> {
    let c = front::compile_file_with(file, opts).map_err(Failure::Compile)?;
    for w in &c.warnings {
        note!("{:?}", Report::new(w.clone()));
    }
    Ok(c)
}

/// Writes to standard output; a closed pipe (`resnetc ir ... | head`) ends
/// the program quietly instead of panicking.
fn out(text: &str) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    if let Err(e) = o.write_all(text.as_bytes()).and_then(|_| o.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        note!("error: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

/// Prints a result as text or as one JSON object.
fn report(format: SummaryFormat, text: &str, value: &impl serde::Serialize) {
    match format {
        SummaryFormat::Text => out(text),
        SummaryFormat::Json => out(&format!(
            "{}\n",
            serde_json::to_string_pretty(value).expect("reports serialize")
        )),
    }
}

/// `bench --tune`: times every conv candidate, merges the fastest per shape
/// into the record at `path` (kept when it is one, replaced when absent),
/// writes it, and says what differs from the cost model.
fn tune_cpu(
    g: &resnetc::ir::Graph,
    w: &resnetc::weights::Weights,
    x: &resnetc::tensor::Tensor,
    opts: &resnetc::backend::cpu::CpuOptions,
    path: &Path,
) -> Result<resnetc::backend::cpu::tuning::Tuning> {
    use resnetc::backend::cpu::tuning::Tuning;
    let base = if path.exists() {
        Tuning::load(path)?
    } else {
        Tuning::default()
    };
    let t = resnetc::backend::cpu::tuning::tune(g, w, x, opts, base)?;
    let isa = opts.isa();
    let mut differs = 0;
    let mut shapes = std::collections::BTreeSet::new();
    for n in g.schedule() {
        if let Some(k) = resnetc::backend::cpu::tuning::conv_key(g, n, isa) {
            shapes.insert(k);
        }
    }
    for k in &shapes {
        if let Some(e) = t.entries.get(k) {
            if e.choice != e.cost_model {
                differs += 1;
                let ms = |c| e.ms.get(&c).copied().unwrap_or(f64::NAN);
                note!(
                    "tuned {k}: {:?} {:.3} ms, the cost model's {:?} {:.3} ms",
                    e.choice,
                    ms(e.choice),
                    e.cost_model,
                    ms(e.cost_model)
                );
            }
        }
    }
    note!(
        "tuning: {} conv shapes measured, {differs} differ from the cost model; written to {}",
        shapes.len(),
        path.display()
    );
    let text = serde_json::to_string_pretty(&t).expect("records serialize");
    weights::write_atomic(path, text.as_bytes()).map_err(|e| cannot_write(path, e))?;
    Ok(t)
}

/// What `ir` shows of the CPU back end's choices: each conv's algorithm
/// for `opts` (by default on this machine's CPU), and for Winograd the
/// filter transform made at bind time, like the BN folding above it.
fn cpu_conv_plan(g: &resnetc::ir::Graph, opts: &resnetc::backend::cpu::CpuOptions) -> String {
    let algos = resnetc::backend::cpu::conv_algorithms(g, opts);
    if algos.is_empty() {
        return String::new();
    }
    let mut text = format!(
        "cpu convs (--cpu {}, --precision {}):\n",
        opts.cpu,
        opts.precision.name()
    );
    let wino = algos.iter().any(|(_, a)| a != "direct");
    for (name, algo) in algos {
        text.push_str(&format!("  {name}: {algo}\n"));
    }
    if wino {
        text.push_str(
            "  (a winograd conv reads its filter transformed, U = G·w·Gᵀ: [α², ic, oc] \
             made in f64 when the weights are bound)\n",
        );
    }
    text
}

/// The graph after the passes that `opt` asks for.
fn optimized(c: &Compiled, opt: &OptArgs) -> Result<resnetc::ir::Graph> {
    let mut g = c.graph.clone();
    if let Some(p) = &opt.print_after {
        if opt.level == 0 {
            return Err(usage(
                format!("--print-after {p} shows the IR after a pass, and -O0 runs none"),
                "leave out -O0",
            ));
        }
        if !resnetc::passes::names().contains(&p.as_str()) {
            return Err(usage(
                format!("unknown pass `{p}`"),
                &format!("passes: {}", resnetc::passes::names().join(", ")),
            ));
        }
    }
    if opt.level > 0 {
        resnetc::passes::optimize(&mut g, opt.print_after.as_deref());
    }
    Ok(g)
}

fn write_output(path: Option<&Path>, text: &str) -> Result<()> {
    match path {
        None => {
            out(text);
            Ok(())
        }
        Some(p) => weights::write_atomic(p, text.as_bytes()).map_err(|e| cannot_write(p, e)),
    }
}

fn load_weights(c: &Compiled, args: &WeightsArgs) -> Result<Weights> {
    load_weights_with(c, args, LoadArgs::default())
}

fn load_weights_with(c: &Compiled, args: &WeightsArgs, load: LoadArgs) -> Result<Weights> {
    let specs = weights::specs_of(&c.graph);
    match (&args.weights, args.random_weights) {
        (Some(path), _) => {
            let file = weights::load_safetensors(path)?;
            let (w, skipped) =
                weights::bind_with(&specs, file, &path.display().to_string(), &load.options())?;
            report_skipped(path, &skipped);
            Ok(w)
        }
        (None, Some(seed)) => Ok(weights::try_random_weights(&specs, seed)?),
        (None, None) => Err(usage(
            "no weights given".into(),
            "pass --weights W.safetensors or --random-weights SEED",
        )),
    }
}

fn dispatch(cmd: Command, search: &[PathBuf]) -> Result<()> {
    match cmd {
        Command::Check { file, size } => {
            let c = compile(&file, search, size.input_size.as_ref())?;
            let g = &c.graph;
            out(&format!(
                "ok: model {} {} -> {}, {} weight tensors\n",
                g.name,
                c.signature.show(g.input_shape()),
                resnetc::ir::shape::show(g.output_shape()),
                g.weights().len()
            ));
            Ok(())
        }
        Command::Summary {
            file,
            format,
            opt,
            size,
            cpu,
        } => {
            let c = compile(&file, search, size.input_size.as_ref())?;
            let g = optimized(&c, &opt)?;
            let mut s = resnetc::summary::summarize(&g, &c.graph);
            if opt.level > 0 && opt.print_after.is_none() {
                let algos: std::collections::HashMap<String, String> =
                    resnetc::backend::cpu::conv_algorithms(&g, &cpu.options()?)
                        .into_iter()
                        .collect();
                for l in &mut s.layers {
                    l.algo = algos.get(&l.name).cloned();
                }
            }
            report(format, &s.table(), &s);
            Ok(())
        }
        Command::Graph {
            file,
            format,
            output,
            size,
        } => {
            if let Some(o) = &output {
                output_dir_exists(o, "-o")?;
            }
            let c = compile(&file, search, size.input_size.as_ref())?;
            let dot = resnetc::ir::dot::to_dot(&c.graph);
            match format {
                GraphFormat::Dot => write_output(output.as_deref(), &dot),
                GraphFormat::Svg => {
                    let svg = render_svg(&dot)?;
                    write_output(output.as_deref(), &svg)
                }
            }
        }
        Command::Ir {
            file,
            opt,
            size,
            cpu,
        } => {
            let c = compile(&file, search, size.input_size.as_ref())?;
            let g = optimized(&c, &opt)?;
            let mut text = resnetc::ir::print::print(&g);
            if opt.level > 0 && opt.print_after.is_none() {
                text.push_str(&cpu_conv_plan(&g, &cpu.options()?));
            }
            out(&text);
            Ok(())
        }
        Command::Passes => {
            for p in resnetc::passes::PIPELINE {
                out(&format!("{:<16} {}\n", p.name, p.about));
            }
            Ok(())
        }
        Command::Run {
            file,
            weights: wargs,
            input,
            output,
            target,
            cpu,
            threads,
            cuda,
            check_layers,
            load,
        } => {
            if check_layers && target == Target::Ref {
                return Err(usage(
                    "--check-layers compares the layers of a compiled back end".into(),
                    "add --target cpu or --target cuda",
                ));
            }
            flags_fit_target(target, &cpu, &cuda, threads)?;
            output_dir_exists(&output, "--output")?;
            let cuda = match target {
                Target::Cuda => require_cuda(cuda)?,
                // The library checks too; here before the model and weights
                // are loaded.
                Target::Cpu => {
                    cpu.check_runs_here()?;
                    cuda
                }
                _ => cuda,
            };
            // The input first: its height and width are the model's size.
            let x = weights::read_npy(&input)?;
            let opts = front::Options {
                input_size: (x.shape.len() >= 3).then(|| x.shape[2..].to_vec()),
                size_from_input: true,
                search_path: search.to_vec(),
            };
            let c = compile_with(&file, &opts)?;
            let w = load_weights_with(&c, &wargs, load)?;
            weights::check_input_shape(&x, c.graph.input_shape(), &input.display().to_string())?;
            let y = match target {
                Target::Ref if cpu.precision() != resnetc::precision::Precision::F32 => {
                    // The rounding points are those of the optimized graph
                    // (folded weights, fused prologues).
                    let mut g = c.graph.clone();
                    resnetc::passes::optimize(&mut g, None);
                    resnetc::interp::run_in(&g, &w, &x, cpu.precision())?
                }
                Target::Ref => resnetc::interp::run(&c.graph, &w, &x)?,
                Target::Cpu => {
                    let mut g = c.graph.clone();
                    resnetc::passes::optimize(&mut g, None);
                    let opts = cpu.options()?;
                    if let Some(t) = threads {
                        resnetc::backend::cpu::set_num_threads(t as usize);
                    }
                    if check_layers {
                        cpu_check_layers(&g, &w, &x, &opts)?
                    } else {
                        resnetc::backend::cpu::run_jit(&g, &w, &x, &opts)?
                    }
                }
                Target::Cuda if check_layers => {
                    let (y, ok) = cuda_check_layers(&c, &w, &x, &cuda)?;
                    if !ok {
                        return Err(other(
                            "resnetc::cuda::check_layers",
                            "layers of the CUDA back end differ from the interpreter (table above)".into(),
                            "the first one that differs is where to look; the output was not written",
                        ));
                    }
                    y
                }
                Target::Cuda => {
                    let mut dev = cuda_device(&c, &w, &cuda)?;
                    note!(
                        "device: {}, {} ({})",
                        dev.name(),
                        code_for(dev.plan()),
                        dev.loaded()
                    );
                    dev.run(&x)?
                }
            };
            weights::write_npy(&output, &y)?;
            Ok(())
        }
        Command::Build {
            file,
            weights: wargs,
            target,
            emit,
            cpu,
            cuda,
            output,
            quiet,
            input_size,
            load,
        } => {
            let progress = Progress::new(quiet);
            use resnetc::backend::cpu::artifact::Emit;
            use resnetc::backend::cuda::artifact::CudaEmit;
            enum Kind {
                Cpu(Emit),
                Cuda(CudaEmit),
            }
            let kind = match (target, emit) {
                (Target::Cpu, None | Some(EmitKind::Staticlib)) => Kind::Cpu(Emit::Staticlib),
                (Target::Cpu, Some(EmitKind::Obj)) => Kind::Cpu(Emit::Obj),
                (Target::Cpu, Some(EmitKind::LlvmIr)) => Kind::Cpu(Emit::LlvmIr),
                (Target::Cpu, Some(EmitKind::Asm)) => Kind::Cpu(Emit::Asm),
                (Target::Cuda, None | Some(EmitKind::Artifact)) => Kind::Cuda(CudaEmit::Artifact),
                (Target::Cuda, Some(EmitKind::Ptx)) => Kind::Cuda(CudaEmit::Ptx),
                (Target::Cuda, Some(EmitKind::LlvmIr)) => Kind::Cuda(CudaEmit::LlvmIr),
                (Target::Cuda, Some(EmitKind::Staticlib)) => Kind::Cuda(CudaEmit::Staticlib),
                (Target::Ref, _) => {
                    return Err(usage(
                        "the reference interpreter has nothing to build".into(),
                        "use --target cpu or --target cuda",
                    ))
                }
                (t, Some(e)) => {
                    return Err(usage(
                        format!(
                            "--emit {} does not apply to --target {}",
                            flag_value(e),
                            flag_value(t)
                        ),
                        "cpu: staticlib, obj, llvm-ir, asm; cuda: artifact, ptx, llvm-ir, staticlib",
                    ));
                }
            };
            flags_fit_target(target, &cpu, &cuda, None)?;
            let source = match (&wargs.weights, wargs.random_weights) {
                (Some(p), _) => resnetc::api::WeightsSource::File(p.clone()),
                (None, Some(seed)) => resnetc::api::WeightsSource::Random(seed),
                (None, None) => {
                    return Err(usage(
                        "no weights given".into(),
                        "pass --weights or --random-weights",
                    ))
                }
            };
            let mut stage = |s: &str| progress.stage(s);
            let model = resnetc::api::ModelSpec {
                path: file,
                search_path: search.to_vec(),
                sizes: input_size.into_iter().map(|s| s.0).collect(),
                load: load.options(),
            };
            let built = match kind {
                Kind::Cpu(kind) => {
                    let opts = cpu.build_options()?;
                    resnetc::api::build_cpu_model(&model, &source, &output, &opts, kind, &mut stage)
                }
                Kind::Cuda(kind) => {
                    let opts = cuda.options();
                    resnetc::api::build_cuda_model(
                        &model, &source, &output, &opts, kind, &mut stage,
                    )
                }
            }
            .map_err(|e| match e {
                resnetc::api::Error::Compile(c) => Failure::Compile(c),
                other => Failure::Other(Report::new(other)),
            })?;
            if let Some(p) = &wargs.weights {
                report_skipped(p, &built.skipped);
            }
            if !quiet {
                for f in &built.files {
                    note!("wrote {}", f.display());
                }
            }
            progress.done();
            Ok(())
        }
        Command::Bench {
            file,
            weights: wfile,
            random_weights,
            target,
            cpu,
            threads,
            cuda,
            size,
            batch,
            format,
            layers,
            tune,
        } => {
            flags_fit_target(target, &cpu, &cuda, threads)?;
            if tune.is_some() && target != Target::Cpu {
                return Err(usage(
                    format!(
                        "--tune applies to --target cpu, not --target {}",
                        flag_value(target)
                    ),
                    "leave out --tune, or use --target cpu",
                ));
            }
            if tune.is_some() && cpu.precision() != resnetc::precision::Precision::F32 {
                return Err(usage(
                    "--tune measures the fp32 conv kernels".into(),
                    "leave out --precision bf16 (a record steers bf16 convs' tiling; compare their algorithms with --conv-algo)",
                ));
            }
            if let Some(t) = &tune {
                output_dir_exists(t, "--tune")?;
            }
            if layers && target == Target::Ref {
                return Err(usage(
                    "--layers times the calls of the compiled code; the interpreter has none"
                        .into(),
                    "use --target cpu or --target cuda",
                ));
            }
            let cuda = match target {
                Target::Cuda => require_cuda(cuda)?,
                // The library checks too; here before the model and weights
                // are loaded.
                Target::Cpu => {
                    cpu.check_runs_here()?;
                    cuda
                }
                _ => cuda,
            };
            let c = compile(&file, search, size.input_size.as_ref())?;
            let wargs = WeightsArgs {
                weights: wfile,
                random_weights: Some(random_weights.unwrap_or(0)),
            };
            let w = load_weights(&c, &wargs)?;
            let batch = batch as usize;
            let mut shape = vec![batch];
            shape.extend(c.graph.input_shape());
            // A fixed pseudo-random input: timing does not depend on values.
            let n: usize = shape.iter().product();
            let x = resnetc::tensor::Tensor::from_vec(
                &shape,
                (0..n)
                    .map(|i| ((i * 7919 % 2003) as f32 / 1001.5) - 1.0)
                    .collect(),
            );
            let macs: u64 = c.graph.schedule().iter().map(|&n| c.graph.macs_of(n)).sum();
            let t0 = std::time::Instant::now();
            let mut profile = None;
            let mut planned_sms = None;
            let (runs, median, min, spread, threads_used, compile_ms) = match target {
                Target::Cpu => {
                    if let Some(t) = threads {
                        resnetc::backend::cpu::set_num_threads(t as usize);
                    }
                    let mut g = c.graph.clone();
                    resnetc::passes::optimize(&mut g, None);
                    let mut opts = cpu.options()?;
                    if let Some(path) = &tune {
                        opts.tuning = Some(std::sync::Arc::new(tune_cpu(&g, &w, &x, &opts, path)?));
                    }
                    let t0 = std::time::Instant::now();
                    let (r, m, mn, sp, cm) =
                        resnetc::backend::cpu::with_jit(&g, &w, &opts, |run| {
                            let compile_ms = t0.elapsed().as_secs_f64() * 1e3;
                            // A first run that fails (memory for the batch)
                            // is the answer; later runs do the same work.
                            run(&x, None)?;
                            let (r, m, mn, sp) = resnetc::bench::measure(|| {
                                let _ = run(&x, None);
                            });
                            if layers {
                                profile = Some(resnetc::bench::profile(|p| {
                                    let _ = run(&x, Some(p));
                                }));
                            }
                            Ok::<_, resnetc::backend::llvm::LlvmError>((r, m, mn, sp, compile_ms))
                        })??;
                    (r, m, mn, sp, resnetc::backend::cpu::num_threads(), cm)
                }
                Target::Ref => {
                    let (r, m, mn, sp) = resnetc::bench::measure(|| {
                        let _ = resnetc::interp::run(&c.graph, &w, &x);
                    });
                    (r, m, mn, sp, 1, 0.0)
                }
                Target::Cuda => {
                    let mut dev = cuda_device(&c, &w, &cuda)?;
                    planned_sms = Some(dev.plan().sms);
                    let compile_ms = t0.elapsed().as_secs_f64() * 1e3;
                    dev.run(&x)?;
                    note!(
                        "device: {}, {} ({})",
                        dev.name(),
                        code_for(dev.plan()),
                        dev.loaded()
                    );
                    // CUDA events around graph launches: 20 warm-up runs,
                    // then 100 timed ones.
                    let mut times = dev.time(batch as u64, 20, 100)?;
                    if layers {
                        let launches = dev.profile(batch as u64, 20)?;
                        profile = Some(
                            launches
                                .into_iter()
                                .map(|(layer, median_ms)| resnetc::bench::LayerTime {
                                    layer,
                                    median_ms,
                                })
                                .collect(),
                        );
                    }
                    times.sort_by(|a, b| a.total_cmp(b));
                    let median = times[times.len() / 2];
                    let min = times[0];
                    let spread = (times[times.len() * 9 / 10] - times[times.len() / 10]) / median;
                    (times.len(), median, min, spread, 0, compile_ms)
                }
            };
            let report = resnetc::bench::BenchReport {
                model: c.graph.name.clone(),
                target: format!("{:?}", target).to_lowercase(),
                batch,
                threads: threads_used,
                runs,
                median_ms: median,
                min_ms: min,
                spread,
                images_per_s: batch as f64 * 1e3 / median,
                gflops: 2.0 * macs as f64 * batch as f64 / (median * 1e6),
                compile_ms,
                gpu: (target == Target::Cuda).then(|| cuda.options().gpu),
                sms: planned_sms,
                layers: profile.unwrap_or_default(),
            };
            self::report(format, &report.text(), &report);
            Ok(())
        }
        Command::Export {
            file,
            weights: wargs,
            format: ExportFormat::Onnx,
            output,
            size,
            load,
        } => {
            output_dir_exists(&output, "-o")?;
            let c = compile(&file, search, size.input_size.as_ref())?;
            let w = load_weights_with(&c, &wargs, load)?;
            let bytes = resnetc::export::onnx::export(&c.graph, &w)?;
            weights::write_atomic(&output, &bytes).map_err(|e| cannot_write(&output, e))?;
            Ok(())
        }
        Command::Import {
            file,
            output,
            weights_out,
            input_shape,
        } => {
            let input_shape = match input_shape {
                Some(s) => Some(resnetc::import::parse_shape(&s).map_err(|e| {
                    usage(
                        e,
                        "give the input as N x C x H x W, e.g. --input-shape 1x3x224x224",
                    )
                })?),
                None => None,
            };
            let opts = resnetc::import::LiftOptions { input_shape };
            let (imp, wpath) =
                resnetc::import::import_file(&file, &output, weights_out.as_deref(), &opts)?;
            note!(
                "imported {} ONNX nodes (opset {}) as {}{} and {} weight tensors as {}",
                imp.nodes,
                imp.opset,
                output.display(),
                if imp.structured {
                    ""
                } else {
                    " (flat: no repeated blocks)"
                },
                imp.weights.len(),
                wpath.display()
            );
            Ok(())
        }
        Command::Init {
            file,
            seed,
            output,
            size,
        } => {
            output_dir_exists(&output, "-o")?;
            let c = compile(&file, search, size.input_size.as_ref())?;
            let w = weights::try_random_weights(&weights::specs_of(&c.graph), seed)?;
            weights::save_safetensors(&output, &w)?;
            Ok(())
        }
    }
}

/// The optimized model compiled to PTX as `cuda` says and loaded on GPU 0.
fn cuda_device(
    c: &Compiled,
    w: &Weights,
    cuda: &CudaArgs,
) -> Result<resnetc::backend::cuda::runtime::Device> {
    let mut g = c.graph.clone();
    resnetc::passes::optimize(&mut g, None);
    let opts = cuda.options();
    let mut p = resnetc::backend::cuda::compile(&g, w, &opts)?;
    with_sass(&mut p);
    Ok(resnetc::backend::cuda::runtime::Device::load(&p)?)
}

/// SASS for the program's architecture where ptxas is installed and GPU 0
/// is of that architecture (the only GPU SASS runs on), so that the
/// driver does not JIT the PTX; says on stderr what ptxas did.
fn with_sass(p: &mut resnetc::backend::cuda::CudaProgram) {
    use resnetc::backend::cuda::{gpus, runtime, sass};
    let here = runtime::local_gpu().ok().map(|l| l.cc);
    if here.is_some() && here == gpus::find(&p.plan.gpu).map(gpus::capability) {
        if let Some(line) = sass::add(p) {
            note!("{line}");
        }
    }
}

/// `run --check-layers`: the GPU's value of every layer against the
/// interpreter's on the same optimized graph; prints the table and
/// returns the output and whether every layer matched.
/// `run --target cpu --check-layers`: every layer of the compiled code
/// against the interpreter (in the same precision) on the compiled code's
/// own inputs to it; prints the table, fails if any layer is off by more
/// than 1e-4 relative.
fn cpu_check_layers(
    g: &resnetc::ir::Graph,
    w: &Weights,
    x: &resnetc::tensor::Tensor,
    opts: &resnetc::backend::cpu::CpuOptions,
) -> Result<resnetc::tensor::Tensor> {
    const RTOL: f64 = 1e-4;
    let (y, values) = resnetc::backend::cpu::run_jit_layers(g, w, x, opts)?;
    let winograd = resnetc::backend::cpu::bf16_winograd(g, opts);
    let diffs =
        resnetc::interp::layer_check::layer_check(g, w, &values, opts.precision, &winograd)?;
    let mut table = format!("{:>5}  {:<48} {:>11}\n", "#", "layer", "rel error");
    for (i, d) in diffs.iter().enumerate() {
        let verdict = if d.error <= RTOL { "ok" } else { "DIFFERS" };
        table += &format!("{i:>5}  {:<48} {:>11.3e}  {verdict}\n", d.label, d.error);
    }
    out(&table);
    if let Some(d) = diffs.iter().find(|d| d.error > RTOL) {
        return Err(other(
            "resnetc::cpu::check_layers",
            format!(
                "layer `{}` of the CPU back end differs from the interpreter (table above)",
                d.label
            ),
            "the first one that differs is where to look; the output was not written",
        ));
    }
    Ok(y)
}

fn cuda_check_layers(
    c: &Compiled,
    w: &Weights,
    x: &resnetc::tensor::Tensor,
    cuda: &CudaArgs,
) -> Result<(resnetc::tensor::Tensor, bool)> {
    use resnetc::backend::cuda::{check_layers, runtime::Device};
    const RTOL: f64 = 1e-4;
    let mut g = c.graph.clone();
    resnetc::passes::optimize(&mut g, None);
    let mut program = resnetc::backend::cuda::compile(&g, w, &cuda.options())?;
    with_sass(&mut program);
    // Only the values some launch writes: the rest would hold every
    // activation of the batch at once.
    let written: std::collections::HashSet<usize> = program
        .plan
        .launches
        .iter()
        .filter_map(|l| l.writes.as_ref().map(|w| w.node))
        .collect();
    let mut refs = std::collections::HashMap::new();
    resnetc::interp::run_observed(&g, w, x, resnetc::precision::Precision::F32, |n, t| {
        if written.contains(&n.index()) {
            refs.insert(n.index(), t.clone());
        }
    })?;
    let dev = Device::load(&program)?;
    let (y, checks) = check_layers::check_layers(&dev, x, &refs, RTOL)?;
    out(&format!("{}\n", dev.name()));
    out(&check_layers::report(&checks, RTOL));
    Ok((y, checks.iter().all(|l| l.ok)))
}

/// `run`/`bench --target cuda` need a known `--gpu` and the CUDA driver:
/// say so before any work. Without `--gpu`, the code is for GPU 0's own
/// architecture; without `--sms`, planned for GPU 0's multiprocessors.
fn require_cuda(mut cuda: CudaArgs) -> Result<CudaArgs> {
    use resnetc::backend::cuda::runtime;
    if let Some(gpu) = &cuda.gpu {
        resnetc::backend::cuda::gpu(gpu)?;
    }
    if !runtime::driver_present() {
        return Err(runtime::CudaError::NoDriver.into());
    }
    let local = runtime::local_gpu()?;
    if cuda.gpu.is_none() {
        cuda.gpu = Some(local.architecture()?.name.into());
    }
    cuda.sms = cuda.sms.or(Some(local.sms));
    Ok(cuda)
}

/// What CUDA code runs: `code for sm_90, planned for 114 multiprocessors`.
fn code_for(plan: &resnetc::backend::cuda::plan::LaunchPlan) -> String {
    format!(
        "code for {}, planned for {} multiprocessors",
        plan.gpu, plan.sms
    )
}

/// Stage messages on stderr, shown once a build has taken over a second.
struct Progress {
    start: std::time::Instant,
    quiet: bool,
}

impl Progress {
    fn new(quiet: bool) -> Progress {
        Progress {
            start: std::time::Instant::now(),
            quiet,
        }
    }

    fn stage(&self, what: &str) {
        let t = self.start.elapsed();
        if !self.quiet && t.as_secs_f64() > 1.0 {
            note!("[{:>5.1}s] {what}", t.as_secs_f64());
        }
    }

    fn done(&self) {
        let t = self.start.elapsed();
        if !self.quiet && t.as_secs_f64() > 1.0 {
            note!("[{:>5.1}s] done", t.as_secs_f64());
        }
    }
}

const GRAPHVIZ: &str = "resnetc::graphviz";

fn render_svg(dot: &str) -> Result<String> {
    use std::io::Write;
    use std::process::{Command as Proc, Stdio};
    let mut child = Proc::new("dot")
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|_| {
            other(
                GRAPHVIZ,
                "Graphviz's `dot` was not found, so no SVG can be drawn".into(),
                "install Graphviz (`apt-get install graphviz`), or use --format dot and render it elsewhere",
            )
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(dot.as_bytes()).map_err(|e| {
            other(
                GRAPHVIZ,
                format!("cannot talk to `dot`: {e}"),
                "check your Graphviz installation",
            )
        })?;
    }
    let out = child.wait_with_output().map_err(|e| {
        other(
            GRAPHVIZ,
            format!("`dot` failed: {e}"),
            "check your Graphviz installation",
        )
    })?;
    if !out.status.success() {
        return Err(other(
            GRAPHVIZ,
            format!(
                "`dot` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            "check your Graphviz installation",
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::exit_code;
    use miette::Report;
    use resnetc::backend::llvm::LlvmError;

    #[test]
    fn internal_errors_exit_70_and_user_errors_1() {
        let bug = Report::new(resnetc::api::Error::from(LlvmError::Internal("x".into())));
        assert_eq!(exit_code(&bug), 70);
        let user = Report::new(LlvmError::UnknownGpu("sm_61".into()));
        assert_eq!(exit_code(&user), 1);
        for caller in [
            LlvmError::Unplanned,
            LlvmError::Input {
                got: vec![1],
                want: vec![3],
            },
        ] {
            assert_eq!(
                exit_code(&Report::new(resnetc::api::Error::from(caller))),
                1
            );
        }
        assert_eq!(exit_code(&miette::miette!("no weights given")), 1);
    }
}
