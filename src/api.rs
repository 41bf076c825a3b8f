//! The library API for build scripts and tools: compile a `.res` model to a
//! static library (or another artifact, CPU or CUDA) in one call. `resnetc build` is this
//! function behind a command line.

use crate::backend::cpu::artifact::{self, Emit};
use crate::backend::cpu::levels;
use crate::backend::cpu::CpuOptions;
use crate::backend::cuda::artifact::CudaEmit;
use crate::backend::cuda::{self, CudaOptions};
use crate::backend::llvm::LlvmError;
use crate::front::{self, CompileError};
use crate::weights::{self, NpyError, WeightsError};
use std::path::{Path, PathBuf};

/// Where a build's weights come from.
#[derive(Clone, Debug)]
pub enum WeightsSource {
    /// A safetensors file named by PyTorch `state_dict` keys.
    File(PathBuf),
    /// Seeded random weights (as `resnetc init --seed`).
    Random(u64),
}

/// What to compile: the model file, where its `use`s look after its own
/// directory, and the input sizes to compile it at.
#[derive(Clone, Debug, Default)]
pub struct ModelSpec {
    pub path: PathBuf,
    pub search_path: Vec<PathBuf>,
    /// Heights and widths: none for the model's own (its signature's
    /// defaults), one, or several for a CPU static library holding each.
    pub sizes: Vec<Vec<usize>>,
    /// How strictly a weights file binds (default: exactly).
    pub load: weights::BindOptions,
}

impl ModelSpec {
    /// `path` at its own sizes.
    pub fn new(path: impl Into<PathBuf>) -> ModelSpec {
        ModelSpec {
            path: path.into(),
            ..Default::default()
        }
    }

    fn options(&self, size: Option<&Vec<usize>>) -> front::Options {
        front::Options {
            input_size: size.cloned(),
            size_from_input: false,
            search_path: self.search_path.clone(),
        }
    }
}

/// Anything that can stop a build.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum Error {
    #[error("{}", .0.render_plain())]
    Compile(CompileError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Weights(#[from] WeightsError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Npy(#[from] NpyError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Llvm(#[from] LlvmError),
    #[error("{0}")]
    #[diagnostic(
        code(resnetc::input_size),
        help("several input sizes make a CPU static library (--emit staticlib); build other outputs one size at a time")
    )]
    Sizes(String),
    #[error("cannot write `{path}`: {source}")]
    #[diagnostic(code(resnetc::io), help("check that the output directory is writable"))]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// What a build wrote.
#[derive(Clone, Debug)]
pub struct Built {
    /// The C symbol prefix (`resnet18` → `resnet18_forward`).
    pub symbol: String,
    pub files: Vec<PathBuf>,
    /// Per-image input and output shapes (batch excluded).
    pub input_shape: Vec<usize>,
    pub output_shape: Vec<usize>,
    /// Working memory per image of a CPU library's
    /// `<symbol>_forward_with_arena`; `None` for CUDA builds.
    pub arena_bytes_per_image: Option<usize>,
    /// What a non-strict load (`ModelSpec::load`) filled in or ignored.
    pub skipped: weights::Skipped,
}

/// Compiles `model` with `weights` for `opts.cpu` and writes the artifact
/// into `out_dir` (created if missing). Every file is written atomically.
/// `on_stage` hears the stage names as the build goes.
pub fn build_cpu(
    model: &Path,
    weights: &WeightsSource,
    out_dir: &Path,
    opts: &CpuOptions,
    emit: Emit,
    on_stage: &mut dyn FnMut(&str),
) -> Result<Built, Error> {
    build_cpu_model(
        &ModelSpec::new(model),
        weights,
        out_dir,
        opts,
        emit,
        on_stage,
    )
}

