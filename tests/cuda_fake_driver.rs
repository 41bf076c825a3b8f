//! Both CUDA runtimes, end to end, on a model of the CUDA driver
//! (`tests/fake_cuda/fake_cuda.c`, built here as `libcuda.so`): `resnetc
//! run|bench --target cuda` (the Rust runtime through cudarc) and a C
//! program linked to the CUDA static library (`runtime/cuda_rt.c`). The
//! model runs each kernel of the PTX as its host emulation, so this checks
//! what the emulation tests cannot: PTX loading, the weights upload, the
//! arena, kernel arguments and grids as the runtimes pass them, graph
//! capture and replay, batch sizes, events, and driver errors surfacing as
//! diagnostics. Outputs are compared with the interpreter (`--target ref`)
//! and with PyTorch. It cannot check the GPU itself; a real driver's tests
//! are in `cuda_backend.rs`.

mod common;
use common::*;
use resnetc::backend::cuda::plan::{Launch, LaunchPlan};
use resnetc::backend::cuda::{self, emulate, CudaOptions};
use resnetc::passes;
use resnetc::tensor::Tensor;
use resnetc::weights::{random_weights, read_npy, specs_of, write_npy};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn cc(args: &[&str]) {
    let out = Command::new("gcc").args(args).output().expect("gcc runs");
    assert!(
        out.status.success(),
        "gcc {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The fake driver as `dir/libcuda.so` (cudarc's name) and `libcuda.so.1`
/// (the C runtime's).
fn fake_driver(dir: &Path) {
    let src = root().join("tests/fake_cuda/fake_cuda.c");
    let lib = dir.join("libcuda.so");
    cc(&[
        "-shared",
        "-fPIC",
        "-O2",
        "-Wall",
        "-Werror",
        "-o",
        lib.to_str().expect("utf-8 path"),
        src.to_str().expect("utf-8 path"),
        "-ldl",
    ]);
    std::fs::copy(&lib, dir.join("libcuda.so.1")).expect("libcuda.so.1");
}

/// The multiprocessors the fake driver reports unless told otherwise
/// (RESNETC_FAKE_CUDA_SMS), which `run` and `bench` plan for.
const FAKE_SMS: u64 = 132;

/// The options `run`/`bench --gpu GPU` build with on the fake driver.
fn on_the_fake(gpu: &str) -> CudaOptions {
    CudaOptions {
        sms: Some(FAKE_SMS),
        ..CudaOptions::for_gpu(gpu)
    }
}

/// A model's kernels emulated for the host, as a shared object for the
/// fake driver. Checks on the way that the emulation was lowered with the
/// very launch plan of the PTX the runtime will load.
fn host_kernels(source: &Path, dir: &Path, opts: &CudaOptions) -> PathBuf {
    host_kernels_and_plan(source, dir, opts).0
}

/// `host_kernels`, and the launch plan of the kernels (the runtime's,
/// launch for launch).
fn host_kernels_and_plan(source: &Path, dir: &Path, opts: &CudaOptions) -> (PathBuf, LaunchPlan) {
    let c = resnetc::front::compile_file(source).expect("compiles");
    let mut g = c.graph.clone();
    passes::optimize(&mut g, None);
    let w = random_weights(&specs_of(&c.graph), 0);
    let (obj, plan) = emulate::emulation_object(&g, &w, opts).expect("emulation object");
    let ptx = cuda::compile(&g, &w, opts).expect("ptx");
    assert_eq!(
        plan, ptx.plan,
        "the emulation and the PTX have different plans"
    );
    let o = dir.join("kernels.o");
    std::fs::write(&o, obj).expect("write object");
    let so = dir.join("kernels.so");
    cc(&[
        "-shared",
        "-o",
        so.to_str().expect("utf-8 path"),
        o.to_str().expect("utf-8 path"),
        "-lm",
    ]);
    (so, ptx.plan)
}

/// Runs `cmd` with the fake driver and `kernels` visible; without SASS
/// (an empty RESNETC_PTXAS) unless the command names a ptxas itself.
fn on_fake(cmd: &mut Command, driver: &Path, kernels: Option<&Path>) -> Output {
    if !cmd.get_envs().any(|(k, _)| k == "RESNETC_PTXAS") {
        cmd.env("RESNETC_PTXAS", "");
    }
    cmd.env("LD_LIBRARY_PATH", driver);
    cmd.env("RESNETC_FAKE_CUDA_STATS", "1");
    match kernels {
        Some(k) => cmd.env("RESNETC_FAKE_CUDA_KERNELS", k),
        None => cmd.env_remove("RESNETC_FAKE_CUDA_KERNELS"),
    };
    cmd.output().expect("runs")
}

fn resnetc() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_resnetc"));
    c.current_dir(root()).env("COLUMNS", "400");
    c
}

/// What the fake driver prints at exit for a run that copies its input in
/// and its output out once each.
const ONE_COPY_EACH_WAY: &str = "fake cuda: 1 host-to-device copies, 1 device-to-host copies";

/// `resnetc run MODEL --target T WEIGHTS --input X -o Y`.
fn run_model(
    model: &Path,
    target: &str,
    weights: &[&str],
    x: &Path,
    y: &Path,
    fake: Option<(&Path, &Path)>,
) -> Tensor {
    let mut cmd = resnetc();
    cmd.arg("run")
        .arg(model)
        .args(["--target", target])
        .args(weights)
        .arg("--input")
        .arg(x)
        .arg("--output")
        .arg(y);
    let out = match fake {
        Some((driver, kernels)) => on_fake(&mut cmd, driver, Some(kernels)),
        None => cmd.output().expect("runs"),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "resnetc run --target {target} {} failed:\n{stderr}",
        model.display(),
    );
    if fake.is_some() {
        // The batch's images are packed: one copy in, one out, any batch.
        assert!(stderr.contains(ONE_COPY_EACH_WAY), "{stderr}");
    }
    read_npy(y).expect("output")
}

/// A copy of an example at a 32x32 input (same layers, a fraction of the
/// emulation's work), with the library it uses.
fn small_copy(name: &str, dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(example(name)).expect("read example");
    let text = text.replace("H = 224, W = 224]", "H = 32, W = 32]");
    let lib = dir.join("lib");
    std::fs::create_dir_all(&lib).expect("lib/");
    for e in std::fs::read_dir(root().join("examples/lib")).expect("examples/lib") {
        let p = e.expect("entry").path();
        std::fs::copy(&p, lib.join(p.file_name().expect("name"))).expect("copy lib");
    }
    let path = dir.join(format!("{name}.res"));
    std::fs::write(&path, text).expect("write model");
    path
}

/// The Rust runtime on the fake driver against the interpreter, for
/// models that between them hold every kind of kernel (7x7 stem, max
/// pool, strided 1x1 projections, DenseNet's in-place concat and BN-ReLU
/// prologue, U-Net's transposed convs and skips), at batch sizes that pick
/// different tile variants (1, 5).
#[test]
fn rust_runtime_matches_the_interpreter_on_the_fake_driver() {
    let dir = tempfile::tempdir().expect("tempdir");
    let driver = dir.path().join("driver");
    std::fs::create_dir(&driver).expect("mkdir");
    fake_driver(&driver);
    let models = [
        small_copy("resnet18", dir.path()),
        example("densenet_bc_small"),
        example("unet_small"),
    ];
    for (i, model) in models.iter().enumerate() {
        let work = dir.path().join(format!("m{i}"));
        std::fs::create_dir(&work).expect("mkdir");
        // No --gpu: the code for GPU 0's architecture (the fake's 9.0).
        let kernels = host_kernels(model, &work, &on_the_fake("sm_90"));
        let c = resnetc::front::compile_file(model).expect("compiles");
        for batch in [1, 5] {
            let mut shape = vec![batch];
            shape.extend(c.graph.input_shape());
            let x = work.join(format!("x{batch}.npy"));
            write_npy(&x, &random_tensor(&shape, 11 + batch as u64)).expect("write input");
            let weights = ["--random-weights", "3"];
            let expected = run_model(model, "ref", &weights, &x, &work.join("ref.npy"), None);
            let y = run_model(
                model,
                "cuda",
                &weights,
                &x,
                &work.join("cuda.npy"),
                Some((&driver, &kernels)),
            );
            assert_close(
                &format!("{} at batch {batch} on the fake driver", model.display()),
                &y,
                &expected,
                1e-4,
                1e-3,
            );
        }
    }
}

/// `resnetc run MODEL --check-layers` on the fake driver at batch 1, and
/// the launch plan it runs.
struct LayerCheck<'a> {
    model: &'a Path,
    driver: &'a Path,
    kernels: PathBuf,
    plan: LaunchPlan,
    x: PathBuf,
    y: PathBuf,
}

