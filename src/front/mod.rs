//! The front end: `.res` text → AST → graph IR with every shape checked.

// A diagnostic carries its message, spans, hint and notes by value: it is
// built once, on the cold path that ends compilation, so its size in `Err`
// costs nothing worth boxing for.
#![allow(clippy::result_large_err)]

pub mod ast;
pub mod builtins;
pub mod diagnostic;
pub mod expand;
mod fit;
pub mod library;
pub mod parse;
pub mod signature;
pub mod source;

use crate::ir::graph::Graph;
use diagnostic::Diag;
use source::{SourceMap, Span};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Most files one compilation may read through `use`.
pub const MAX_FILES: usize = 256;
/// Largest source file accepted.
pub const MAX_FILE_BYTES: usize = 16 << 20;

/// A checked model.
#[derive(Debug)]
pub struct Compiled {
    pub graph: Graph,
    pub warnings: Vec<Diag>,
    pub sources: SourceMap,
    /// The input's symbolic sizes, which the graph has bound.
    pub signature: signature::Signature,
}

/// How to compile: the input size to bind and where `use` looks.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Sizes of the input's axes after the channels (height and width of
    /// an image), in place of the signature's defaults.
    pub input_size: Option<Vec<usize>>,
    /// `input_size` is the size of the data at hand (`run`'s input): it
    /// binds only symbolic sizes, and a fixed size that differs is left to
    /// the input's shape check.
    pub size_from_input: bool,
    /// Directories searched, in order, for a `use` path that is not found
    /// next to the file that uses it (`-L DIR`, then `RESNETC_PATH`).
    pub search_path: Vec<PathBuf>,
}

impl Options {
    /// `RESNETC_PATH`'s directories (separated as `PATH` is) after `dirs`.
    pub fn with_env_path(mut self) -> Options {
        if let Some(p) = std::env::var_os(library::PATH_VAR) {
            self.search_path.extend(std::env::split_paths(&p));
        }
        self
    }
}

/// Why a model did not compile: errors first, then any warnings, each bound
/// to its source for rendering.
#[derive(Debug)]
pub struct CompileError {
    pub diags: Vec<Diag>,
}

impl CompileError {
    pub fn render_plain(&self) -> String {
        self.diags
            .iter()
            .map(Diag::render_plain)
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn first(&self) -> &Diag {
        &self.diags[0]
    }
}

impl std::fmt::Display for CompileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}",
            self.diags
                .first()
                .map(|d| d.message.as_str())
                .unwrap_or("compile error")
        )
    }
}

impl std::error::Error for CompileError {}

/// Compiles the `.res` file at `path` (its `use`s resolved next to it) at
/// its default input size.
pub fn compile_file(path: &Path) -> Result<Compiled, CompileError> {
    compile_file_with(path, &Options::default())
}

/// Compiles the `.res` file at `path` as `opts` says.
pub fn compile_file_with(path: &Path, opts: &Options) -> Result<Compiled, CompileError> {
    let text = read_source(path).map_err(|msg| CompileError {
        diags: vec![match onnx_diag(path) {
            Some(d) => d,
            None => io_diag(msg),
        }],
    })?;
    compile_source_with(&path.display().to_string(), &text, path.parent(), opts)
}

/// Compiles source text; `base` is where `use` paths are resolved.
pub fn compile_source(
    name: &str,
    text: &str,
    base: Option<&Path>,
) -> Result<Compiled, CompileError> {
    compile_source_with(name, text, base, &Options::default())
}

/// `compile_source` as `opts` says.
pub fn compile_source_with(
    name: &str,
    text: &str,
    base: Option<&Path>,
    opts: &Options,
) -> Result<Compiled, CompileError> {
    let mut sources = SourceMap::default();
    let result = compile_inner(name, text, base, opts, &mut sources);
    let attach = |d: Diag| {
        if sources.files.is_empty() {
            d
        } else {
            d.attach(&sources)
        }
    };
    match result {
        Ok((graph, warnings, signature)) => Ok(Compiled {
            graph,
            warnings: warnings.into_iter().map(attach).collect(),
            signature,
            sources,
        }),
        Err(diags) => Err(CompileError {
            diags: diags.into_iter().map(attach).collect(),
        }),
    }
}