/// `build_cpu` for a model spec: with several sizes, a static library
/// holding each (`<symbol>_forward_hw` takes the height and width).
pub fn build_cpu_model(
    model: &ModelSpec,
    weights: &WeightsSource,
    out_dir: &Path,
    opts: &CpuOptions,
    emit: Emit,
    on_stage: &mut dyn FnMut(&str),
) -> Result<Built, Error> {
    if model.sizes.len() > 1 {
        if emit != Emit::Staticlib {
            return Err(Error::Sizes(format!(
                "{} input sizes given for --emit {emit:?}",
                model.sizes.len()
            )));
        }
        return build_cpu_sizes(model, weights, out_dir, opts, on_stage);
    }
    let (g, w, skipped) = load(model, model.sizes.first(), weights, on_stage)?;
    let derived = weights::materialize(&g, &w);
    let levels = levels::plan(&g, &w, &derived, opts)?;
    on_stage("generating code");
    let files = artifact::build(&g, &levels, opts, emit)?;
    let arena = levels::arena_bytes(&g, &levels);
    finish(&g, files, out_dir, Some(arena), skipped, on_stage)
}

/// Compiles `model` with `weights` for `opts.gpu` and writes the CUDA
/// artifact (`emit`) into `out_dir`, as `build_cpu` does.
pub fn build_cuda(
    model: &Path,
    weights: &WeightsSource,
    out_dir: &Path,
    opts: &CudaOptions,
    emit: CudaEmit,
    on_stage: &mut dyn FnMut(&str),
) -> Result<Built, Error> {
    build_cuda_model(
        &ModelSpec::new(model),
        weights,
        out_dir,
        opts,
        emit,
        on_stage,
    )
}

/// `build_cuda` for a model spec of at most one size.
pub fn build_cuda_model(
    model: &ModelSpec,
    weights: &WeightsSource,
    out_dir: &Path,
    opts: &CudaOptions,
    emit: CudaEmit,
    on_stage: &mut dyn FnMut(&str),
) -> Result<Built, Error> {
    if model.sizes.len() > 1 {
        return Err(Error::Sizes(format!(
            "{} input sizes given for --target cuda, which builds one size at a time",
            model.sizes.len()
        )));
    }
    let (g, w, skipped) = load(model, model.sizes.first(), weights, on_stage)?;
    on_stage("generating PTX");
    let files = cuda::artifact::build(&g, &w, opts, emit)?;
    finish(&g, files, out_dir, None, skipped, on_stage)
}

/// One static library holding `model` at each of its sizes.
fn build_cpu_sizes(
    model: &ModelSpec,
    weights: &WeightsSource,
    out_dir: &Path,
    opts: &CpuOptions,
    on_stage: &mut dyn FnMut(&str),
) -> Result<Built, Error> {
    use crate::backend::cpu::sizes::{self, SizedObject};
    let mut parts: Vec<SizedObject> = Vec::new();
    let mut skipped = weights::Skipped::default();
    let mut first = None;
    for size in &model.sizes {
        let (mut g, w, s) = load(model, Some(size), weights, on_stage)?;
        skipped = s;
        let [h, wd] = size[..] else {
            return Err(Error::Sizes(format!("{size:?} is not a height and width")));
        };
        if parts.iter().any(|p| p.size == [h, wd]) {
            return Err(Error::Sizes(format!("the size {h}x{wd} is given twice")));
        }
        let (name, base) = (g.name.clone(), crate::backend::shared::symbol(&g.name));
        let sym = sizes::sized_symbol(&base, [h, wd]);
        g.name = sym.clone();
        let derived = weights::materialize(&g, &w);
        let levels = levels::plan(&g, &w, &derived, opts)?;
        on_stage(&format!("generating code for {h}x{wd}"));
        let files = artifact::build(&g, &levels, opts, Emit::Obj)?;
        let object = files
            .into_iter()
            .find(|(name, _)| name.ends_with(".o"))
            .map(|(_, bytes)| bytes)
            .ok_or_else(|| LlvmError::Internal("no object".into()))?;
        let arena = levels::arena_bytes(&g, &levels);
        parts.push(SizedObject {
            size: [h, wd],
            header: artifact::header(&g, &levels, &sym, Emit::Staticlib),
            sym,
            object,
            arena_bytes_per_image: arena,
            output_size: g.output_shape().iter().product(),
        });
        if first.is_none() {
            first = Some((base, name, g));
        }
    }
    let (base, name, g) = first.ok_or_else(|| Error::Sizes("no input size given".into()))?;
    let files = sizes::staticlib(&base, &name, &parts, opts)?;
    let mut built = finish(&g, files, out_dir, None, skipped, on_stage)?;
    built.symbol = base;
    Ok(built)
}

