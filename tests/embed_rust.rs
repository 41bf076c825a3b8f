//! examples/embed_rust: a crate whose build.rs compiles CIFAR ResNet-20 with
//! resnetc's library API and calls it through the generated safe bindings.
//! Builds it with cargo and checks its output against PyTorch.

mod common;
use common::*;
use std::process::Command;

#[test]
fn rust_crate_embeds_a_compiled_model() {
    let target = root().join("target/embed_rust");
    let out = Command::new(env!("CARGO"))
        .args([
            "run",
            "--quiet",
            "--manifest-path",
            "examples/embed_rust/Cargo.toml",
            "--",
        ])
        .arg(fixture("cifar_resnet20.input.npy"))
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(root())
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "embed_rust failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let values: Vec<f32> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().parse().expect("a number per line"))
        .collect();
    let expected =
        resnetc::weights::read_npy(&fixture("cifar_resnet20.output.npy")).expect("expected");
    let y = resnetc::tensor::Tensor::from_vec(&expected.shape, values);
    assert_close("embed_rust", &y, &expected, 1e-4, 1e-3);
}