impl<'a> LayerCheck<'a> {
    fn new(model: &'a Path, driver: &'a Path) -> Self {
        // No --gpu: the code for GPU 0's architecture (the fake's 9.0).
        let (kernels, plan) = host_kernels_and_plan(model, driver, &on_the_fake("sm_90"));
        let c = resnetc::front::compile_file(model).expect("compiles");
        let x = driver.join("x.npy");
        let mut shape = vec![1];
        shape.extend(c.graph.input_shape());
        write_npy(&x, &random_tensor(&shape, 5)).expect("write input");
        let y = driver.join("y.npy");
        LayerCheck {
            model,
            driver,
            kernels,
            plan,
            x,
            y,
        }
    }

    /// Exit code, stdout and stderr, with running launch `skip` made to do
    /// nothing (the fake driver's RESNETC_FAKE_CUDA_SKIP_LAUNCH).
    fn run(&self, skip: Option<usize>) -> (Option<i32>, String, String) {
        let mut cmd = resnetc();
        cmd.arg("run")
            .arg(self.model)
            .args(["--target", "cuda", "--random-weights", "3"])
            .arg("--check-layers")
            .arg("--input")
            .arg(&self.x)
            .arg("--output")
            .arg(&self.y);
        match skip {
            Some(k) => cmd.env("RESNETC_FAKE_CUDA_SKIP_LAUNCH", k.to_string()),
            None => cmd.env_remove("RESNETC_FAKE_CUDA_SKIP_LAUNCH"),
        };
        let _ = std::fs::remove_file(&self.y);
        let out = on_fake(&mut cmd, self.driver, Some(&self.kernels));
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        (out.status.code(), text, err)
    }

