//! `resnetc export --format onnx` run through onnxruntime (Python, installed
//! by scripts/setup.sh into .tools/py) must give the interpreter's numbers.

mod common;
use common::*;
use resnetc::weights::{random_weights, read_npy, specs_of, write_npy};
use std::process::Command;

fn python() -> std::path::PathBuf {
    root().join(".tools/py/bin/python")
}

fn check(name: &str, c: &resnetc::front::Compiled, batch: usize, seed: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = random_weights(&specs_of(&c.graph), seed);
    let model = dir.path().join("model.onnx");
    std::fs::write(
        &model,
        resnetc::export::onnx::export(&c.graph, &w).expect("exports"),
    )
    .expect("write");
    let mut shape = vec![batch];
    shape.extend(c.graph.input_shape());
    let x = random_tensor(&shape, seed);
    let (xin, yout) = (dir.path().join("x.npy"), dir.path().join("y.npy"));
    write_npy(&xin, &x).expect("write input");
    let o = Command::new(python())
        .arg(root().join("scripts/ort_run.py"))
        .args([&model, &xin, &yout])
        .output()
        .expect("python runs (run scripts/setup.sh to install onnxruntime)");
    assert!(
        o.status.success(),
        "{name}: onnxruntime failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let y = read_npy(&yout).expect("onnxruntime output");
    let reference = resnetc::interp::run(&c.graph, &w, &x).expect("interpreter");
    assert_close(
        &format!("{name} via onnxruntime"),
        &y,
        &reference,
        1e-4,
        1e-3,
    );
}

#[test]
fn exports_run_in_onnxruntime() {
    for (i, name) in ["cifar_resnet20", "densenet_bc_small", "unet_small"]
        .iter()
        .enumerate()
    {
        check(name, &compile_example(name), 2, i as u64);
    }
    let ops = resnetc::front::compile_file(&root().join("tests/ir_cases/onnx_ops.res"))
        .expect("compiles");
    check("onnx_ops", &ops, 3, 7);
}
