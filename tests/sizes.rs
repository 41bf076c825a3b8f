//! Input sizes bound at compile time (`f32[N, 3, H = 224, W = 224]`): the
//! examples at sizes other than their paper's against the interpreter,
//! `run` taking the size from its input, `--input-size` and its errors, a
//! static library holding two sizes called from C; and where `use` looks
//! (the standard library inside the binary, `-L`, `RESNETC_PATH`).

mod common;
use common::*;
use resnetc::backend::cpu::{run_jit, CpuOptions};
use resnetc::front::{compile_file_with, compile_source_with, Compiled, Options};
use resnetc::weights::{random_weights, read_npy, specs_of, write_npy};
use std::path::Path;
use std::process::{Command, Output};

fn at(name: &str, size: [usize; 2]) -> Compiled {
    let opts = Options {
        input_size: Some(size.to_vec()),
        ..Default::default()
    };
    compile_file_with(&example(name), &opts)
        .unwrap_or_else(|e| panic!("{name} at {size:?}: {}", e.render_plain()))
}

fn optimized(c: &Compiled) -> resnetc::ir::Graph {
    let mut g = c.graph.clone();
    resnetc::passes::optimize(&mut g, None);
    g
}

fn resnetc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_resnetc"))
        .args(args)
        .current_dir(root())
        .env("COLUMNS", "200")
        .env("NO_COLOR", "1")
        .env_remove("RESNETC_PATH")
        .output()
        .expect("resnetc runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// An example at a size of the issue's, compiled CPU code against the
/// interpreter, with weights of the declared-size model: `fixture` names
/// PyTorch's fixture weights, else seeded random ones.
fn matches_at(name: &str, batch: usize, size: [usize; 2], fixture_weights: bool, output: &[usize]) {
    let c = at(name, size);
    assert_eq!(c.graph.input_shape(), [3, size[0], size[1]], "{name}");
    assert_eq!(c.graph.output_shape(), output, "{name}");
    let w = if fixture_weights {
        // The declared-size model's weights bind unchanged.
        bind_weights(&c, &fixture(&format!("{name}.safetensors")))
    } else {
        tame_residuals(&c.graph, random_weights(&specs_of(&c.graph), 5))
    };
    let x = random_tensor(&[batch, 3, size[0], size[1]], 7);
    let reference = resnetc::interp::run(&c.graph, &w, &x).expect("interpreter");
    let y = run_jit(&optimized(&c), &w, &x, &CpuOptions::default()).expect("cpu");
    assert_close(
        &format!("{name} {batch}x3x{}x{}", size[0], size[1]),
        &y,
        &reference,
        1e-4,
        1e-3,
    );
}

#[test]
fn resnet18_at_288x352_matches_the_interpreter() {
    matches_at("resnet18", 1, [288, 352], false, &[1000]);
}

#[test]
fn resnet50_at_batch_2_and_160x200_matches_the_interpreter() {
    matches_at("resnet50", 2, [160, 200], false, &[1000]);
}

#[test]
fn unet_and_densenet_at_other_sizes_match_the_interpreter() {
    matches_at("unet_small", 1, [96, 160], true, &[2, 96, 160]);
    matches_at("densenet_bc_small", 1, [48, 40], true, &[10]);
}

#[test]
fn run_takes_the_size_from_its_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let x = random_tensor(&[2, 3, 48, 80], 3);
    let xp = dir.path().join("x.npy");
    write_npy(&xp, &x).expect("write input");
    let weights = fixture("unet_small.safetensors");
    let c = at("unet_small", [48, 80]);
    let w = bind_weights(&c, &weights);
    let expected = resnetc::interp::run(&c.graph, &w, &x).expect("interpreter");
    for target in ["ref", "cpu"] {
        let yp = dir.path().join(format!("y_{target}.npy"));
        let o = resnetc(&[
            "run",
            "examples/unet_small.res",
            "--weights",
            p(&weights),
            "--input",
            p(&xp),
            "--output",
            p(&yp),
            "--target",
            target,
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let y = read_npy(&yp).expect("output");
        assert_eq!(y.shape, [2, 2, 48, 80]);
        assert_close(&format!("run --target {target}"), &y, &expected, 1e-4, 1e-3);
    }
    // A size the U-Net does not take: the nearest that it does, before any
    // output is written.
    let bad = dir.path().join("bad.npy");
    write_npy(&bad, &random_tensor(&[1, 3, 50, 80], 3)).expect("write input");
    let yp = dir.path().join("never.npy");
    let o = resnetc(&[
        "run",
        "examples/unet_small.res",
        "--weights",
        p(&weights),
        "--input",
        p(&bad),
        "--output",
        p(&yp),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("res::input_size") && e.contains("48 and 64"),
        "{e}"
    );
    assert!(!yp.exists());
    // A model whose size is fixed still says the input does not fit it.
    let o = resnetc(&[
        "run",
        "tests/ir_cases/basic_block.res",
        "--random-weights",
        "0",
        "--input",
        p(&bad),
        "--output",
        p(&yp),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("bad.npy"), "{}", stderr(&o));
}

#[test]
fn input_size_flag_binds_the_signature() {
    let summary = |size: &str| {
        let o = resnetc(&[
            "summary",
            "examples/resnet50.res",
            "--input-size",
            size,
            "--format",
            "json",
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).expect("json")
    };
    // At twice the height and width every conv map halves evenly, so the
    // convs' multiply-adds are four times PyTorch's count at 224x224 (the
    // fc's 2,048,000 stay); the parameters do not change.
    let v = summary("448x448");
    assert_eq!(v["params"], 25_557_032u64);
    let fc = 2_048_000u64;
    assert_eq!(v["macs"], 4 * (4_089_184_256u64 - fc) + fc);
    let v = summary("160x200");
    assert_eq!(v["input"], serde_json::json!([3, 160, 200]));
    let o = resnetc(&["check", "examples/resnet18.res", "--input-size", "96"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("f32[N, 3, H=96, W=96]"), "{out}");
    // The U-Net's four levels: the error names the sizes that work.
    let o = resnetc(&[
        "check",
        "examples/unet_small.res",
        "--input-size",
        "100x160",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("does not take an input of size 100x160")
            && e.contains("96 and 112")
            && e.contains("multiples of 16")
            && e.contains("W = 160 fits")
            && e.contains("res::shape_mismatch"),
        "{e}"
    );
    // A fixed size cannot be changed; a malformed one is a usage error.
    let o = resnetc(&[
        "check",
        "tests/ir_cases/basic_block.res",
        "--input-size",
        "64x64",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("is fixed at"), "{}", stderr(&o));
    for bad in ["0x3", "3x", "axb", "1x2x3"] {
        let o = resnetc(&["check", "examples/resnet18.res", "--input-size", bad]);
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", stderr(&o));
    }
    // Several sizes make only a static library.
    let dir = tempfile::tempdir().expect("tempdir");
    let o = resnetc(&[
        "build",
        "examples/cifar_resnet20.res",
        "--random-weights",
        "0",
        "--emit",
        "obj",
        "--input-size",
        "32x32",
        "--input-size",
        "40x40",
        "-o",
        p(dir.path()),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("resnetc::input_size"), "{}", stderr(&o));
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
}

/// The CUDA target compiles at the size asked for too (no GPU here: the
/// launch plan's shapes and the PTX are checked, not run).
#[test]
fn cuda_builds_take_the_input_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = resnetc(&[
        "build",
        "examples/cifar_resnet20.res",
        "--random-weights",
        "0",
        "--target",
        "cuda",
        "--input-size",
        "48x64",
        "--quiet",
        "-o",
        p(dir.path()),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let plan: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("cifar_resnet20.plan.json")).expect("plan"),
    )
    .expect("json");
    assert_eq!(plan["input_shape"], serde_json::json!([3, 48, 64]));
    assert_eq!(plan["input_stride"], 3 * 48 * 64);
    let o = resnetc(&[
        "build",
        "examples/cifar_resnet20.res",
        "--random-weights",
        "0",
        "--target",
        "cuda",
        "--input-size",
        "48x64",
        "--input-size",
        "32x32",
        "-o",
        p(dir.path()),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("one size at a time"), "{}", stderr(&o));
}

#[test]
fn size_names_are_integers_in_the_model_body() {
    let text = "model m(x: f32[N, 3, S = 8, S]) {\n    x |> conv1: conv(S * 2, k: 1)\n}\n";
    let c = compile_source_with("m.res", text, None, &Options::default()).expect("compiles");
    assert_eq!(c.graph.output_shape(), [16, 8, 8]);
    assert_eq!(
        c.signature.show(c.graph.input_shape()),
        "f32[N, 3, S=8, S=8]"
    );
    let opts = Options {
        input_size: Some(vec![4, 4]),
        ..Default::default()
    };
    let c = compile_source_with("m.res", text, None, &opts).expect("compiles");
    assert_eq!(c.graph.output_shape(), [8, 4, 4]);
    let opts = Options {
        input_size: Some(vec![4, 6]),
        ..Default::default()
    };
    let e = compile_source_with("m.res", text, None, &opts).expect_err("not square");
    assert_eq!(e.first().code, "res::input_size");
}

/// `resnetc build --input-size A --input-size B`: one library, both sizes
/// served from C through `resnet18_forward_hw`, each equal to the
/// interpreter at its size; a size not held is refused with -3.
#[test]
fn a_static_library_holds_two_sizes_of_resnet18() {
    let out = tempfile::tempdir().expect("tempdir");
    let o = resnetc(&[
        "build",
        "examples/resnet18.res",
        "--random-weights",
        "4",
        "--input-size",
        "64x64",
        "--input-size",
        "80x96",
        "--quiet",
        "-o",
        p(out.path()),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let lib = out.path().join("libresnet18.a");
    let header = out.path().join("resnet18.h");
    assert_eq!(exported_symbols(&lib), header_functions(&header));
    let demo = link_sizes_demo("gcc", &[], out.path(), "resnet18");
    let (mut inputs, mut expected) = (Vec::new(), Vec::new());
    for (i, size) in [[64, 64], [80, 96]].into_iter().enumerate() {
        let c = at("resnet18", size);
        let w = random_weights(&specs_of(&c.graph), 4);
        let x = random_tensor(&[1, 3, size[0], size[1]], i as u64);
        expected.push(resnetc::interp::run(&c.graph, &w, &x).expect("interpreter"));
        inputs.push(x);
    }
    let got = run_sizes_demo(None, &demo, out.path(), &inputs, &expected);
    for (i, (y, e)) in got.iter().zip(&expected).enumerate() {
        assert_close(&format!("size {i} from C"), y, e, 1e-4, 1e-3);
    }
}

#[test]
fn use_finds_the_standard_library_and_the_search_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Outside the repository: no `../../examples/lib` path.
    let model = dir.path().join("r18.res");
    std::fs::write(
        &model,
        "use \"std/resnet\"\nuse \"mine.res\"\nmodel r18(x: f32[N, 3, H = 64, W = 64]) {\n    x |> stem() |> layer1: basic_layer(64, 2) |> layer2: basic_layer(128, 2, stride: 2)\n      |> layer3: basic_layer(256, 2, stride: 2) |> layer4: basic_layer(512, 2, stride: 2) |> my_head()\n}\n",
    )
    .expect("write");
    let libs = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        libs.path().join("mine.res"),
        "block my_head(x) { x |> head(1000) }\n",
    )
    .expect("write");
    // Not found without the search path: the hint says where it looked.
    let o = resnetc(&["check", p(&model)]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("res::use") && e.contains("-L DIR"), "{e}");
    let o = resnetc(&["check", p(&model), "-L", p(libs.path())]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = Command::new(env!("CARGO_BIN_EXE_resnetc"))
        .args(["check", p(&model)])
        .env("RESNETC_PATH", libs.path())
        .output()
        .expect("runs");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // The same weights as examples/resnet18.res.
    let opts = Options {
        search_path: vec![libs.path().to_path_buf()],
        input_size: Some(vec![64, 64]),
        ..Default::default()
    };
    let mine = compile_file_with(&model, &opts).expect("compiles");
    let theirs = at("resnet18", [64, 64]);
    assert_eq!(specs_of(&mine.graph), specs_of(&theirs.graph));
    // Every std file compiles on its own (a library has no model: the
    // blocks are checked when used; here, that they parse and load).
    for (name, _) in resnetc::front::library::STD {
        let text = format!("use \"std/{name}\"\nmodel m(x: f32[N, 3, 8, 8]) {{ x |> relu() }}\n");
        compile_source_with("m.res", &text, None, &Options::default())
            .unwrap_or_else(|e| panic!("std/{name}: {}", e.render_plain()));
    }
}
