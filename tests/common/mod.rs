//! Helpers shared by the integration tests: fixture paths, model loading and
//! the error measures of `tests/fixtures/check.py`.
#![allow(dead_code)]

use resnetc::front::{compile_file, Compiled};
use resnetc::tensor::Tensor;
use resnetc::weights::{self, Weights};
use std::path::{Path, PathBuf};

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(rel: &str) -> PathBuf {
    root().join("tests/fixtures").join(rel)
}

pub fn example(name: &str) -> PathBuf {
    root().join("examples").join(format!("{name}.res"))
}

pub fn compile_example(name: &str) -> Compiled {
    compile_file(&example(name)).unwrap_or_else(|e| panic!("{name}: {}", e.render_plain()))
}

/// Binds a safetensors file strictly to the model's weights.
pub fn bind_weights(c: &Compiled, path: &Path) -> Weights {
    let file = weights::load_safetensors(path).expect("fixture weights load");
    weights::bind(
        &weights::specs_of(&c.graph),
        file,
        &path.display().to_string(),
    )
    .expect("fixture weights bind")
}

/// max|a - e| / max|e|, as check.py computes it (NaN counts as infinite).
pub fn rel_error(actual: &Tensor, expected: &Tensor) -> f64 {
    assert_eq!(actual.shape, expected.shape, "shape mismatch");
    let (worst, scale) = (max_abs_diff(actual, expected), max_abs(expected));
    if scale > 0.0 {
        worst / scale
    } else {
        worst
    }
}

fn max_abs(t: &Tensor) -> f64 {
    t.data.iter().fold(0.0f64, |m, &v| m.max((v as f64).abs()))
}

fn max_abs_diff(a: &Tensor, e: &Tensor) -> f64 {
    a.data.iter().zip(&e.data).fold(0.0f64, |m, (&x, &y)| {
        let d = (x as f64 - y as f64).abs();
        if d.is_nan() {
            f64::INFINITY
        } else {
            m.max(d)
        }
    })
}

/// Each sample minus the batch mean: isolates the input-dependent part of a
/// random classifier's output.
pub fn centred(t: &Tensor) -> Tensor {
    let n = t.shape[0];
    let per = t.data.len() / n;
    let mut out = t.clone();
    for j in 0..per {
        let mean: f64 = (0..n).map(|b| t.data[b * per + j] as f64).sum::<f64>() / n as f64;
        for b in 0..n {
            out.data[b * per + j] = (t.data[b * per + j] as f64 - mean) as f32;
        }
    }
    out
}

/// Asserts check.py's two criteria: relative error and, for batch >= 2, the
/// batch-centred relative error.
pub fn assert_close(what: &str, actual: &Tensor, expected: &Tensor, rtol: f64, centred_rtol: f64) {
    let rel = rel_error(actual, expected);
    assert!(rel <= rtol, "{what}: max rel error {rel:.3e} > {rtol:.0e}");
    if expected.shape[0] >= 2 {
        // The input-dependent part is judged against its own size, but never
        // below 0.1% of the output's: under that it is f32 rounding noise
        // (a near-constant random net gives a part of 1e-6 of the output).
        let (ca, ce) = (centred(actual), centred(expected));
        let floor = 1e-3 * max_abs(expected);
        let c = max_abs_diff(&ca, &ce) / max_abs(&ce).max(floor).max(f64::MIN_POSITIVE);
        assert!(
            c <= centred_rtol,
            "{what}: batch-centred rel error {c:.3e} > {centred_rtol:.0e}"
        );
    }
}

/// A deterministic pseudo-random tensor (xorshift; no dependency).
pub fn random_tensor(shape: &[usize], seed: u64) -> Tensor {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(shape, data)
}

/// Every example by file stem, sorted.
pub fn example_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root().join("examples"))
        .expect("examples/")
        .filter_map(|e| {
            let p = e.ok()?.path();
            let stem = p.file_stem()?.to_string_lossy().to_string();
            (p.extension()? == "res").then_some(stem)
        })
        .collect();
    names.sort();
    names
}

/// Every example, inputs larger than 64x64 compiled at 32x32 (their
/// `--input-size`): the same layers, names and code paths for a fraction
/// of the work.
pub fn examples_small() -> Vec<(String, Compiled)> {
    example_names()
        .into_iter()
        .map(|name| {
            let c = compile_example(&name);
            if c.graph.input_shape().iter().skip(1).all(|&d| d <= 64) {
                return (name, c);
            }
            let opts = resnetc::front::Options {
                input_size: Some(vec![32, 32]),
                ..Default::default()
            };
            let c = resnetc::front::compile_file_with(&example(&name), &opts)
                .unwrap_or_else(|e| panic!("{name}: {}", e.render_plain()));
            (name, c)
        })
        .collect()
}

/// Random BN statistics let the residual stream grow with every block, and
/// a 1202-layer net overflows to NaN, which would hide any difference. As
/// trained nets (and Goyal et al.'s zero-γ init) do, the last BN of each
/// residual branch gets a small scale, so every output stays finite.
pub fn tame_residuals(graph: &resnetc::ir::Graph, mut w: Weights) -> Weights {
    let residual = graph
        .schedule()
        .iter()
        .any(|&n| matches!(graph.node(n).op, resnetc::ir::Op::Add));
    if residual {
        for (name, t) in w.iter_mut() {
            if name.ends_with("bn2.weight") || name.ends_with("bn3.weight") {
                t.data.iter_mut().for_each(|v| *v *= 0.2);
            }
        }
    }
    w
}

