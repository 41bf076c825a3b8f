//! The reference interpreter against PyTorch: every fixture model, with the
//! committed weights and inputs and with a second set drawn by PyTorch from
//! other seeds (`make_refs.py --salt alt-`, in tests/fixtures/alt/).

mod common;
use common::*;
use resnetc::weights::read_npy;

const CASES: [&str; 4] = [
    "cifar_resnet20",
    "cifar_plain20",
    "unet_small",
    "densenet_bc_small",
];

fn check_case(name: &str, dir: &str) {
    let c = compile_example(name);
    let w = bind_weights(&c, &fixture(&format!("{dir}{name}.safetensors")));
    let x = read_npy(&fixture(&format!("{dir}{name}.input.npy"))).expect("input");
    let expected = read_npy(&fixture(&format!("{dir}{name}.output.npy"))).expect("output");
    let y = resnetc::interp::run(&c.graph, &w, &x).expect("runs");
    assert_close(&format!("{dir}{name}"), &y, &expected, 1e-5, 1e-3);
}

#[test]
fn cifar_resnet20_matches_pytorch() {
    check_case("cifar_resnet20", "");
    check_case("cifar_resnet20", "alt/");
}

#[test]
fn cifar_plain20_matches_pytorch() {
    check_case("cifar_plain20", "");
    check_case("cifar_plain20", "alt/");
}

#[test]
fn unet_small_matches_pytorch() {
    check_case("unet_small", "");
    check_case("unet_small", "alt/");
}

#[test]
fn densenet_bc_small_matches_pytorch() {
    check_case("densenet_bc_small", "");
    check_case("densenet_bc_small", "alt/");
}

/// A wrong weight (one BN mean changed) must be caught: the tolerance has
/// power even though random classifiers give similar outputs for any input.
#[test]
fn a_small_weight_error_is_detected() {
    for name in CASES {
        let c = compile_example(name);
        let mut w = bind_weights(&c, &fixture(&format!("{name}.safetensors")));
        // The first BN of the network: its error flows through everything.
        let key = resnetc::weights::specs_of(&c.graph)
            .into_iter()
            .map(|s| s.name)
            .find(|k| k.ends_with("running_mean"))
            .expect("a BN");
        for v in &mut w.get_mut(&key).expect("present").data[..2] {
            *v += 0.05;
        }
        let x = read_npy(&fixture(&format!("{name}.input.npy"))).expect("input");
        let expected = read_npy(&fixture(&format!("{name}.output.npy"))).expect("output");
        let y = resnetc::interp::run(&c.graph, &w, &x).expect("runs");
        let rel = rel_error(&y, &expected);
        assert!(
            rel > 1e-5,
            "{name}: perturbing {key} went unnoticed ({rel:.2e})"
        );
    }
}
