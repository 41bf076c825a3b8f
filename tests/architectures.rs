//! The five architectures of issue 28 (examples/architectures/: option-A
//! CIFAR ResNet-20, a bilinear U-Net on 64x96, pooling edge cases,
//! ResNeXt-50 32x4d, Wide ResNet-50-2), written with the standard library
//! and block parameters, against PyTorch: the interpreter and the CPU JIT.
//! The weights are resnetc's seeded random ones (`resnetc init --seed 28`),
//! which tests/fixtures/make_architectures.py loaded strictly into the
//! PyTorch models by name; only the inputs and outputs are committed.

mod common;
use common::*;
use resnetc::backend::cpu::{run_jit, CpuOptions};
use resnetc::front::{compile_file_with, Options};
use resnetc::weights::{random_weights, read_npy, specs_of};

/// make_architectures.py's `SEED`.
const SEED: u64 = 28;

const ARCHITECTURES: [&str; 5] = [
    "cifar_resnet20_a",
    "unet_bilinear",
    "pooling_edges",
    "resnext50_32x4d",
    "wide_resnet50_2",
];

fn check(name: &str, jit: bool) {
    let x = read_npy(&fixture(&format!("architectures/{name}.input.npy"))).expect("input");
    let expected = read_npy(&fixture(&format!("architectures/{name}.output.npy"))).expect("output");
    let path = root().join(format!("examples/architectures/{name}.res"));
    let opts = Options {
        input_size: Some(x.shape[2..].to_vec()),
        ..Options::default()
    };
    let c = compile_file_with(&path, &opts).unwrap_or_else(|e| panic!("{}", e.render_plain()));
    let w = random_weights(&specs_of(&c.graph), SEED);
    let y = resnetc::interp::run(&c.graph, &w, &x).expect("interpreter");
    assert_close(&format!("{name} ref"), &y, &expected, 1e-4, 1e-3);
    if jit {
        let mut g = c.graph.clone();
        resnetc::passes::optimize(&mut g, None);
        let cpu = run_jit(&g, &w, &x, &CpuOptions::default()).expect("cpu");
        assert_close(&format!("{name} cpu"), &cpu, &expected, 1e-4, 1e-3);
    }
}

#[test]
fn cifar_resnet20_option_a_matches_pytorch() {
    check("cifar_resnet20_a", true);
}

#[test]
fn bilinear_unet_matches_pytorch() {
    check("unet_bilinear", true);
}

#[test]
fn pooling_edge_cases_match_pytorch() {
    check("pooling_edges", true);
}

#[test]
fn resnext50_32x4d_matches_pytorch() {
    check("resnext50_32x4d", true);
}

#[test]
fn wide_resnet50_2_matches_pytorch() {
    check("wide_resnet50_2", true);
}

/// Issue 28's budget: all five in at most 60 lines, comments and blank
/// lines included.
#[test]
fn the_five_fit_in_sixty_lines() {
    let lines: usize = ARCHITECTURES
        .iter()
        .map(|n| {
            let p = root().join(format!("examples/architectures/{n}.res"));
            std::fs::read_to_string(p).expect("file").lines().count()
        })
        .sum();
    assert!(lines <= 60, "{lines} lines");
}