/// Symbols a static library uses but does not define itself (`nm`).
pub fn undefined_symbols(archive: &Path) -> Vec<String> {
    let nm = std::process::Command::new("nm")
        .arg(archive)
        .output()
        .expect("nm runs");
    let listing = String::from_utf8_lossy(&nm.stdout).to_string();
    let (mut defined, mut used) = (Vec::new(), Vec::new());
    for line in listing.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["U", name] => used.push(name.to_string()),
            [_, kind, name] if "TtDdBbRr".contains(*kind) => defined.push(name.to_string()),
            _ => {}
        }
    }
    used.retain(|u| !defined.contains(u));
    used
}

/// Runs `make -C examples/<dir>` (a library built by `resnetc`, a C program
/// linked to it) into `out`.
pub fn make_example(dir: &str, out: &Path, resnetc: &str) {
    make_example_with(dir, out, resnetc, &[]);
}

/// `make_example` with more make arguments (`WEIGHTS=...`).
pub fn make_example_with(dir: &str, out: &Path, resnetc: &str, args: &[&str]) {
    let make = std::process::Command::new("make")
        .args(["-s", "-C", &format!("examples/{dir}")])
        .arg(format!("OUT={}", out.display()))
        .arg(format!("RESNETC={resnetc}"))
        .arg("CC=gcc")
        .args(args)
        .current_dir(root())
        .output()
        .expect("make runs");
    assert!(
        make.status.success(),
        "make failed:\n{}",
        String::from_utf8_lossy(&make.stderr)
    );
}

/// The functions a C header declares: its `type name(...);` lines.
pub fn header_functions(header: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(header).expect("header");
    let mut names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('*') && !l.starts_with("/*") && !l.starts_with('#'))
        .filter(|l| l.ends_with(");"))
        .filter_map(|l| l.split('(').next()?.split_whitespace().last())
        .map(|n| n.trim_start_matches('*').to_string())
        .collect();
    names.sort();
    names
}

/// The global symbols an object or archive defines (`nm -g
/// --defined-only`), sorted.
pub fn exported_symbols(path: &Path) -> Vec<String> {
    let nm = std::process::Command::new("nm")
        .args(["-g", "--defined-only"])
        .arg(path)
        .output()
        .expect("nm runs");
    assert!(nm.status.success(), "nm {}", path.display());
    let mut names: Vec<String> = String::from_utf8_lossy(&nm.stdout)
        .lines()
        .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            [_, _, name] => Some(name.to_string()),
            _ => None,
        })
        .collect();
    names.sort();
    names
}

/// The raw little-endian f32 file a C demo writes, as a tensor of `shape`.
pub fn read_raw_floats(path: &Path, shape: &[usize]) -> Tensor {
    let data: Vec<f32> = std::fs::read(path)
        .expect("output")
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Tensor::from_vec(shape, data)
}

/// Writes `x`'s floats as raw little-endian f32s (what the C demos read).
pub fn write_raw_floats(path: &Path, x: &Tensor) {
    let bytes: Vec<u8> = x.data.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, bytes).expect("write input");
}

/// Links `examples/embed_c/sizes.c` against the multi-size library of model
/// `sym` in `dir` with the C compiler `cc` (`extra`: flags such as
/// `-static` for an emulated target); returns the program.
pub fn link_sizes_demo(cc: &str, extra: &[&str], dir: &Path, sym: &str) -> PathBuf {
    let up = sym.to_uppercase();
    let demo = dir.join("sizes");
    let out = std::process::Command::new(cc)
        .args(["-O2", "-Wall", "-Wextra", "-Werror"])
        .args(extra)
        .arg("-I")
        .arg(dir)
        .arg(format!("-DMODEL_HEADER=\"{sym}.h\""))
        .arg(format!("-DFORWARD_HW={sym}_forward_hw"))
        .arg(format!(
            "-DFORWARD_HW_WITH_ARENA={sym}_forward_hw_with_arena"
        ))
        .arg(format!("-DOUTPUT_SIZE_HW={sym}_output_size_hw"))
        .arg(format!("-DARENA_BYTES_HW={sym}_arena_bytes_per_image_hw"))
        .arg(format!("-DNO_SUCH_SIZE={up}_NO_SUCH_SIZE"))
        .args(["examples/embed_c/sizes.c", "-L"])
        .arg(dir)
        .arg(format!("-l{sym}"))
        .args(["-lm", "-lpthread", "-o"])
        .arg(&demo)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("{cc} runs: {e}"));
    assert!(
        out.status.success(),
        "{sym}: link: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    demo
}

/// Runs the sizes demo (under `emulator` where given) on one image per
/// size, `inputs[i]` at its own height and width, and reads its outputs
/// back in the shapes of `expected`.
pub fn run_sizes_demo(
    emulator: Option<&str>,
    demo: &Path,
    dir: &Path,
    inputs: &[Tensor],
    expected: &[Tensor],
) -> Vec<Tensor> {
    let mut args: Vec<String> = vec!["3".into()];
    for (i, x) in inputs.iter().enumerate() {
        let xin = dir.join(format!("x{i}.f32"));
        write_raw_floats(&xin, x);
        args.extend([
            x.shape[2].to_string(),
            x.shape[3].to_string(),
            xin.display().to_string(),
            dir.join(format!("y{i}.f32")).display().to_string(),
        ]);
    }
    let mut cmd = match emulator {
        Some(q) => {
            let mut c = std::process::Command::new(q);
            c.arg(demo);
            c
        }
        None => std::process::Command::new(demo),
    };
    let run = cmd.args(&args).output().expect("the sizes demo runs");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    expected
        .iter()
        .enumerate()
        .map(|(i, e)| read_raw_floats(&dir.join(format!("y{i}.f32")), &e.shape))
        .collect()
}
