//! `resnetc run --target cuda --check-layers`: runs the model on the GPU
//! launch by launch and compares every value a launch completes with the
//! interpreter's value of the same node of the optimized graph. A kernel
//! that is right in the emulation and wrong on hardware (a barrier, an
//! address space, a copy in flight) is then named by its layer, kernel and
//! grid instead of surfacing as a wrong final output.

use super::runtime::{CudaError, Device};
use crate::tensor::Tensor;
use serde::Serialize;
use std::collections::HashMap;

/// One launch that completed a value, against the interpreter.
#[derive(Clone, Debug, Serialize)]
pub struct LayerCheck {
    /// The launch's index in the plan.
    pub launch: usize,
    pub label: String,
    pub kernel: String,
    pub grid: [u64; 3],
    pub block: u64,
    /// Max |GPU − interpreter| over max |interpreter| (the absolute error
    /// where the value is all zeros; infinite where the GPU's is not
    /// finite).
    pub error: f64,
    pub ok: bool,
}

/// Max |a − b| relative to max |b|, as `tests/fixtures/check.py` defines
/// it; infinite where `a` holds a NaN or an infinity.
pub fn relative_error(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() || a.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let diff = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).abs())
        .fold(0.0, f64::max);
    let scale = b.iter().map(|&y| (y as f64).abs()).fold(0.0, f64::max);
    if scale > 0.0 {
        diff / scale
    } else {
        diff
    }
}

/// Runs `input` on `device` launch by launch; after the last launch (at
/// this batch) that writes each node, compares the node's value with
/// `reference[node]` (the interpreter's, for every image), and after each
/// earlier copy into a concat, that copy's slice of it. Returns the output
/// and one check per such launch, in plan order. A split GEMM's slices
/// complete no value of their own and are compared through the sum that
/// does; the last copy into a concat checks the whole concat, so a copy
/// writing outside its slice is caught there.
pub fn check_layers(
    device: &Device,
    input: &Tensor,
    reference: &HashMap<usize, Tensor>,
    rtol: f64,
) -> Result<(Tensor, Vec<LayerCheck>), CudaError> {
    let n = input.shape.first().copied().unwrap_or(0) as u64;
    let (mut last, mut last_part) = (HashMap::new(), HashMap::new());
    for (i, l) in device.plan().launches.iter().enumerate() {
        if let (Some(w), true) = (&l.writes, l.variant(n).runs(n)) {
            last.insert(w.node, i);
            last_part.insert((w.node, w.from), i);
        }
    }
    let mut checks = Vec::new();
    let out = device.run_stepwise(input, |i, l, read| {
        let Some(w) = &l.writes else {
            return Ok(());
        };
        let Some(want) = reference.get(&w.node) else {
            return Ok(());
        };
        let w = if last[&w.node] == i {
            w.whole((want.data.len() / (n as usize).max(1)) as u64)
        } else if last_part[&(w.node, w.from)] == i {
            w.clone()
        } else {
            return Ok(());
        };
        let got = read(w.at, w.per_image as usize, w.stride)?;
        let error = relative_error(&got, &part(&want.data, n as usize, &w));
        let v = l.variant(n);
        checks.push(LayerCheck {
            launch: i,
            label: l.label.clone(),
            kernel: v.kernel.clone(),
            grid: v.grid(n),
            block: v.block,
            error,
            ok: error <= rtol,
        });
        Ok(())
    })?;
    Ok((out, checks))
}

/// Elements `w.from..w.from + w.per_image` of each of the `n` images of a
/// whole value (empty where the value is too short, which then differs).
fn part(whole: &[f32], n: usize, w: &super::plan::Written) -> Vec<f32> {
    let per = whole.len() / n.max(1);
    let (from, len) = (w.from as usize, w.per_image as usize);
    if from + len > per {
        return Vec::new();
    }
    whole
        .chunks(per.max(1))
        .flat_map(|img| &img[from..from + len])
        .copied()
        .collect()
}

/// The checks as a table, with the first layer that differs named last.
pub fn report(checks: &[LayerCheck], rtol: f64) -> String {
    let mut s = format!(
        "{:>5}  {:<44} {:>11}  {:<6} {}\n",
        "#", "launch", "rel error", "", "kernel  grid  block"
    );
    for c in checks {
        s += &format!(
            "{:>5}  {:<44} {:>11.3e}  {:<6} {}  {}x{}x{}  {}\n",
            c.launch,
            c.label,
            c.error,
            if c.ok { "ok" } else { "DIFFERS" },
            c.kernel,
            c.grid[0],
            c.grid[1],
            c.grid[2],
            c.block
        );
    }
    let bad = checks.iter().filter(|c| !c.ok).count();
    match checks.iter().find(|c| !c.ok) {
        None => s += &format!("all {} layers within {rtol:e} of the interpreter\n", checks.len()),
        Some(c) => {
            s += &format!(
                "{bad} of {} layers differ by more than {rtol:e}; the first is launch {} ({}, kernel {})\n",
                checks.len(),
                c.launch,
                c.label,
                c.kernel
            )
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_error_is_scaled_by_the_reference() {
        assert_eq!(relative_error(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert!((relative_error(&[1.0, 2.5], &[1.0, 2.0]) - 0.25).abs() < 1e-12);
        assert_eq!(relative_error(&[0.5, 0.0], &[0.0, 0.0]), 0.5);
        assert_eq!(relative_error(&[f32::NAN], &[1.0]), f64::INFINITY);
        assert_eq!(relative_error(&[1.0], &[1.0, 2.0]), f64::INFINITY);
    }
}