/// The optimized graph of `model` at `size` and its bound weights.
fn load(
    model: &ModelSpec,
    size: Option<&Vec<usize>>,
    weights: &WeightsSource,
    on_stage: &mut dyn FnMut(&str),
) -> Result<(crate::ir::Graph, weights::Weights, weights::Skipped), Error> {
    let mut skipped_here = weights::Skipped::default();
    let skipped = &mut skipped_here;
    let c = front::compile_file_with(&model.path, &model.options(size)).map_err(Error::Compile)?;
    on_stage("binding weights");
    let specs = weights::specs_of(&c.graph);
    let w = match weights {
        WeightsSource::File(p) => {
            let (w, s) = weights::bind_with(
                &specs,
                weights::load_safetensors(p)?,
                &p.display().to_string(),
                &model.load,
            )?;
            *skipped = s;
            w
        }
        WeightsSource::Random(seed) => weights::try_random_weights(&specs, *seed)?,
    };
    on_stage("optimizing");
    let mut g = c.graph.clone();
    crate::passes::optimize(&mut g, None);
    Ok((g, w, skipped_here))
}

/// Writes a build's files atomically into `out_dir` (created if missing),
/// or a build of one file to `out_dir` itself where that is a path with an
/// extension and not a directory.
fn finish(
    g: &crate::ir::Graph,
    files: Vec<(String, Vec<u8>)>,
    out_dir: &Path,
    arena_bytes_per_image: Option<usize>,
    skipped: weights::Skipped,
    on_stage: &mut dyn FnMut(&str),
) -> Result<Built, Error> {
    on_stage("writing");
    let io = |path: &Path, source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    // One file, and a path with an extension that is no directory: that
    // file (`-o m.ptx`); otherwise a directory to write into.
    let single = files.len() == 1 && out_dir.extension().is_some() && !out_dir.is_dir();
    let dir = match (single, out_dir.parent()) {
        (true, Some(parent)) => parent,
        _ => out_dir,
    };
    if !dir.as_os_str().is_empty() {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    }
    let written: Vec<PathBuf> = if single {
        vec![out_dir.to_path_buf()]
    } else {
        files.iter().map(|(name, _)| out_dir.join(name)).collect()
    };
    // All or none: a library without its header, or a plan without its
    // weights, would be worse than no output.
    let set: Vec<(&Path, &[u8])> = written
        .iter()
        .zip(&files)
        .map(|(p, (_, bytes))| (p.as_path(), bytes.as_slice()))
        .collect();
    crate::outputs::write_all_atomic(&set).map_err(|(p, e)| io(&p, e))?;
    Ok(Built {
        symbol: crate::backend::shared::symbol(&g.name),
        files: written,
        input_shape: g.input_shape().to_vec(),
        output_shape: g.output_shape().to_vec(),
        arena_bytes_per_image,
        skipped,
    })
}

/// Rust bindings for a built static library: the shapes as constants and a
/// safe `forward` over slices. A build script writes this into `OUT_DIR` and
/// the crate `include!`s it (see examples/embed_rust).
pub fn rust_bindings(built: &Built) -> String {
    let sym = &built.symbol;
    let per = |s: &[usize]| s.iter().product::<usize>();
    format!(
        r#"// Generated by resnetc {version} for `{sym}`.
/// Per-image input shape (NCHW, batch excluded).
pub const INPUT_SHAPE: [usize; {in_rank}] = {in_shape:?};
/// Per-image output shape.
pub const OUTPUT_SHAPE: [usize; {out_rank}] = {out_shape:?};
/// Floats per input image.
pub const INPUT_SIZE: usize = {in_size};
/// Floats per output.
pub const OUTPUT_SIZE: usize = {out_size};

extern "C" {{
    fn {sym}_forward(input: *const f32, output: *mut f32, batch: i32) -> i32;
}}

/// Why `forward` failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardError {{
    /// The input is not a whole number (at least one) of images.
    InputSize {{ len: usize }},
    /// The model returned this status (-2: out of memory).
    Status(i32),{output_size}
}}

