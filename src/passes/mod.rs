//! Optimization passes, one per file, and the pipeline that runs them. Each
//! pass rewrites the graph only; constant values follow from the recipes the
//! passes leave (see `weights::materialize`).

pub mod concat_in_place;
pub mod dce;
pub mod fold_batchnorm;
pub mod fuse_epilogue;
pub mod plan_memory;
pub mod remove_noops;

use crate::ir::Graph;

/// A pass: its name (for `--print-after`) and the rewrite.
pub struct Pass {
    pub name: &'static str,
    pub run: fn(&mut Graph),
    pub about: &'static str,
}

/// The pipeline, in order.
pub const PIPELINE: &[Pass] = &[
    Pass {
        name: "remove_noops",
        run: remove_noops::run,
        about: "drop identity and dropout",
    },
    Pass {
        name: "fold_batchnorm",
        run: fold_batchnorm::run,
        about: "conv/linear → BN becomes one conv; other BNs become affine ops",
    },
    Pass {
        name: "fuse_epilogue",
        run: fuse_epilogue::run,
        about: "bias, residual add and activation into the conv epilogue; BN-ReLU into the next conv's prologue",
    },
    Pass {
        name: "concat_in_place",
        run: concat_in_place::run,
        about: "concat producers write into their channel slice",
    },
    Pass {
        name: "dce",
        run: dce::run,
        about: "remove everything the output does not need",
    },
    Pass {
        name: "plan_memory",
        run: plan_memory::run,
        about: "schedule, liveness and one arena for all activations",
    },
];

pub fn names() -> Vec<&'static str> {
    PIPELINE.iter().map(|p| p.name).collect()
}

/// Runs the pipeline up to and including `stop_after` (all of it when
/// `None`), verifying the graph after every pass in debug builds.
pub fn optimize(graph: &mut Graph, stop_after: Option<&str>) {
    for pass in PIPELINE {
        // Any rewrite invalidates an earlier plan.
        graph.plan = None;
        (pass.run)(graph);
        if cfg!(debug_assertions) {
            if let Err(e) = crate::ir::verify::verify(graph) {
                panic!("IR invalid after pass {}: {e}", pass.name);
            }
        }
        if stop_after == Some(pass.name) {
            break;
        }
    }
}