    /// The labels of the launches that run at batch 1.
    fn running(&self) -> Vec<String> {
        self.running_launches().map(|l| l.label.clone()).collect()
    }

    fn running_launches(&self) -> impl Iterator<Item = &Launch> {
        self.plan.launches.iter().filter(|l| l.variant(1).runs(1))
    }

    /// Whether running launch `i` is the last to write its part of a value
    /// (the whole value, or a concat's slice), where it is checked.
    fn completes(&self, i: usize) -> bool {
        let part = |l: &Launch| l.writes.as_ref().map(|w| (w.node, w.from));
        let running: Vec<_> = self.running_launches().collect();
        part(running[i]).is_some() && running[i + 1..].iter().all(|l| part(l) != part(running[i]))
    }

    /// With nothing skipped: one `ok` line per launch that completes a
    /// part, in order, and the output written.
    fn all_pass(&self) {
        let running = self.running();
        let checked: Vec<&str> = (0..running.len())
            .filter(|&i| self.completes(i))
            .map(|i| running[i].as_str())
            .collect();
        let (code, text, err) = self.run(None);
        assert_eq!(code, Some(0), "{text}{err}");
        let rows: Vec<&str> = text.lines().filter(|l| l.contains("  ok  ")).collect();
        assert_eq!(rows.len(), checked.len(), "{text}");
        for (row, label) in rows.iter().zip(&checked) {
            assert!(row.contains(label), "{row} is not {label}");
        }
        assert!(
            text.contains(&format!("all {} layers within", checked.len())),
            "{text}"
        );
        assert!(self.y.exists(), "the output of a run that matched");
    }

    /// Skipping running launch `skip`, the first layer that differs is
    /// running launch `named`, and the run fails without an output.
    fn names(&self, skip: usize, named: usize) {
        let running = self.running();
        let (code, text, err) = self.run(Some(skip));
        assert_eq!(code, Some(1), "skipping {}: {text}{err}", running[skip]);
        let first = text
            .lines()
            .find(|l| l.contains("DIFFERS"))
            .expect("a layer that differs");
        assert!(
            first.contains(&format!(" {} ", running[named])),
            "skipping {} was first seen at {first}",
            running[skip]
        );
        assert!(err.contains("differ from the interpreter"), "{err}");
        assert!(!self.y.exists(), "an output written by a failed check");
    }
}

