//! `upsample` as PyTorch's `nn.Upsample` is called: `scale_factor: 2.0`,
//! `size:` an integer or a tensor to match (a factor per axis), against
//! the integer-scale form, and the compiled code against the interpreter
//! where the two axes' factors differ.

mod common;
use common::*;
use resnetc::backend::cpu::{run_jit, CpuOptions};
use resnetc::front::{compile_source_with, Options};
use resnetc::weights::{random_weights, specs_of};

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

#[test]
fn factors_that_are_not_whole_are_refused() {
    for (stage, needle) in [
        ("upsample(scale_factor: 1.5)", "not a whole factor"),
        ("upsample(size: 10)", "not a whole multiple"),
        ("upsample(size: 12, scale: 2)", "not both"),
        ("upsample(size: \"big\")", "res::type"),
    ] {
        let e = compile(&model(stage)).expect_err(stage);
        assert!(e.contains(needle), "{stage}: {e}");
    }
}
