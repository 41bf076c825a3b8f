//! Compiles CIFAR ResNet-20 with PyTorch's fixture weights into a static
//! library in OUT_DIR, links it, and writes safe Rust bindings next to it.

use resnetc::api::{build_cpu, rust_bindings, WeightsSource};
use resnetc::backend::cpu::{artifact::Emit, CpuOptions};
use std::path::{Path, PathBuf};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let model = root.join("examples/cifar_resnet20.res");
    let weights = root.join("tests/fixtures/cifar_resnet20.safetensors");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let built = build_cpu(
        &model,
        &WeightsSource::File(weights.clone()),
        &out,
        &CpuOptions::default(),
        Emit::Staticlib,
        &mut |_| {},
    )
    .unwrap_or_else(|e| panic!("resnetc: {e}"));
    std::fs::write(out.join("model.rs"), rust_bindings(&built)).expect("write bindings");
    println!("cargo:rustc-link-search=native={}", out.display());
    println!("cargo:rustc-link-lib=static={}", built.symbol);
    println!("cargo:rerun-if-changed={}", model.display());
    println!("cargo:rerun-if-changed={}", weights.display());
}
