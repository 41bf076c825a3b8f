//! Which input sizes a model takes: when a model with symbolic sizes does
//! not compile at the size asked for, the nearest sizes that do.

use super::ast::ModelDef;
use super::diagnostic::Diag;
use super::signature::{self, Bound};
use std::time::{Duration, Instant};

/// Most sizes tried on each side of the one asked for.
const MAX_STEPS: usize = 256;
/// Time the whole search may take.
const BUDGET: Duration = Duration::from_secs(5);

/// Expands the model at a size (the trailing axes), or says why not.
pub type Expand<'a, T> = dyn Fn(Option<&[usize]>) -> Result<T, Diag> + 'a;

/// The diagnostics for `err`, which compiling at `request` (or the
/// defaults) raised: with an explanation first where the model's sizes are
/// symbolic and the error is one of shapes, that is, the size does not
/// fit the architecture.
pub fn advise<T>(
    model: &ModelDef,
    opts: &super::Options,
    err: Diag,
    expand: &Expand<'_, T>,
) -> Vec<Diag> {
    if !matches!(err.code, "res::shape" | "res::shape_mismatch") {
        return vec![err];
    }
    let Ok(bound) = signature::bind(model, opts.input_size.as_deref(), !opts.size_from_input)
    else {
        return vec![err];
    };
    if !bound.signature.is_sized() {
        return vec![err];
    }
    let start = Instant::now();
    // The trailing axes (after the channels) as compiled; each symbolic
    // one is tried on its own with every symbolic axis at the same size
    // (a square image), which is how the architectures treat them.
    let trailing = &bound.shape[1..];
    let symbolic: Vec<usize> = bound.signature.sizes.iter().map(|s| s.axis - 1).collect();
    let at = |c: usize| -> Vec<usize> {
        (0..trailing.len())
            .map(|i| {
                if symbolic.contains(&i) {
                    c
                } else {
                    trailing[i]
                }
            })
            .collect()
    };
    let fits = |c: usize| start.elapsed() < BUDGET && expand(Some(&at(c))).is_ok();
    let mut parts = Vec::new();
    let mut seen = Vec::new();
    for s in &bound.signature.sizes {
        let v = bound.shape[s.axis];
        if seen.contains(&s.name) {
            continue;
        }
        seen.push(s.name.clone());
        if fits(v) {
            parts.push(format!("{} = {v} fits", s.name));
            continue;
        }
        let below = (1..=MAX_STEPS.min(v - 1)).map(|d| v - d).find(|&c| fits(c));
        let above = (1..=MAX_STEPS)
            .map(|d| v + d)
            .take_while(|&c| c as i64 <= signature::MAX_SIZE)
            .find(|&c| fits(c));
        parts.push(match (below, above) {
            (Some(lo), Some(hi)) => {
                let step = hi - lo;
                let multiples = if step > 1 && lo % step == 0 {
                    format!(", both multiples of {step}")
                } else {
                    String::new()
                };
                format!(
                    "{} = {v} does not fit; {lo} and {hi} do (the nearest below and above{multiples})",
                    s.name
                )
            }
            (Some(lo), None) => format!(
                "{} = {v} does not fit; {lo} does (the nearest below; none up to {} above)",
                s.name,
                v + MAX_STEPS
            ),
            (None, Some(hi)) => format!(
                "{} = {v} does not fit; {hi} does (the nearest above; none below)",
                s.name
            ),
            (None, None) => format!(
                "{} = {v} does not fit, nor any size within {MAX_STEPS} of it",
                s.name
            ),
        });
    }
    let size = trailing
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join("x");
    let summary = explain(&bound, &size, &parts);
    vec![summary, err]
}

fn explain(bound: &Bound, size: &str, parts: &[String]) -> Diag {
    Diag::error(
        "res::input_size",
        bound.span,
        format!("this model does not take an input of size {size}"),
    )
    .label(format!("compiled at {size}"))
    .help(format!(
        "{} (the error below is where it fails)",
        parts.join("; ")
    ))
}
