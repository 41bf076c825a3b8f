//! The `resnetc` command line end to end: exit codes, messages, and that no
//! output file is left behind when a command fails.

mod common;
use common::*;
use resnetc::weights::read_npy;
use std::path::Path;
use std::process::{Command, Output};

fn resnetc(args: &[&str]) -> Output {
    // A wide, fixed wrap width: where the checkout's path is long, miette
    // would otherwise break a message fragment a test looks for.
    Command::new(env!("CARGO_BIN_EXE_resnetc"))
        .args(args)
        .current_dir(root())
        .env("COLUMNS", "400")
        .output()
        .expect("resnetc runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

#[test]
fn check_accepts_an_example_and_rejects_a_bad_file() {
    let ok = resnetc(&["check", "examples/resnet18.res"]);
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("f32[N, 1000]"));
    let bad = resnetc(&["check", "tests/bad_inputs/channel_mismatch_add.res"]);
    assert_eq!(bad.status.code(), Some(1));
    let e = stderr(&bad);
    assert!(
        e.contains("channel mismatch") && e.contains("channel_mismatch_add.res:4:12"),
        "{e}"
    );
    let missing = resnetc(&["check", "no/such/file.res"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("cannot read"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(resnetc(&["frobnicate"]).status.code(), Some(2));
    // --weights and --random-weights exclude each other.
    let o = resnetc(&[
        "run",
        "examples/cifar_resnet20.res",
        "--weights",
        "w",
        "--random-weights",
        "1",
        "--input",
        "x",
        "--output",
        "y",
    ]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn summary_json_reports_pytorch_totals() {
    let o = resnetc(&["summary", "examples/resnet50.res", "--format", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["model"], "resnet50");
    assert_eq!(v["params"], 25_557_032u64);
    assert_eq!(v["macs"], 4_089_184_256u64);
    assert_eq!(v["weights"].as_array().expect("weights").len(), 267); // 320 keys less 53 num_batches_tracked
    assert_eq!(v["weights"][0]["name"], "conv1.weight");
    assert_eq!(v["weights"][0]["shape"], serde_json::json!([64, 3, 7, 7]));
    let layers = v["layers"].as_array().expect("layers");
    assert!(layers.len() > 50);
    // Every conv names its CPU algorithm, and only convs do.
    for l in layers {
        let algo = l["algo"].as_str();
        assert_eq!(l["op"] == "conv", algo.is_some(), "{l}");
        if let Some(a) = algo {
            assert!(a == "direct" || a.starts_with("winograd F("), "{a}");
        }
    }
    let text = resnetc(&["summary", "examples/resnet50.res"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("25,557,032 parameters"));
}

/// The Winograd cost model's constants follow the CPU: fitted apart for
/// AMD's Zen cores (F(4×4) down to 14×14, F(2×2) at 7×7, where each ran
/// fastest there), the others' elsewhere (F(2×2) at 28×28, direct at
/// 14×14 and 7×7; docs/architecture.md).
#[test]
fn winograd_choices_follow_the_cpu_vendor() {
    let algo_at = |cpu: &str| -> Vec<(u64, String)> {
        let o = resnetc(&[
            "summary",
            "examples/resnet18.res",
            "--cpu",
            cpu,
            "--format",
            "json",
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
        let mut rows: Vec<(u64, String)> = v["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .filter(|l| l["name"].as_str().is_some_and(|n| n.ends_with(".conv2")))
            .map(|l| (l["shape"][1].as_u64().expect("h"), l["algo"].to_string()))
            .collect();
        rows.dedup();
        rows
    };
    let f4 = "\"winograd F(4x4, 3x3)\"".to_string();
    let f2 = "\"winograd F(2x2, 3x3)\"".to_string();
    let direct = "\"direct\"".to_string();
    assert_eq!(
        algo_at("znver4"),
        [
            (56, f4.clone()),
            (28, f4.clone()),
            (14, f4.clone()),
            (7, f2.clone())
        ]
    );
    assert_eq!(
        algo_at("x86-64-v4"),
        [(56, f4), (28, f2), (14, direct.clone()), (7, direct)]
    );
}

#[test]
fn graph_and_ir_print() {
    let dot = resnetc(&["graph", "examples/cifar_resnet20.res"]);
    assert_eq!(dot.status.code(), Some(0));
    let text = String::from_utf8_lossy(&dot.stdout);
    assert!(text.starts_with("digraph") && text.contains("layer1.0.conv1"));
    let svg = resnetc(&["graph", "examples/cifar_resnet20.res", "--format", "svg"]);
    let has_dot = Command::new("dot").arg("-V").output().is_ok();
    if has_dot {
        assert_eq!(svg.status.code(), Some(0), "{}", stderr(&svg));
        assert!(String::from_utf8_lossy(&svg.stdout).contains("<svg"));
    } else {
        assert_eq!(svg.status.code(), Some(1));
        assert!(stderr(&svg).contains("Graphviz"), "{}", stderr(&svg));
    }
    let ir = resnetc(&["ir", "examples/cifar_resnet20.res"]);
    let text = String::from_utf8_lossy(&ir.stdout);
    assert!(text.contains("model cifar_resnet20(x: f32[N, 3, 32, 32]) -> f32[N, 10]"));
    // The CPU back end's algorithm per conv follows the IR.
    let plan = text.split("cpu convs").nth(1).expect("the CPU conv plan");
    assert!(
        plan.matches(": direct").count() + plan.matches(": winograd").count() >= 21,
        "{plan}"
    );
    assert!(plan.contains("  layer1.0.conv1: "), "{plan}");
}

#[test]
fn run_reproduces_pytorch_through_the_cli() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("y.npy");
    let o = resnetc(&[
        "run",
        "examples/cifar_resnet20.res",
        "--weights",
        p(&fixture("cifar_resnet20.safetensors")),
        "--input",
        p(&fixture("cifar_resnet20.input.npy")),
        "--output",
        p(&out),
        "--target",
        "ref",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let y = resnetc::weights::read_npy(&out).expect("output written");
    let e = resnetc::weights::read_npy(&fixture("cifar_resnet20.output.npy")).expect("expected");
    assert_close("cli cifar_resnet20", &y, &e, 1e-5, 1e-3);
}

#[test]
fn init_then_run_with_random_weights() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = dir.path().join("w.safetensors");
    let o = resnetc(&[
        "init",
        "examples/densenet_bc_small.res",
        "--seed",
        "7",
        "-o",
        p(&w),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let from_file = dir.path().join("a.npy");
    let from_seed = dir.path().join("b.npy");
    let input = p(&fixture("densenet_bc_small.input.npy")).to_string();
    for (out, flag, val) in [
        (&from_file, "--weights", p(&w)),
        (&from_seed, "--random-weights", "7"),
    ] {
        let o = resnetc(&[
            "run",
            "examples/densenet_bc_small.res",
            flag,
            val,
            "--input",
            &input,
            "--output",
            p(out),
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    }
    let a = resnetc::weights::read_npy(&from_file).expect("a");
    let b = resnetc::weights::read_npy(&from_seed).expect("b");
    assert_eq!(
        a, b,
        "init --seed 7 and --random-weights 7 must be the same weights"
    );
}

/// Each failure exits 1 with a message naming the problem, and leaves no
/// output file.
#[test]
fn bad_weights_and_inputs_fail_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"this is not a weights file").expect("write");
    let truncated = dir.path().join("truncated.safetensors");
    let bytes = std::fs::read(fixture("cifar_resnet20.safetensors")).expect("read");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("write");
    let fortran = dir.path().join("bad.npy");
    std::fs::write(&fortran, b"\x93NUMPY\x01\x00\x46\x00{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3, 32, 32), }      \n")
        .expect("write");
    let cases: Vec<(&str, String, String, &str)> = vec![
        // (what, weights, input, expected message fragment)
        (
            "weights of another model",
            p(&fixture("cifar_plain20.safetensors")).into(),
            p(&fixture("cifar_resnet20.input.npy")).into(),
            "missing",
        ),
        (
            "not safetensors",
            p(&garbage).into(),
            p(&fixture("cifar_resnet20.input.npy")).into(),
            "not a safetensors file",
        ),
        (
            "truncated safetensors",
            p(&truncated).into(),
            p(&fixture("cifar_resnet20.input.npy")).into(),
            "truncated.safetensors",
        ),
        (
            // Another height and width is another size of the model; four
            // channels are not.
            "input of another shape",
            p(&fixture("cifar_resnet20.safetensors")).into(),
            p(&root().join("tests/bad_inputs/loaders/wrong_shape.npy")).into(),
            "has shape",
        ),
        (
            "float64 input",
            p(&fixture("cifar_resnet20.safetensors")).into(),
            p(&fortran).into(),
            "<f8",
        ),
        (
            "missing input",
            p(&fixture("cifar_resnet20.safetensors")).into(),
            "no-such.npy".into(),
            "no-such.npy",
        ),
    ];
    for (what, w, x, needle) in cases {
        let out = dir.path().join("out.npy");
        let o = resnetc(&[
            "run",
            "examples/cifar_resnet20.res",
            "--weights",
            &w,
            "--input",
            &x,
            "--output",
            p(&out),
        ]);
        assert_eq!(o.status.code(), Some(1), "{what}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(needle),
            "{what}: expected `{needle}` in\n{}",
            stderr(&o)
        );
        assert!(!out.exists(), "{what}: output file left behind");
    }
}

/// `resnetc run` of CIFAR ResNet-20 on the fixture's input with `extra`
/// flags, expected to fail with exit 1 and a message holding `says`,
/// writing no output.
fn run_fails_cleanly(extra: &[&str], says: &str) {
    run_fails_with(1, extra, says);
}

/// `resnetc run` of CIFAR ResNet-20 (random weights 0) on the fixture's
/// input into `out`, with `extra` flags.
fn run_cifar(out: &Path, extra: &[&str]) -> Output {
    let input = fixture("cifar_resnet20.input.npy");
    let mut args = vec![
        "run",
        "examples/cifar_resnet20.res",
        "--random-weights",
        "0",
        "--input",
        p(&input),
        "--output",
        p(out),
    ];
    args.extend(extra);
    resnetc(&args)
}

/// `run_fails_cleanly` with exit `code`.
fn run_fails_with(code: i32, extra: &[&str], says: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("y.npy");
    let o = run_cifar(&out, extra);
    assert_eq!(o.status.code(), Some(code), "{}", stderr(&o));
    assert!(stderr(&o).contains(says), "{}", stderr(&o));
    assert!(!out.exists());
}

/// Without a CUDA driver, `run --target cuda` says so and exits 1, writing
/// nothing (on a GPU machine it runs: tests/cuda_backend.rs).
#[test]
fn cuda_without_a_driver_is_a_clear_error() {
    if resnetc::backend::cuda::runtime::driver_present() {
        return;
    }
    run_fails_cleanly(&["--target", "cuda"], "no CUDA driver was found");
}

/// An architecture resnetc does not target is refused before any work,
/// with the ones it does in the hint (a GPU without a driver or not).
#[test]
fn an_unknown_gpu_architecture_lists_the_known_ones() {
    run_fails_cleanly(
        &["--target", "cuda", "--gpu", "sm_61"],
        "unknown GPU architecture `sm_61`",
    );
    run_fails_cleanly(&["--target", "cuda", "--gpu", "sm_61"], "`sm_75` (T4");
}

/// `text` written as `dir/name`.
fn model_file(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write model");
    path
}

/// `resnetc build` of CIFAR ResNet-20 for CUDA into `out`, with `extra`
/// flags.
fn build_cuda(out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "build",
        "examples/cifar_resnet20.res",
        "--target",
        "cuda",
        "--random-weights",
        "0",
        "--quiet",
        "-o",
        p(out),
    ];
    args.extend(extra);
    resnetc(&args)
}

/// `build --target cuda` writes the PTX, the launch plan and the weights
/// (no GPU needed). The plan names the architecture and the multiprocessors
/// its tiles were chosen for: the `--gpu`'s reference part by default
/// (sm_80: an A100's 108), `--sms` where given; `--sms 0` is refused.
#[test]
fn cuda_build_records_the_gpu_it_planned_for() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (sms, want) in [(None, 108), (Some("114"), 114)] {
        let out = dir.path().join(format!("out{want}"));
        let extra: Vec<&str> = sms.iter().flat_map(|n| ["--sms", *n]).collect();
        let o = build_cuda(&out, &extra);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let text = std::fs::read_to_string(out.join("cifar_resnet20.plan.json")).expect("plan");
        let plan: serde_json::Value = serde_json::from_str(&text).expect("json plan");
        assert_eq!(plan["gpu"], "sm_80", "{text}");
        assert_eq!(plan["sms"], want, "{text}");
        let weights = std::fs::metadata(out.join("cifar_resnet20.weights.bin")).expect("weights");
        assert_eq!(Some(weights.len() / 4), plan["const_elements"].as_u64());
        let ptx = std::fs::read_to_string(out.join("cifar_resnet20.ptx")).expect("ptx");
        assert!(ptx.contains(".target sm_80"), "the PTX's target");
    }
    let out = dir.path().join("zero");
    let o = build_cuda(&out, &["--sms", "0"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--sms"), "{}", stderr(&o));
    assert!(!out.exists());
}

/// `--check-layers` compares the CUDA back end's layers: with another
/// target it is an error naming the target to use, before any work.
#[test]
fn check_layers_needs_a_compiled_target() {
    run_fails_with(
        2,
        &["--target", "ref", "--check-layers"],
        "--target cpu or --target cuda",
    );
    // The CPU's layers, each against the interpreter on its own inputs.
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("y.npy");
    for precision in ["fp32", "bf16"] {
        let o = run_cifar(&out, &["--check-layers", "--precision", precision]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let table = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(table.contains("layer3.2.conv2 conv"), "{table}");
        assert!(!table.contains("DIFFERS"), "{table}");
        assert!(out.exists());
    }
}

/// A flag only another target reads is a usage error (exit 2), not
/// silently ignored.
#[test]
fn flags_of_another_target_are_refused() {
    for (extra, says) in [
        (&["--gpu", "sm_90"][..], "--gpu applies to --target cuda"),
        (&["--sms", "114"][..], "--sms applies to --target cuda"),
        (
            &["--target", "ref", "--threads", "2"][..],
            "--threads applies to --target cpu",
        ),
        (
            &["--target", "ref", "--cpu", "x86-64"][..],
            "--cpu applies to --target cpu",
        ),
        (
            &["--max-split-k", "4"][..],
            "--max-split-k applies to --target cuda",
        ),
        (
            &["--target", "ref", "--conv-kernel", "pixels"][..],
            "--conv-kernel applies to --target cpu",
        ),
        (
            &["--target", "ref", "--conv-algo", "winograd"][..],
            "--conv-algo applies to --target cpu",
        ),
        (
            &["--target", "ref", "--tuning", "t.json"][..],
            "--tuning applies to --target cpu",
        ),
        (
            &["--target", "ref", "--triple", "aarch64-linux-gnu"][..],
            "--triple applies to --target cpu",
        ),
    ] {
        run_fails_with(2, extra, says);
    }
    let model = "examples/cifar_resnet20.res";
    for (args, says) in [
        (
            &["bench", model, "--target", "ref", "--layers"][..],
            "the interpreter has none",
        ),
        (
            &["build", model, "--target", "ref", "--random-weights", "0"][..],
            "nothing to build",
        ),
        (
            &["ir", model, "--print-after", "nosuch"][..],
            "unknown pass",
        ),
        (
            &["bench", model, "--precision", "bf16", "--tune", "t.json"][..],
            "--tune measures the fp32 conv kernels",
        ),
        (
            &["bench", model, "--target", "cuda", "--precision", "bf16"][..],
            "--precision applies to --target cpu",
        ),
        (
            &[
                "run",
                model,
                "--random-weights",
                "0",
                "--input",
                "x.npy",
                "--output",
                "y.npy",
                "--target",
                "ref",
                "--check-layers",
            ][..],
            "--check-layers compares the layers of a compiled back end",
        ),
    ] {
        let o = resnetc(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
    }
    let o = resnetc(&[
        "ir",
        "examples/cifar_resnet20.res",
        "-O0",
        "--print-after",
        "dce",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("-O0 runs none"), "{}", stderr(&o));
}

/// Writing outputs never destroys what the path named: a symlink is
/// written through (its target replaced, the link kept), a device written
/// into; a build with a directory in the way of one of its files writes
/// none of them.
#[cfg(unix)]
#[test]
fn outputs_respect_links_devices_and_whole_builds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let real = dir.path().join("real.npy");
    std::fs::write(&real, b"").expect("write");
    let link = dir.path().join("link.npy");
    std::os::unix::fs::symlink("real.npy", &link).expect("symlink");
    for out in [&link, Path::new("/dev/null")] {
        let o = run_cifar(out, &[]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    }
    let link_kind = std::fs::symlink_metadata(&link).expect("link").file_type();
    assert!(link_kind.is_symlink(), "the link is kept");
    resnetc::weights::read_npy(&real).expect("the link's target holds the output");
    let null = std::fs::metadata("/dev/null").expect("/dev/null");
    assert!(!null.is_file(), "/dev/null is still a device");
    // /dev/stdout is the process's own stdout: a pipe here, whose link
    // text (`pipe:[N]`) is no path.
    let o = resnetc(&["init", "examples/cifar_resnet20.res", "-o", "/dev/stdout"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let piped = resnetc::weights::parse_safetensors(&o.stdout, "stdout").expect("safetensors");
    assert!(
        piped.contains_key("conv1.weight"),
        "the weights came through the pipe"
    );

    let out = dir.path().join("build");
    std::fs::create_dir_all(out.join("cifar_resnet20.weights.bin")).expect("mkdir");
    let o = build_cuda(&out, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("is a directory"), "{}", stderr(&o));
    let left: Vec<_> = std::fs::read_dir(&out)
        .expect("build dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left.len(), 1, "only the directory in the way: {left:?}");
}

/// With stderr closed (`2>&1 | head -1`), messages are lost but not the
/// work: the weights are written and the exit code is the command's.
#[test]
fn a_closed_stderr_loses_messages_not_work() {
    use std::process::Stdio;
    let dir = tempfile::tempdir().expect("tempdir");
    // An unused value: a warning on stderr before the file is written.
    let model = model_file(dir.path(), "warns.res", "model m(x: f32[N, 3, 8, 8]) {\n    let unused = x |> u: conv(4, k: 1)\n    x |> c: conv(4, k: 1)\n}\n");
    let w = dir.path().join("w.safetensors");
    let run = |args: &[&str]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_resnetc"))
            .args(args)
            .current_dir(root())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        drop(child.stderr.take());
        child.wait().expect("wait").code()
    };
    assert_eq!(run(&["init", p(&model), "-o", p(&w)]), Some(0));
    assert!(w.exists(), "the weights were written");
    let bad = "tests/bad_inputs/channel_mismatch_add.res";
    assert_eq!(run(&["check", bad]), Some(1));
}

/// Memory the process cannot get is an error before the work, not an
/// allocation abort (exit 134) halfway: the interpreter's values of a batch
/// (4 GiB here), and random weights (8 GiB), under a 2 GB address-space
/// limit.
#[cfg(unix)]
#[test]
fn memory_that_cannot_be_had_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let big_values = model_file(
        dir.path(),
        "big_values.res",
        "model m(x: f32[N, 1, 8, 8]) {\n    x |> upsample(scale: 256) |> c: conv(256, k: 1)\n}\n",
    );
    let big_weights = model_file(
        dir.path(),
        "big_weights.res",
        "model m(x: f32[N, 46340]) {\n    x |> fc: linear(46340, bias: false)\n}\n",
    );
    let x = dir.path().join("x.npy");
    resnetc::weights::write_npy(&x, &resnetc::tensor::Tensor::zeros(&[1, 1, 8, 8])).expect("x");
    let (y, w) = (dir.path().join("y.npy"), dir.path().join("w.safetensors"));
    let exe = env!("CARGO_BIN_EXE_resnetc");
    let limited = |args: &[&str]| {
        Command::new("sh")
            .arg("-c")
            .arg("ulimit -v 2000000 && exec \"$@\"")
            .arg("sh")
            .arg(exe)
            .args(args)
            .output()
            .expect("sh runs")
    };
    let cases: [(&[&str], &str); 2] = [
        (
            &[
                "run",
                p(&big_values),
                "--random-weights",
                "0",
                "--target",
                "ref",
                "--input",
                p(&x),
                "--output",
                p(&y),
            ],
            "GiB of memory in the interpreter",
        ),
        (
            &["init", p(&big_weights), "-o", p(&w)],
            "weights need 8.0 GiB",
        ),
    ];
    for (args, says) in cases {
        let o = limited(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
    }
    assert!(!y.exists() && !w.exists(), "no output written");
}

/// A UTF-8 byte-order mark (as some Windows editors write) is skipped.
#[test]
fn a_byte_order_mark_is_skipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = model_file(
        dir.path(),
        "bom.res",
        "\u{feff}model m(x: f32[N, 3, 8, 8]) {\n    x |> relu()\n}\n",
    );
    let o = resnetc(&["check", p(&model)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn bench_reports_json() {
    let o = resnetc(&[
        "bench",
        "examples/densenet_bc_small.res",
        "--threads",
        "1",
        "--batch",
        "2",
        "--format",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    for key in [
        "median_ms",
        "min_ms",
        "runs",
        "images_per_s",
        "gflops",
        "threads",
        "batch",
    ] {
        assert!(v.get(key).is_some(), "missing {key} in {v}");
    }
    let (median, images) = (v["median_ms"].as_f64(), v["images_per_s"].as_f64());
    let throughput = 2e3 / median.expect("median");
    assert!(
        (images.expect("images/s") - throughput).abs() <= 1e-6 * throughput,
        "images/s is batch / median: {v}"
    );
    assert!(v.get("gpu").is_none(), "a CPU run names no GPU: {v}");
    assert_eq!(v["batch"], 2);
    assert_eq!(v["threads"], 1);
    assert!(v["runs"].as_u64().expect("runs") >= 10);
    assert!(v["min_ms"].as_f64().expect("min") <= v["median_ms"].as_f64().expect("median"));
}

/// Without `--threads`, the pool uses the CPUs the process may run on, not
/// all the machine's: under `taskset -c 0` one thread (two threads spinning
/// on one CPU made densenet_bc_small 80 times slower).
#[test]
fn default_threads_follow_the_affinity_mask() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let taskset = Command::new("taskset").arg("-V").output();
    if cpus < 2 || !taskset.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: needs taskset and 2 CPUs (have {cpus})");
        return;
    }
    // The first CPU this process may use ("0-1", "2,5-7", ...).
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let first = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .and_then(|l| l.trim().split([',', '-']).next().map(str::to_string))
        .unwrap_or_else(|| "0".into());
    let bench = |pin: bool| {
        let mut cmd = Command::new(if pin {
            "taskset"
        } else {
            env!("CARGO_BIN_EXE_resnetc")
        });
        if pin {
            cmd.args(["-c", &first, env!("CARGO_BIN_EXE_resnetc")]);
        }
        let o = cmd
            .args(["bench", "examples/cifar_resnet20.res", "--format", "json"])
            .current_dir(root())
            .output()
            .expect("resnetc runs");
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
        v["threads"].as_u64().expect("threads")
    };
    assert_eq!(bench(true), 1);
    // Unpinned: at most the CPUs of the mask, at least what Rust counts
    // (the mask and the cgroup quota, rounded down where resnetc rounds up).
    let allowed: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|list| {
            list.trim()
                .split(',')
                .map(|r| match r.split_once('-') {
                    Some((a, b)) => {
                        b.parse::<u64>().unwrap_or(0) + 1 - a.parse::<u64>().unwrap_or(0)
                    }
                    None => 1,
                })
                .sum()
        })
        .unwrap_or(cpus as u64);
    let unpinned = bench(false);
    assert!(
        (cpus as u64..=allowed).contains(&unpinned),
        "{unpinned} threads, not in {cpus}..={allowed}"
    );
}

/// `resnetc ir big.res | head -1`: a closed pipe ends resnetc quietly, not
/// with a panic (exit 101).
#[test]
fn closed_stdout_is_not_a_panic() {
    use std::io::Read;
    let mut child = Command::new(env!("CARGO_BIN_EXE_resnetc"))
        .args(["ir", "examples/resnet152.res"])
        .current_dir(root())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawns");
    let mut first = [0u8; 16];
    child
        .stdout
        .take()
        .expect("stdout")
        .read_exact(&mut first)
        .expect("some output");
    // Dropping the read end closes the pipe.
    let status = child.wait().expect("exits");
    assert_ne!(status.code(), Some(101), "panicked on a closed pipe");
    assert!(status.success(), "{status:?}");
}

/// `bench --tune` writes a record whose every choice is its fastest
/// measured candidate; `run --tuning` reads it and still matches PyTorch;
/// a file that is not a record is a clear error (exit 1) and nothing is
/// written.
#[test]
fn bench_tune_writes_a_record_that_run_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let record = dir.path().join("tuning.json");
    let o = resnetc(&[
        "bench",
        "examples/cifar_resnet20.res",
        "--threads",
        "1",
        "--tune",
        p(&record),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("conv shapes measured"),
        "{}",
        stderr(&o)
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&record).expect("record")).expect("json");
    let entries = v["entries"].as_object().expect("entries");
    assert!(entries.len() >= 5, "{v}");
    for (key, e) in entries {
        let ms = e["ms"].as_object().expect("ms");
        let best = ms
            .iter()
            .min_by(|a, b| {
                a.1.as_f64()
                    .unwrap_or(f64::MAX)
                    .total_cmp(&b.1.as_f64().unwrap_or(f64::MAX))
            })
            .map(|(k, _)| k.clone());
        assert_eq!(e["choice"].as_str(), best.as_deref(), "{key}: {e}");
    }
    let out = dir.path().join("y.npy");
    let w = fixture("cifar_resnet20.safetensors");
    let x = fixture("cifar_resnet20.input.npy");
    let o = resnetc(&[
        "run",
        "examples/cifar_resnet20.res",
        "--weights",
        p(&w),
        "--input",
        p(&x),
        "--output",
        p(&out),
        "--tuning",
        p(&record),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let y = resnetc::weights::read_npy(&out).expect("output");
    let e = resnetc::weights::read_npy(&fixture("cifar_resnet20.output.npy")).expect("expected");
    let scale = e.data.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = y
        .data
        .iter()
        .zip(&e.data)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(err <= 1e-4 * scale, "max abs error {err} of {scale}");
    std::fs::write(&record, "{ not json").expect("write");
    std::fs::remove_file(&out).expect("rm");
    let o = run_cifar(&out, &["--tuning", p(&record)]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("is not a tuning record"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
}

/// A JIT run for a CPU this machine is not is refused, exit 1, naming the
/// instructions it lacks, instead of dying of SIGILL. Checked where a CPU
/// without AVX-512 can be had: under `qemu-x86_64 -cpu Haswell` (part of
/// Debian's qemu-user, which scripts/setup.sh installs for the AArch64
/// checks), or on such a machine itself.
#[test]
fn run_for_a_cpu_this_machine_is_not_is_refused() {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let native_avx512 = cpuinfo
        .lines()
        .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "avx512f"));
    let qemu = Command::new("qemu-x86_64").arg("--version").output();
    let mut checked = false;
    if !native_avx512 {
        run_fails_cleanly(&["--cpu", "x86-64-v4"], "AVX-512F");
        checked = true;
    }
    if qemu.is_ok_and(|o| o.status.success()) {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("y.npy");
        let input = fixture("cifar_resnet20.input.npy");
        let o = Command::new("qemu-x86_64")
            .args(["-cpu", "Haswell", env!("CARGO_BIN_EXE_resnetc")])
            .args([
                "run",
                "examples/cifar_resnet20.res",
                "--random-weights",
                "0",
            ])
            .args([
                "--input",
                p(&input),
                "--output",
                p(&out),
                "--cpu",
                "x86-64-v4",
            ])
            // One line: "AVX-512F" is not wrapped at its hyphen.
            .env("COLUMNS", "400")
            .current_dir(root())
            .output()
            .expect("qemu runs");
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{e}");
        assert!(e.contains("AVX-512F") && e.contains("x86-64-v3"), "{e}");
        assert!(!out.exists());
        checked = true;
    }
    if !checked {
        eprintln!("note: skipped: this CPU has AVX-512 and qemu-x86_64 is not installed");
    }
}

/// `--triple aarch64-linux-gnu` is for `build`: `run` and `bench` on this
/// x86-64 machine refuse it (exit 1, saying how to build instead, before
/// any work); an unknown AArch64 CPU (an x86 name included) is refused
/// with the names known, an unknown triple with the ones accepted, and
/// nothing is written. (tests/aarch64.rs runs what `build` writes.)
#[test]
fn aarch64_code_is_built_not_run_here() {
    run_fails_cleanly(
        &["--triple", "aarch64-linux-gnu"],
        "code for aarch64 cannot run on this x86-64 machine",
    );
    let model = "examples/cifar_resnet20.res";
    let bench = resnetc(&["bench", model, "--triple", "aarch64-unknown-linux-gnu"]);
    assert_eq!(bench.status.code(), Some(1), "{}", stderr(&bench));
    assert!(
        stderr(&bench).contains("--triple aarch64-linux-gnu"),
        "{}",
        stderr(&bench)
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("lib");
    for (flags, says) in [
        (
            &["--triple", "aarch64-linux-gnu", "--cpu", "cortex-a999"][..],
            "unknown AArch64 CPU `cortex-a999`",
        ),
        (
            &["--triple", "aarch64-linux-gnu", "--cpu", "skylake"][..],
            "unknown AArch64 CPU `skylake`",
        ),
        (
            &["--triple", "aarch64-linux-gnu", "--cpu", "native"][..],
            "unknown AArch64 CPU `native`",
        ),
        (
            &["--triple", "riscv64-linux-gnu"][..],
            "unknown target triple `riscv64-linux-gnu`",
        ),
    ] {
        let mut args = vec!["build", model, "--random-weights", "0", "-o", p(&out)];
        args.extend(flags);
        let o = resnetc(&args);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{flags:?}: {e}");
        assert!(e.contains(says), "{flags:?}: {e}");
        if says.contains("CPU") {
            assert!(e.contains("neoverse-n1") && e.contains("apple-m1"), "{e}");
        }
        assert!(!out.exists(), "{flags:?}: output written");
    }
}

/// `-o` names the file where a build writes one (`--emit ptx -o m.ptx`), a
/// directory where it writes several, or one file into an existing
/// directory.
#[test]
fn o_names_a_file_where_one_file_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (target, emit, name) in [("cuda", "ptx", "m.ptx"), ("cpu", "llvm-ir", "sub/m.ll")] {
        let out = dir.path().join(name);
        let o = resnetc(&[
            "build",
            "examples/cifar_resnet20.res",
            "--random-weights",
            "0",
            "--target",
            target,
            "--emit",
            emit,
            "--quiet",
            "-o",
            p(&out),
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert!(out.is_file(), "{name} is not a file");
    }
    // An existing directory is written into, extension or not.
    let into = dir.path().join("d.ptx");
    std::fs::create_dir(&into).expect("mkdir");
    let o = resnetc(&[
        "build",
        "examples/cifar_resnet20.res",
        "--random-weights",
        "0",
        "--target",
        "cuda",
        "--emit",
        "ptx",
        "--quiet",
        "-o",
        p(&into),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(into.join("cifar_resnet20.ptx").is_file());
}

/// An output in a directory that does not exist is refused before the
/// model is compiled or the weights read (the weights named here do not
/// exist, and that is not the error).
#[test]
fn an_output_in_a_missing_directory_is_reported_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no/such/dir/y.npy");
    let runs: [&[&str]; 3] = [
        &[
            "run",
            "examples/cifar_resnet20.res",
            "--weights",
            "nope.safetensors",
            "--input",
            "nope.npy",
            "--output",
        ],
        &["init", "examples/cifar_resnet20.res", "-o"],
        &[
            "export",
            "examples/cifar_resnet20.res",
            "--weights",
            "nope.safetensors",
            "-o",
        ],
    ];
    for args in runs {
        let mut all = args.to_vec();
        all.push(p(&missing));
        let o = resnetc(&all);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{e}");
        assert!(
            e.contains("resnetc::output") && e.contains("does not exist") && !e.contains("nope"),
            "{args:?}: {e}"
        );
    }
}

/// PyTorch's argument names work on the operators; `in_channels` is
/// answered with where the size comes from.
#[test]
fn pytorch_argument_names_are_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let torch = dir.path().join("torch.res");
    std::fs::write(
        &torch,
        "model m(x: f32[N, 3, 16, 16]) {\n    x |> c: conv(out_channels: 8, kernel_size: 3, padding: 1, bias: true)\n      |> maxpool(kernel_size: 3, stride: 2, ceil_mode: true) |> leaky_relu(negative_slope: 0.2)\n}\n",
    )
    .expect("write");
    let ours = dir.path().join("ours.res");
    std::fs::write(
        &ours,
        "model m(x: f32[N, 3, 16, 16]) {\n    x |> c: conv(8, k: 3, pad: 1, bias: true)\n      |> maxpool(k: 3, stride: 2, ceil: true) |> leaky_relu(slope: 0.2)\n}\n",
    )
    .expect("write");
    let ir = |f: &Path| {
        let o = resnetc(&["ir", p(f), "-O0"]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert_eq!(ir(&torch), ir(&ours));
    std::fs::write(
        &torch,
        "model m(x: f32[N, 3, 16, 16]) {\n    x |> c: conv(in_channels: 3, out: 8, k: 3)\n}\n",
    )
    .expect("write");
    let o = resnetc(&["check", p(&torch)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("leave it out"), "{}", stderr(&o));
}

/// `summary`'s rows add up to its total: a BN folded into its conv counts
/// in the conv's row.
#[test]
fn summary_rows_add_up_to_the_total() {
    for model in ["resnet50", "densenet_bc_small", "unet_small"] {
        for level in ["-O1", "-O0"] {
            let o = resnetc(&[
                "summary",
                &format!("examples/{model}.res"),
                "--format",
                "json",
                level,
            ]);
            assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
            let rows: u64 = v["layers"]
                .as_array()
                .expect("layers")
                .iter()
                .map(|l| l["params"].as_u64().expect("params"))
                .sum();
            assert_eq!(
                rows,
                v["params"].as_u64().expect("total"),
                "{model} {level}"
            );
        }
    }
}

/// Another network's weights: the counts, five of each kind, and the
/// likely cause, not a line per tensor; then a non-strict load of a
/// backbone's weights, which names what it skipped.
#[test]
fn wrong_weights_are_summarized_and_non_strict_loads_say_what_they_skip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("y.npy");
    let o = resnetc(&[
        "run",
        "examples/densenet_bc_small.res",
        "--weights",
        p(&fixture("cifar_resnet20.safetensors")),
        "--input",
        p(&fixture("densenet_bc_small.input.npy")),
        "--output",
        p(&out),
    ]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("more missing") && e.contains("more unexpected"),
        "{e}"
    );
    assert!(e.contains("none of the file's"), "{e}");
    assert!(e.lines().count() < 40, "{e}");
    // cifar_resnet20's weights for a CIFAR ResNet with a 100-class head
    // named `classifier`: the backbone binds, the head is drawn at random.
    let model = dir.path().join("r20_100.res");
    std::fs::write(
        &model,
        "use \"std/cifar\"\nmodel m(x: f32[N, 3, H = 32, W = 32]) {\n    x |> conv1: conv(16, k: 3, pad: 1) |> bn1: batchnorm() |> relu()\n      |> layer1: cifar_stage(16, 3, 1, true) |> layer2: cifar_stage(32, 3, 2, true)\n      |> layer3: cifar_stage(64, 3, 2, true) |> global_avgpool() |> flatten() |> classifier: linear(100)\n}\n",
    )
    .expect("write");
    let (weights, input) = (
        fixture("cifar_resnet20.safetensors"),
        fixture("cifar_resnet20.input.npy"),
    );
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            p(&model),
            "--weights",
            p(&weights),
            "--input",
            p(&input),
            "--output",
            p(&out),
            "--target",
            "ref",
        ];
        args.extend(extra);
        resnetc(&args)
    };
    assert_eq!(run(&[]).status.code(), Some(1));
    assert!(!out.exists());
    let o = run(&["--allow-missing", "--ignore-unused"]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{e}");
    assert!(
        e.contains("2 tensors missing") && e.contains("classifier.weight") && e.contains("fc.bias"),
        "{e}"
    );
    assert_eq!(read_npy(&out).expect("output").shape, [2, 100]);
}
