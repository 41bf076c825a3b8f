//! `resnetc import`: an ONNX model → a readable `.res` and its weights as
//! safetensors, named as the model's PyTorch `state_dict` (the ONNX
//! initializer names), so that the rest of resnetc applies unchanged.
//!
//! The stages: [`onnx_read`] decodes the protobuf (prost, types generated
//! from ONNX's onnx.proto), [`lift`] maps nodes to the language's operators
//! and folds shape arithmetic, [`names`] gives every layer its path,
//! [`blocks`] finds repeated modules, [`emit_res`] writes the text. The
//! result is compiled again before anything is returned, and its declared
//! weights must be exactly the ones written.

pub mod blocks;
pub mod emit_res;
pub mod error;
pub mod lift;
pub mod names;
#[allow(clippy::all, clippy::pedantic)]
#[rustfmt::skip]
pub mod onnx_proto;
pub mod onnx_read;

pub use error::ImportError;
pub use lift::LiftOptions;
pub use onnx_read::looks_like_onnx;

use crate::weights::Weights;

/// What an import produces.
#[derive(Debug)]
pub struct Imported {
    pub res: String,
    pub weights: Weights,
    /// Whether repeated modules became blocks (false: the flat fallback).
    pub structured: bool,
    pub opset: i64,
    pub nodes: usize,
}

/// A model name from a file stem: an identifier, not a keyword.
pub fn model_name(stem: &str) -> String {
    let mut s: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if !s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        s = format!("m_{s}");
    }
    if blocks::reserved(&s) {
        s.push_str("_model");
    }
    s
}

/// Imports the ONNX model `bytes`; `path` names it in messages and in the
/// header comment, `name` is the model's name in the `.res`.
pub fn import(
    bytes: &[u8],
    path: &str,
    name: &str,
    opts: &LiftOptions,
) -> Result<Imported, ImportError> {
    let m = onnx_read::read(bytes, path)?;
    let l = lift::lift(&m, path, opts)?;
    let paths = names::assign(&l);
    let mut weights = Weights::new();
    for (i, node) in l.nodes.iter().enumerate() {
        if let Some(p) = &paths.param[i] {
            for (s, t) in node.op.weight_suffixes().iter().zip(&node.weights) {
                weights.insert(format!("{p}.{s}"), t.clone());
            }
        }
    }
    let file = std::path::Path::new(path)
        .file_name()
        .map(|f| f.to_string_lossy().to_string())
        .unwrap_or_default();
    let header = format!(
        "// Imported from {file} (ONNX opset {}) by `resnetc import`.\n// Weights: the initializers' names (PyTorch state_dict keys); BN folded\n// into a conv by the exporter comes in as the conv's bias.\n\n",
        m.opset
    );
    let mut last_err = String::new();
    // Each form is checked; the plainer ones are there in case a fancier
    // one does not compile.
    for (structured, loops) in [(true, true), (true, false), (false, false)] {
        let text = match blocks::emit(&l, &paths, name, &header, structured, loops) {
            Ok(t) => t,
            Err(e) => {
                last_err = e;
                continue;
            }
        };
        match check(&text, &weights) {
            Ok(()) => {
                return Ok(Imported {
                    res: text,
                    weights,
                    structured,
                    opset: m.opset,
                    nodes: m.nodes.len(),
                })
            }
            Err(e) => {
                if std::env::var_os("RESNETC_IMPORT_DEBUG").is_some() {
                    eprintln!("{e}\n{text}");
                }
                last_err = e
            }
        }
    }
    Err(ImportError::Internal {
        path: path.to_string(),
        detail: last_err,
    })
}

/// The text compiles, and declares exactly `weights` with their shapes.
fn check(text: &str, weights: &Weights) -> Result<(), String> {
    let c = crate::front::compile_source("<imported>", text, None).map_err(|e| {
        e.diags
            .first()
            .map(|d| d.render_plain())
            .unwrap_or_else(|| e.to_string())
    })?;
    let specs = crate::weights::specs_of(&c.graph);
    if specs.len() != weights.len() {
        return Err(format!(
            "the .res declares {} weights, the file has {}",
            specs.len(),
            weights.len()
        ));
    }
    for s in &specs {
        match weights.get(&s.name) {
            Some(t) if t.shape == s.shape => {}
            Some(t) => {
                return Err(format!(
                    "`{}` is {:?} in the .res, {:?} in the file",
                    s.name, s.shape, t.shape
                ))
            }
            None => {
                return Err(format!(
                    "the .res declares `{}`, which the file lacks",
                    s.name
                ))
            }
        }
    }
    Ok(())
}

/// Parses `--input-shape 1x3x224x224`.
pub fn parse_shape(s: &str) -> Result<Vec<usize>, String> {
    let dims: Result<Vec<usize>, _> = s
        .split(['x', 'X', ','])
        .map(|d| d.trim().parse::<usize>())
        .collect();
    match dims {
        Ok(d) if !d.is_empty() && d.iter().all(|&v| (1..=1 << 24).contains(&v)) => Ok(d),
        _ => Err(format!(
            "`{s}` is not a shape such as 1x3x224x224 (sizes from 1 to 16777216)"
        )),
    }
}

/// `resnetc import FILE -o OUT.res [--weights-out W]`: reads, imports,
/// and writes both files, each atomically, only when everything worked.
/// Returns the weights path written.
pub fn import_file(
    file: &std::path::Path,
    output: &std::path::Path,
    weights_out: Option<&std::path::Path>,
    opts: &LiftOptions,
) -> Result<(Imported, std::path::PathBuf), ImportError> {
    let path = file.display().to_string();
    let bytes = std::fs::read(file).map_err(|source| ImportError::Io {
        path: path.clone(),
        source,
    })?;
    let stem = output
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "model".into());
    let imported = import(&bytes, &path, &model_name(&stem), opts)?;
    let wpath = weights_out
        .map(|p| p.to_path_buf())
        .unwrap_or_else(|| output.with_extension("safetensors"));
    if wpath == output {
        return Err(ImportError::Invalid {
            path,
            detail: format!(
                "the weights would overwrite the model `{}`",
                output.display()
            ),
            hint: "give --weights-out a different path".into(),
        });
    }
    let wbytes =
        crate::weights::serialize_safetensors(&imported.weights, &wpath.display().to_string())
            .map_err(|e| ImportError::Invalid {
                path: path.clone(),
                detail: e.to_string(),
                hint: "report this as a bug".into(),
            })?;
    let write = |p: &std::path::Path, b: &[u8]| {
        crate::weights::write_atomic(p, b).map_err(|source| ImportError::Io {
            path: p.display().to_string(),
            source,
        })
    };
    write(&wpath, &wbytes)?;
    if let Err(e) = write(output, imported.res.as_bytes()) {
        // Never one file without the other.
        let _ = std::fs::remove_file(&wpath);
        return Err(e);
    }
    Ok((imported, wpath))
}