/// `run --check-layers` on the fake driver: every layer matches, one line
/// each; with one launch made to do nothing, the first layer it names as
/// differing is that launch, or for a split GEMM's slices the sum that
/// completes them, and it exits 1 without writing the output.
#[test]
fn check_layers_names_the_launch_that_went_wrong() {
    let dir = tempfile::tempdir().expect("tempdir");
    let driver = dir.path();
    fake_driver(driver);
    let model = small_copy("resnet18", driver);
    let check = LayerCheck::new(&model, driver);
    check.all_pass();
    // An unsplit conv past the stem (at 32×32 and batch 1 the late ones
    // are all split), and the first GEMM whose K is split.
    let running = check.running();
    let conv = (1..running.len())
        .rev()
        .find(|&i| check.completes(i) && running[i].ends_with(" conv"))
        .expect("a conv that completes its value");
    assert!(conv > 1, "only the stem conv is unsplit");
    let sliced = (0..running.len())
        .find(|&i| running[i].ends_with(" conv") && !check.completes(i))
        .expect("a split conv at batch 1");
    assert!(running[sliced + 1].ends_with("(split-K sum)"));
    check.names(conv, conv);
    check.names(sliced, sliced + 1);
}

/// A concat that copies (the model input, and a value already placed in
/// it): each copy is checked on its own slice, so a broken first copy is
/// named, not the last copy into the same value.
#[test]
fn check_layers_names_a_broken_concat_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let driver = dir.path();
    fake_driver(driver);
    let model = driver.join("copies.res");
    std::fs::write(
        &model,
        r"model copies(x: f32[N, 3, 12, 12]) {
    let a = x |> c1: conv(8, k: 3, pad: 1) |> relu()
    let b = a |> c2: conv(8, k: 3, pad: 1)
    concat(x, a, b, a) |> c3: conv(4, k: 1)
}
",
    )
    .expect("write model");
    let check = LayerCheck::new(&model, driver);
    let running = check.running();
    let copies: Vec<usize> = (0..running.len())
        .filter(|&i| running[i].contains("(operand "))
        .collect();
    assert_eq!(copies.len(), 2, "{running:?}");
    assert!(running[copies[0]].ends_with("(operand 0)"), "{running:?}");
    assert!(running[copies[1]].ends_with("(operand 3)"), "{running:?}");
    assert!(copies.iter().all(|&i| check.completes(i)));
    check.all_pass();
    check.names(copies[0], copies[0]);
    check.names(copies[1], copies[1]);
}