fn io_diag(msg: String) -> Diag {
    let mut sources = SourceMap::default();
    sources.add("<command line>", msg.clone());
    Diag::error("res::io", Span::new(0, 0, msg.len()), msg)
        .label("could not read")
        .attach(&sources)
}

/// An ONNX model given where a `.res` file belongs: say so, and how to
/// import it, rather than "not UTF-8 text".
fn onnx_diag(path: &Path) -> Option<Diag> {
    let named_onnx = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"));
    let looks_onnx = || {
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() <= 1 << 30)
            && std::fs::read(path).is_ok_and(|b| crate::import::looks_like_onnx(&b))
    };
    if !((named_onnx && path.is_file()) || looks_onnx()) {
        return None;
    }
    let msg = format!("`{}` is an ONNX model, not a .res file", path.display());
    let mut sources = SourceMap::default();
    sources.add("<command line>", msg.clone());
    Some(
        Diag::error("res::io", Span::new(0, 0, msg.len()), msg)
            .label("an ONNX model")
            .help(format!(
                "import it first: resnetc import {} -o model.res, then use model.res",
                path.display()
            ))
            .attach(&sources),
    )
}

fn read_source(path: &Path) -> Result<String, String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    if meta.is_dir() {
        return Err(format!(
            "`{}` is a directory, not a .res file",
            path.display()
        ));
    }
    if meta.len() as usize > MAX_FILE_BYTES {
        return Err(format!("`{}` is larger than 16 MiB", path.display()));
    }
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        format!(
            "`{}` is not UTF-8 text (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    // Editors on Windows may start UTF-8 files with a byte-order mark.
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => text,
    })
}

type Expanded = (Graph, Vec<Diag>, signature::Signature);

fn compile_inner(
    name: &str,
    text: &str,
    base: Option<&Path>,
    opts: &Options,
    sources: &mut SourceMap,
) -> Result<Expanded, Vec<Diag>> {
    let (modules, main_id) = load_modules(name, text, base, opts, sources).map_err(|d| vec![d])?;
    expand_model(&modules, main_id, opts, sources)
}

/// The main file and every file it `use`s, breadth-first.
fn load_modules(
    name: &str,
    text: &str,
    base: Option<&Path>,
    opts: &Options,
    sources: &mut SourceMap,
) -> Result<(Vec<(u32, ast::Module)>, u32), Diag> {
    let main_id = sources.add(name, text);
    let main = parse::parse_module(text, main_id)?;
    // Load `use`d files breadth-first; a file is read once however often it
    // is used, so cycles are harmless.
    let mut modules = vec![(main_id, main)];
    let mut loaded: HashMap<PathBuf, u32> = HashMap::new();
    // The main file counts as read, so a library that `use`s it back is fine.
    if let Some(b) = base {
        let main_path = b.join(Path::new(name).file_name().unwrap_or_default());
        loaded.insert(main_path.canonicalize().unwrap_or(main_path), main_id);
    }
    let mut i = 0;
    while i < modules.len() {
        let dir = if i == 0 {
            base.map(Path::to_path_buf)
        } else {
            Path::new(&sources.file(modules[i].0).name)
                .parent()
                .map(Path::to_path_buf)
        };
        let uses = modules[i].1.uses.clone();
        for u in uses {
            let found = library::resolve(&u.path, dir.as_deref(), &opts.search_path);
            let key = found.key();
            if loaded.contains_key(&key) {
                continue;
            }
            if sources.files.len() >= MAX_FILES {
                return Err(Diag::error("res::use", u.span, "too many files")
                    .label(format!("more than {MAX_FILES} files used")));
            }
            let text = match &found {
                library::Found::Std { text, .. } => text.to_string(),
                library::Found::File(path) => read_source(path).map_err(|msg| {
                    Diag::error("res::use", u.span, format!("cannot use `{}`", u.path))
                        .label(msg)
                        .help(library::not_found_help(&opts.search_path))
                })?,
            };
            let id = sources.add(found.display(), text.as_str());
            loaded.insert(key, id);
            let m = parse::parse_module(&text, id)?;
            modules.push((id, m));
        }
        i += 1;
    }
    Ok((modules, main_id))
}

