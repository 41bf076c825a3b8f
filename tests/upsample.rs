//! `upsample` as PyTorch's `nn.Upsample` is called: `scale_factor: 2.0`,
//! `size:` an integer or a tensor to match (a factor per axis), against
//! the integer-scale form, and the compiled code against the interpreter
//! where the two axes' factors differ; factors that are not whole
//! (`scale_factor: 1.5`, a size of 9 from 5x7) against PyTorch's
//! `F.interpolate` (tests/fixtures/make_upsample.py) in the interpreter,
//! the CPU JIT and the emulated CUDA kernels.

mod common;
use common::*;
use resnetc::backend::cpu::{run_jit, CpuOptions};
use resnetc::backend::cuda::{emulate, CudaOptions};
use resnetc::front::{compile_source_with, Options};
use resnetc::weights::{random_weights, read_npy, specs_of};

fn compile(text: &str) -> Result<resnetc::front::Compiled, String> {
    compile_source_with("m.res", text, None, &Options::default()).map_err(|e| e.render_plain())
}

fn model(stage: &str) -> String {
    format!(
        "model m(x: f32[N, 4, 6, 4]) {{\n    let _skip = x |> upsample(scale: 2) |> upsample(scale: 1)\n    x |> {stage}\n}}\n"
    )
}

#[test]
fn size_and_float_scale_are_whole_factors() {
    let x = random_tensor(&[2, 4, 6, 4], 1);
    for mode in [
        "mode: \"nearest\"",
        "mode: \"bilinear\", align_corners: true",
        "mode: \"bilinear\"",
    ] {
        let reference = |stage: &str| {
            let c = compile(&model(&format!("{stage}, {mode})")))
                .unwrap_or_else(|e| panic!("{stage}: {e}"));
            let w = random_weights(&specs_of(&c.graph), 0);
            let y = resnetc::interp::run(&c.graph, &w, &x).expect("interpreter");
            let mut g = c.graph.clone();
            resnetc::passes::optimize(&mut g, None);
            let cpu = run_jit(&g, &w, &x, &CpuOptions::default()).expect("cpu");
            assert_close(&format!("{stage} {mode}"), &cpu, &y, 1e-5, 1e-4);
            y
        };
        let by_scale = reference("upsample(scale: 2");
        assert_eq!(by_scale.shape, [2, 4, 12, 8]);
        for same in [
            "upsample(scale_factor: 2.0",
            "upsample(size: _skip",
            "upsample(scale: 2.0",
        ] {
            assert_eq!(reference(same).data, by_scale.data, "{same} {mode}");
        }
        // A factor per axis: 24 = 6 x 4 rows, 24 = 4 x 6 columns.
        let uneven = reference("upsample(size: 24");
        assert_eq!(uneven.shape, [2, 4, 24, 24]);
    }
}

/// make_upsample.py's cases: the .res stage for each, on its 2x3x5x7 input.
const FRACTIONAL: [(&str, &str); 5] = [
    ("scale_1_5", "x |> upsample(scale_factor: 1.5"),
    ("scale_2_3", "x |> upsample(scale: 2.3"),
    ("scale_0_5", "x |> upsample(scale_factor: 0.5"),
    ("size_9", "x |> upsample(size: 9"),
    (
        "size_of_x",
        "x |> maxpool(k: 2, ceil_mode: true) |> upsample(size: x",
    ),
];

#[test]
fn factors_that_are_not_whole_match_pytorch() {
    let x = read_npy(&fixture("upsample/input.npy")).expect("input");
    for (case, stage) in FRACTIONAL {
        for (mode, args) in [
            ("nearest", "mode: \"nearest\""),
            ("bilinear", "mode: \"bilinear\""),
            ("bilinear_ac", "mode: \"bilinear\", align_corners: true"),
        ] {
            let what = format!("{case} {mode}");
            let text = format!("model m(x: f32[N, 3, 5, 7]) {{\n    {stage}, {args})\n}}\n");
            let c = compile(&text).unwrap_or_else(|e| panic!("{what}: {e}"));
            let want = read_npy(&fixture(&format!("upsample/{case}.{mode}.npy"))).expect("ref");
            let w = random_weights(&specs_of(&c.graph), 0);
            let y = resnetc::interp::run(&c.graph, &w, &x).expect("interpreter");
            assert_close(&format!("{what} ref"), &y, &want, 1e-6, 1e-5);
            let mut g = c.graph.clone();
            resnetc::passes::optimize(&mut g, None);
            let cpu = run_jit(&g, &w, &x, &CpuOptions::default()).expect("cpu");
            assert_close(&format!("{what} cpu"), &cpu, &want, 1e-6, 1e-5);
            // The CUDA kernels, run by the back end's emulator (no GPU needed).
            let cuda = emulate::run(&g, &w, &x, &CudaOptions::for_gpu("sm_80"), Some(1))
                .expect("emulated cuda");
            assert_close(&format!("{what} cuda"), &cuda, &want, 1e-6, 1e-5);
        }
    }
}

#[test]
fn bad_sizes_and_scales_are_refused() {
    for (stage, needle) in [
        ("upsample(scale_factor: 0.1)", "outside 1.."),
        ("upsample(scale_factor: -2.0)", "outside 1.."),
        ("upsample(size: 0)", "must be in 1.."),
        ("upsample(size: 12, scale: 2)", "not both"),
        ("upsample(size: \"big\")", "res::type"),
        ("flatten() |> upsample(size: 12)", "res::shape"),
    ] {
        let e = compile(&model(stage)).expect_err(stage);
        assert!(e.contains(needle), "{stage}: {e}");
    }
}

/// ONNX's Resize cannot say "floor(in * 1.5), sampled at 1/1.5" with a
/// dynamic batch: the export refuses it with its own code.
#[test]
fn export_refuses_factors_that_are_not_whole() {
    let c = compile(&model("upsample(scale_factor: 1.5)")).expect("compiles");
    let w = random_weights(&specs_of(&c.graph), 0);
    let e = resnetc::export::onnx::export(&c.graph, &w).expect_err("not exportable");
    assert!(matches!(
        e,
        resnetc::export::onnx::ExportError::Unsupported(_)
    ));
    let c = compile(&model("upsample(scale_factor: 2.0)")).expect("compiles");
    let w = random_weights(&specs_of(&c.graph), 0);
    assert!(resnetc::export::onnx::export(&c.graph, &w).is_ok());
}