/// PyTorch's weights and output through the Rust runtime, and `bench
/// --target cuda` (events, 120 replays of one captured graph) reporting.
/// Both plan for 114 multiprocessors (an H100 PCIe): `run` told so by
/// `--sms`, `bench` by the driver.
#[test]
fn fixture_and_bench_on_the_fake_driver() {
    let dir = tempfile::tempdir().expect("tempdir");
    fake_driver(dir.path());
    let model = example("cifar_resnet20");
    // sm_80 code on the fake's 9.0 (the other tests build for 9.0).
    let opts = CudaOptions {
        sms: Some(114),
        ..CudaOptions::for_gpu("sm_80")
    };
    let kernels = host_kernels(&model, dir.path(), &opts);
    let c = resnetc::front::compile_file(&model).expect("compiles");
    let mut g = c.graph.clone();
    passes::optimize(&mut g, None);
    let w = random_weights(&specs_of(&c.graph), 0);
    let plan = cuda::compile(&g, &w, &opts).expect("ptx").plan;
    assert_eq!(plan.sms, 114);
    // The SM count matters: the fake's own 132 would give other launches
    // (so kernels emulated for one would not run the other's plan).
    let plan_132 = cuda::compile(&g, &w, &on_the_fake("sm_80"))
        .expect("ptx")
        .plan;
    assert_ne!(
        plan.launches, plan_132.launches,
        "114 and 132 SMs plan alike"
    );

    let w = fixture("cifar_resnet20.safetensors");
    let weights = [
        "--weights",
        w.to_str().expect("utf-8"),
        "--gpu",
        "sm_80",
        "--sms",
        "114",
    ];
    let y = run_model(
        &model,
        "cuda",
        &weights,
        &fixture("cifar_resnet20.input.npy"),
        &dir.path().join("y.npy"),
        Some((dir.path(), &kernels)),
    );
    let expected = read_npy(&fixture("cifar_resnet20.output.npy")).expect("expected");
    assert_close(
        "cifar_resnet20 on the fake driver",
        &y,
        &expected,
        1e-4,
        1e-3,
    );

    let mut cmd = resnetc();
    cmd.arg("bench").arg(&model).args([
        "--target", "cuda", "--gpu", "sm_80", "--batch", "2", "--format", "json", "--layers",
    ]);
    cmd.env("RESNETC_FAKE_CUDA_SMS", "114");
    let out = on_fake(&mut cmd, dir.path(), Some(&kernels));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed:\n{stderr}");
    assert!(
        stderr.contains("fake CUDA driver")
            && stderr.contains("code for sm_80, planned for 114 multiprocessors"),
        "the device's name, the code's architecture and SM count: {stderr}"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json report");
    assert_eq!(report["runs"], 100, "{report}");
    assert_eq!(report["batch"], 2, "{report}");
    assert_eq!(report["gpu"], "sm_80", "{report}");
    assert_eq!(report["sms"], 114, "{report}");
    let median = report["median_ms"].as_f64().unwrap_or(0.0);
    assert!(median > 0.0, "{report}");
    let images = report["images_per_s"].as_f64().unwrap_or(0.0);
    assert!(
        (images - 2e3 / median).abs() <= 1e-6 * images,
        "images/s is batch / median (CUDA events): {report}"
    );
    // --layers: every launch that runs at batch 2, in plan order (the
    // split-K sums among them), each timed.
    let want: Vec<&str> = plan
        .launches
        .iter()
        .filter(|l| l.variant(2).runs(2))
        .map(|l| l.label.as_str())
        .collect();
    let layers = report["layers"].as_array().expect("layers");
    let got: Vec<&str> = layers
        .iter()
        .map(|l| l["layer"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(got, want, "the profiled launches");
    assert!(got.iter().any(|l| l.ends_with("(split-K sum)")), "{got:?}");
    assert!(
        layers
            .iter()
            .all(|l| l["median_ms"].as_f64().is_some_and(|m| m >= 0.0)),
        "{report}"
    );
}

/// On a GPU older than the one a model was built for (the fake reports
/// sm_75, a T4), `run --target cuda` stops before the driver loads the PTX
/// and names the `--gpu` to build with; built with it (GEMMs staging
/// their loads in registers: sm_75 has no `cp.async`), the model runs and
/// matches the interpreter, and so it does without `--gpu` (GPU 0's own
/// architecture). A GPU older than sm_70 is refused.
#[test]
fn an_older_gpu_names_the_architecture_to_build_for() {
    let dir = tempfile::tempdir().expect("tempdir");
    fake_driver(dir.path());
    let model = example("densenet_bc_small");
    let kernels = host_kernels(&model, dir.path(), &on_the_fake("sm_75"));
    let x = dir.path().join("x.npy");
    write_npy(&x, &random_tensor(&[3, 3, 32, 32], 5)).expect("write input");
    let y = dir.path().join("y.npy");
    let run_on = |gpu: Option<&str>, arch: &str, driver: &str| {
        let mut cmd = resnetc();
        cmd.arg("run")
            .arg(&model)
            .args(["--target", "cuda", "--random-weights", "3"])
            .args(gpu.map(|g| ["--gpu", g]).iter().flatten())
            .arg("--input")
            .arg(&x)
            .arg("--output")
            .arg(&y)
            .env("RESNETC_FAKE_CUDA_ARCH", arch)
            .env("RESNETC_FAKE_CUDA_DRIVER", driver);
        on_fake(&mut cmd, dir.path(), Some(&kernels))
    };
    let run = |gpu| run_on(Some(gpu), "75", "12080");
    let out = run("sm_80");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("built for sm_80") && stderr.contains("(sm_75)"),
        "{stderr}"
    );
    assert!(stderr.contains("--gpu sm_75"), "{stderr}");
    assert!(!stderr.contains("panicked") && !y.exists(), "{stderr}");
    let out = run("sm_75");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let got = read_npy(&y).expect("output");
    let weights = ["--random-weights", "3"];
    let expected = run_model(
        &model,
        "ref",
        &weights,
        &x,
        &dir.path().join("ref.npy"),
        None,
    );
    assert_close(
        "densenet_bc_small sm_75 on the fake",
        &got,
        &expected,
        1e-4,
        1e-3,
    );
    std::fs::remove_file(&y).expect("remove the output");
    // (A CUDA 11.8 driver knows sm_75's PTX 7.5; which architecture a
    // driver version allows is the unit test of `gpus::newest_runnable`.)
    let out = run_on(None, "75", "11080");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "without --gpu: {stderr}");
    assert!(stderr.contains("code for sm_75"), "{stderr}");
    let again = read_npy(&y).expect("output");
    assert_eq!(again.data, got.data, "without --gpu: sm_75's code");
    std::fs::remove_file(&y).expect("remove the output");
    // Too old a GPU, or a driver too old for any of resnetc's PTX.
    for (arch, driver, said) in [
        ("61", "12080", "GPU 0 is sm_61 with a CUDA 12.8 driver"),
        ("75", "11040", "GPU 0 is sm_75 with a CUDA 11.4 driver"),
    ] {
        let out = run_on(None, arch, driver);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(said) && stderr.contains("sm_70 (V100) or later"),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked") && !y.exists(), "{stderr}");
    }
}

/// A driver error is a diagnostic with the failing step and exit 1, not a
/// panic: here the module cannot be loaded (the fake has no host kernels).
#[test]
fn driver_errors_are_diagnostics() {
    let dir = tempfile::tempdir().expect("tempdir");
    fake_driver(dir.path());
    let x = dir.path().join("x.npy");
    write_npy(&x, &random_tensor(&[1, 3, 32, 32], 1)).expect("write input");
    let mut cmd = resnetc();
    cmd.arg("run")
        .arg(example("cifar_resnet20"))
        .args(["--target", "cuda", "--random-weights", "0", "--input"])
        .arg(&x)
        .arg("--output")
        .arg(dir.path().join("y.npy"));
    let out = on_fake(&mut cmd, dir.path(), None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("load the PTX"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!dir.path().join("y.npy").exists());

    // A PTX the JIT rejects: the JIT's own log is in the diagnostic (the
    // fake writes it only into cuModuleLoadDataEx's error log buffer).
    cmd.env("RESNETC_FAKE_CUDA_JIT_ERROR", JIT_SAYS);
    let out = on_fake(&mut cmd, dir.path(), None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("load the PTX") && stderr.contains("218"),
        "{stderr}"
    );
    assert!(stderr.contains(JIT_SAYS), "the JIT's log: {stderr}");
    assert!(!dir.path().join("y.npy").exists());
}

/// What the fake's JIT says when told to reject the PTX.
const JIT_SAYS: &str = "fake-jit-rejects-this-fma";

/// The C programs linked to the CUDA static library, on the fake driver,
/// through host memory (`demo`) and through their own device memory and
/// the default stream (`demo_device`): PyTorch's output at the fixture's
/// batch, and the interpreter's at batches 3 and 17.
#[test]
fn c_runtime_matches_pytorch_on_the_fake_driver() {
    let out = tempfile::tempdir().expect("tempdir");
    make_example("embed_cuda", out.path(), env!("CARGO_BIN_EXE_resnetc"));
    fake_driver(out.path());
    let model = example("cifar_resnet20");
    // `build` plans for sm_80's reference GPU (an A100's 108 SMs).
    let kernels = host_kernels(&model, out.path(), &CudaOptions::for_gpu("sm_80"));
    let demo = |program: &str, x: &Tensor, what: &str| -> Tensor {
        let input = out.path().join("in.f32");
        let bytes: Vec<u8> = x.data.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(&input, bytes).expect("write input");
        let output = out.path().join("out.f32");
        let mut cmd = Command::new(out.path().join(program));
        cmd.arg(&input).arg(&output).arg(x.shape[0].to_string());
        let run = on_fake(&mut cmd, out.path(), Some(&kernels));
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(run.status.success(), "{program} ({what}) failed:\n{stderr}");
        // Host memory: the packed batch in one copy each way; and the
        // caller's context restored: none for demo, which made none, its
        // own for demo_device.
        if program == "demo" {
            assert!(stderr.contains(ONE_COPY_EACH_WAY), "{what}: {stderr}");
            assert!(
                stderr.contains("no context current at exit"),
                "{what}: {stderr}"
            );
        } else {
            assert!(
                stderr.contains("a context current at exit"),
                "{what}: {stderr}"
            );
        }
        assert!(
            stderr.contains("0 cubin and 1 PTX modules loaded"),
            "{what}: {stderr}"
        );
        read_raw_floats(&output, &[x.shape[0], 10])
    };
    let x = read_npy(&fixture("cifar_resnet20.input.npy")).expect("input");
    let expected = read_npy(&fixture("cifar_resnet20.output.npy")).expect("expected");
    for program in ["demo", "demo_device"] {
        let y = demo(program, &x, "fixture");
        assert_close(
            &format!("{program} on the fake driver"),
            &y,
            &expected,
            1e-4,
            1e-3,
        );
    }

    // On a GPU older than the build's sm_80: -3 (the program's exit 3)
    // and the newest architecture to build for that runs there (none
    // before sm_70), before the PTX is loaded.
    for (arch, advice) in [
        ("75", "--gpu sm_75 ("),
        ("77", "--gpu sm_75 ("),
        ("61", "need sm_70 (V100) or later"),
    ] {
        let mut cmd = Command::new(out.path().join("demo"));
        let input = out.path().join("in.f32");
        cmd.arg(&input).arg(out.path().join("old.f32")).arg("1");
        cmd.env("RESNETC_FAKE_CUDA_ARCH", arch);
        let run = on_fake(&mut cmd, out.path(), Some(&kernels));
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(3), "{stderr}");
        let said = format!("built for sm_80, but GPU 0 is sm_{arch}");
        assert!(
            stderr.contains(&said) && stderr.contains(advice),
            "{arch}: {stderr}"
        );
        assert!(!out.path().join("old.f32").exists(), "{arch}: {stderr}");
    }

    // A PTX the JIT rejects: the driver's code and the JIT's log in
    // last_error (the program's stderr), exit 1 (-4).
    let mut cmd = Command::new(out.path().join("demo"));
    cmd.arg(out.path().join("in.f32"))
        .arg(out.path().join("jit.f32"))
        .arg("1");
    cmd.env("RESNETC_FAKE_CUDA_JIT_ERROR", JIT_SAYS);
    let run = on_fake(&mut cmd, out.path(), Some(&kernels));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("forward failed (-4)") && stderr.contains(", 218)"),
        "{stderr}"
    );
    assert!(stderr.contains(JIT_SAYS), "the JIT's log: {stderr}");

    // A capture that fails: -4 with the driver's code, and nothing of the
    // batch kept (the arena and its event freed; the weights stay loaded).
    let mut cmd = Command::new(out.path().join("demo"));
    cmd.arg(out.path().join("in.f32"))
        .arg(out.path().join("cap.f32"))
        .arg("1");
    cmd.env("RESNETC_FAKE_CUDA_BREAK_CAPTURE", "1");
    let run = on_fake(&mut cmd, out.path(), Some(&kernels));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cuStreamEndCapture failed") && stderr.contains(", 901)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("1 allocations and 0 events live at exit"),
        "{stderr}"
    );

    let c = compile_example("cifar_resnet20");
    let w = bind_weights(&c, &fixture("cifar_resnet20.safetensors"));
    // Batch 3 takes the variants tuned for batch 1 (K split in most
    // layers), batch 17 those for 16 (some split-K sums skipped).
    for batch in [3, 17] {
        let x = random_tensor(&[batch, 3, 32, 32], 5);
        let expected = resnetc::interp::run(&c.graph, &w, &x).expect("interpreter");
        for program in ["demo", "demo_device"] {
            let what = format!("{program} at batch {batch} on the fake driver");
            let y = demo(program, &x, &what);
            assert_close(&what, &y, &expected, 1e-4, 1e-3);
        }
    }
}