/// Expands the main file's model at the size `opts` asks for (or its
/// defaults); where the size does not fit, says which sizes do.
fn expand_model(
    modules: &[(u32, ast::Module)],
    main_id: u32,
    opts: &Options,
    sources: &SourceMap,
) -> Result<Expanded, Vec<Diag>> {
    let blocks = block_table(modules).map_err(|d| vec![d])?;
    let model = the_model(modules, main_id).map_err(|d| vec![d])?;
    let expand = |request: Option<&[usize]>| {
        let bound = signature::bind(model, request, !opts.size_from_input)?;
        let (graph, warnings) = expand::Expander::run(model, &bound, &blocks, sources)?;
        Ok::<_, Diag>((graph, warnings, bound))
    };
    let (graph, warnings, bound) = match expand(opts.input_size.as_deref()) {
        Ok(r) => r,
        Err(e) => return Err(fit::advise(model, opts, e, &expand)),
    };
    if let Err(e) = crate::ir::verify::verify(&graph) {
        return Err(vec![Diag::error(
            "res::internal",
            model.name.span,
            format!("internal error: the IR failed verification: {e}"),
        )
        .label("while compiling this model")
        .help("this is a bug in resnetc; please report it with the .res file")]);
    }
    Ok((graph, warnings, bound.signature))
}

/// Every block of every file, by name.
fn block_table(modules: &[(u32, ast::Module)]) -> Result<HashMap<String, &ast::BlockDef>, Diag> {
    let mut blocks: HashMap<String, &ast::BlockDef> = HashMap::new();
    for (_, m) in modules {
        for b in &m.blocks {
            if builtins::find(&b.name.name).is_some() {
                return Err(Diag::error(
                    "res::duplicate",
                    b.name.span,
                    format!("`{}` is a built-in operator", b.name.name),
                )
                .label("cannot redefine")
                .help("choose another block name"));
            }
            if let Some(first) = blocks.get(&b.name.name) {
                return Err(Diag::error(
                    "res::duplicate",
                    b.name.span,
                    format!("block `{}` is defined twice", b.name.name),
                )
                .label("second definition")
                .also(first.name.span, "first definition")
                .help("rename one of them"));
            }
            let mut seen: HashMap<&str, Span> = HashMap::new();
            for p in &b.params {
                if let Some(first) = seen.insert(&p.name.name, p.name.span) {
                    return Err(Diag::error(
                        "res::duplicate",
                        p.name.span,
                        format!("parameter `{}` is declared twice", p.name.name),
                    )
                    .label("second declaration")
                    .also(first, "first declaration"));
                }
            }
            blocks.insert(b.name.name.clone(), b);
        }
    }
    Ok(blocks)
}

/// The main file's one model.
fn the_model(modules: &[(u32, ast::Module)], main_id: u32) -> Result<&ast::ModelDef, Diag> {
    let models = &modules[0].1.models;
    match models.as_slice() {
        [m] => Ok(m),
        [] => Err(Diag::error(
            "res::no_model",
            Span::new(main_id, 0, 0),
            "no model in this file",
        )
        .label("expected `model name(x: f32[N, ...]) { ... }`")
        .help("a file passed to resnetc defines one model; blocks may live in `use`d files")),
        [_, second, ..] => Err(Diag::error(
            "res::duplicate",
            second.name.span,
            "more than one model in this file",
        )
        .label("second model")
        .help("put each model in its own file and share blocks with `use`")),
    }
}
