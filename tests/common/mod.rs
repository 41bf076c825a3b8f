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
    let mut worst = 0.0f64;
    let mut scale = 0.0f64;
    for (&a, &e) in actual.data.iter().zip(&expected.data) {
        let d = (a as f64 - e as f64).abs();
        worst = if d.is_nan() {
            f64::INFINITY
        } else {
            worst.max(d)
        };
        scale = scale.max((e as f64).abs());
    }
    if scale > 0.0 {
        worst / scale
    } else {
        worst
    }
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
        let c = rel_error(&centred(actual), &centred(expected));
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