/// NVIDIA's ptxas as tests/cuda_backend.rs finds it (`RESNETC_PTXAS`, else
/// the PyPI wheel scripts/setup.sh installs); missing under CI, a failure.
fn ptxas() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RESNETC_PTXAS").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let found = std::fs::read_dir(root().join(".tools/py/lib"))
        .ok()
        .and_then(|dir| {
            dir.flatten()
                .map(|d| d.path().join("site-packages/nvidia/cuda_nvcc/bin/ptxas"))
                .find(|p| p.exists())
        });
    assert!(
        found.is_some() || std::env::var("CI").is_err(),
        "ptxas is missing under CI: scripts/setup.sh installs it"
    );
    found
}

/// With ptxas at build time, both runtimes load SASS (a cubin, which the
/// fake accepts only on a GPU of its exact architecture) instead of the
/// PTX on an sm_80 GPU, and still match PyTorch; on a later GPU (sm_86)
/// the static library falls back to the PTX.
#[test]
fn sass_is_loaded_on_its_own_architecture() {
    let Some(ptxas) = ptxas() else {
        eprintln!("skipped: ptxas not found (run scripts/setup.sh)");
        return;
    };
    let out = tempfile::tempdir().expect("tempdir");
    let make = Command::new("make")
        .args(["-s", "-C", "examples/embed_cuda"])
        .arg(format!("OUT={}", out.path().display()))
        .arg(format!("RESNETC={}", env!("CARGO_BIN_EXE_resnetc")))
        .arg("CC=gcc")
        .env("RESNETC_PTXAS", &ptxas)
        .current_dir(root())
        .output()
        .expect("make runs");
    assert!(
        make.status.success(),
        "{}",
        String::from_utf8_lossy(&make.stderr)
    );
    let header = std::fs::read_to_string(out.path().join("cifar_resnet20.h")).expect("header");
    assert!(header.contains("PTX and SASS for sm_80"), "{header}");
    fake_driver(out.path());
    let model = example("cifar_resnet20");
    // `build`'s plan: sm_80's reference GPU (108 SMs).
    let kernels = host_kernels(&model, out.path(), &CudaOptions::for_gpu("sm_80"));
    let x = read_npy(&fixture("cifar_resnet20.input.npy")).expect("input");
    let expected = read_npy(&fixture("cifar_resnet20.output.npy")).expect("expected");
    let input = out.path().join("in.f32");
    let bytes: Vec<u8> = x.data.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&input, bytes).expect("write input");
    let output = out.path().join("out.f32");
    for (arch, loaded) in [("80", "1 cubin and 0 PTX"), ("86", "0 cubin and 1 PTX")] {
        let _ = std::fs::remove_file(&output);
        let mut cmd = Command::new(out.path().join("demo"));
        cmd.arg(&input).arg(&output).arg(x.shape[0].to_string());
        cmd.env("RESNETC_FAKE_CUDA_ARCH", arch);
        let run = on_fake(&mut cmd, out.path(), Some(&kernels));
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(run.status.success(), "sm_{arch}: {stderr}");
        assert!(
            stderr.contains(&format!("{loaded} modules loaded")),
            "sm_{arch}: {stderr}"
        );
        let y = read_raw_floats(&output, &[x.shape[0], 10]);
        assert_close(&format!("demo on sm_{arch}"), &y, &expected, 1e-4, 1e-3);
    }

    // The Rust runtime: `run` on an sm_80 GPU assembles SASS for it.
    let w = fixture("cifar_resnet20.safetensors");
    let mut cmd = resnetc();
    cmd.arg("run")
        .arg(&model)
        .args([
            "--target",
            "cuda",
            "--gpu",
            "sm_80",
            "--sms",
            "108",
            "--weights",
        ])
        .arg(&w)
        .arg("--input")
        .arg(fixture("cifar_resnet20.input.npy"))
        .arg("--output")
        .arg(out.path().join("y.npy"))
        .env("RESNETC_PTXAS", &ptxas)
        .env("RESNETC_FAKE_CUDA_ARCH", "80");
    let run = on_fake(&mut cmd, out.path(), Some(&kernels));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(
        stderr.contains("1 cubin and 0 PTX modules loaded"),
        "{stderr}"
    );
    assert!(stderr.contains("(SASS for sm_80)"), "{stderr}");
    let y = read_npy(&out.path().join("y.npy")).expect("output");
    assert_close(
        "run with SASS on the fake driver",
        &y,
        &expected,
        1e-4,
        1e-3,
    );
}