/// The batch of `input`: a whole number (at least one) of images.
fn batch_of(input: &[f32]) -> Result<usize, ForwardError> {{
    let batch = input.len() / INPUT_SIZE;
    if batch == 0 || input.len() % INPUT_SIZE != 0 || batch > i32::MAX as usize {{
        return Err(ForwardError::InputSize {{ len: input.len() }});
    }}
    Ok(batch)
}}

/// Runs the model on `input.len() / INPUT_SIZE` images; re-entrant.
pub fn forward(input: &[f32]) -> Result<Vec<f32>, ForwardError> {{
    let batch = batch_of(input)?;
    let mut output = vec![0f32; batch * OUTPUT_SIZE];
    // SAFETY: the input holds `batch` whole images and the output room for
    // `batch` results, exactly what the generated function reads and writes.
    let status = unsafe {{ {sym}_forward(input.as_ptr(), output.as_mut_ptr(), batch as i32) }};
    if status == 0 {{
        Ok(output)
    }} else {{
        Err(ForwardError::Status(status))
    }}
}}
{runner}"#,
        runner = built
            .arena_bytes_per_image
            .map_or(String::new(), |a| runner(sym, a)),
        // Only beside `Runner`: an unused variant would be a warning.
        output_size = if built.arena_bytes_per_image.is_some() {
            "\n    /// `Runner::forward_into`'s output is not `batch * OUTPUT_SIZE` floats.\n    OutputSize { len: usize },"
        } else {
            ""
        },
        version = env!("CARGO_PKG_VERSION"),
        in_rank = built.input_shape.len(),
        in_shape = built.input_shape,
        out_rank = built.output_shape.len(),
        out_shape = built.output_shape,
        in_size = per(&built.input_shape),
        out_size = per(&built.output_shape),
    )
}

/// The bindings' `Runner`: `forward` in working memory it keeps
/// (`<sym>_forward_with_arena`), for a CPU library of `arena` bytes an image.
fn runner(sym: &str, arena: usize) -> String {
    format!(
        r#"
extern "C" {{
    fn {sym}_forward_with_arena(input: *const f32, output: *mut f32, batch: i32, arena: *mut core::ffi::c_void) -> i32;
}}

/// Bytes of working memory per image.
pub const ARENA_BYTES_PER_IMAGE: usize = {arena};

/// Runs the model in working memory it keeps across calls, so that a call
/// allocates nothing (`forward` allocates per call, which costs a large
/// batch the pages the allocation maps). One per thread: `&mut self`.
#[derive(Default)]
pub struct Runner {{
    arena: Vec<f32>,
}}

impl core::fmt::Debug for Runner {{
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {{
        f.debug_struct("Runner").field("arena_bytes", &(4 * self.arena.len())).finish()
    }}
}}

impl Runner {{
    pub fn new() -> Runner {{
        Runner::default()
    }}

    /// `forward` into `output`, which must hold `batch * OUTPUT_SIZE` floats.
    pub fn forward_into(&mut self, input: &[f32], output: &mut [f32]) -> Result<(), ForwardError> {{
        let batch = batch_of(input)?;
        if output.len() != batch * OUTPUT_SIZE {{
            return Err(ForwardError::OutputSize {{ len: output.len() }});
        }}
        // Floats, so the arena is aligned as the code expects; at least one,
        // so the pointer is never null.
        let floats = batch
            .checked_mul(ARENA_BYTES_PER_IMAGE)
            .ok_or(ForwardError::Status(-2))?
            .div_ceil(4)
            .max(1);
        if self.arena.len() < floats {{
            // Out of memory is an error, as in `forward`, not an abort.
            self.arena
                .try_reserve_exact(floats - self.arena.len())
                .map_err(|_| ForwardError::Status(-2))?;
            self.arena.resize(floats, 0.0);
        }}
        // SAFETY: whole images in, room for their results out, and an arena
        // of at least `batch * ARENA_BYTES_PER_IMAGE` bytes that only this
        // call uses (`&mut self`).
        let status = unsafe {{
            {sym}_forward_with_arena(input.as_ptr(), output.as_mut_ptr(), batch as i32, self.arena.as_mut_ptr().cast())
        }};
        if status == 0 {{
            Ok(())
        }} else {{
            Err(ForwardError::Status(status))
        }}
    }}
}}
"#
    )
}
