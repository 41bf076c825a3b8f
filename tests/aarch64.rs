//! AArch64 static libraries (`build --triple aarch64-linux-gnu`) checked
//! without ARM hardware: Debian's cross gcc links the C demo
//! (examples/embed_c/main.c) against each, `qemu-aarch64` runs it, and the
//! interpreter is the oracle. Where the tools are missing these tests skip
//! with a note, except in CI (`CI=true`), where scripts/setup.sh installs
//! them and their absence fails.

mod common;
use common::*;
use resnetc::tensor::Tensor;
use resnetc::weights::{random_weights, save_safetensors, specs_of};
use std::path::{Path, PathBuf};
use std::process::Command;

const CC: &str = "aarch64-linux-gnu-gcc";
const QEMU: &str = "qemu-aarch64";

/// Whether `tool --version` runs.
fn present(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether the cross tools are here; in CI their absence is a failure.
fn cross_tools(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !present(t)).collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "{} not installed (scripts/setup.sh installs gcc-aarch64-linux-gnu, libc6-dev-arm64-cross and qemu-user)",
        missing.join(" and ")
    );
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
    eprintln!("note: skipped: {msg}");
    false
}

/// `resnetc build` for AArch64 of `model` into `dir`, then the C demo
/// linked statically against the library with the cross gcc. The library
/// exports exactly its header's functions and needs no compiler runtime
/// helpers (libgcc's outlined atomics, `__aarch64_*`): libc, libm and
/// pthreads alone, as on x86-64.
fn build_demo(model: &Path, sym: &str, weights: &Path, extra: &[&str], dir: &Path) -> PathBuf {
    let o = Command::new(env!("CARGO_BIN_EXE_resnetc"))
        .arg("build")
        .arg(model)
        .arg("--weights")
        .arg(weights)
        .args(["--triple", "aarch64-linux-gnu", "--quiet", "-o"])
        .arg(dir)
        .args(extra)
        .current_dir(root())
        .output()
        .expect("resnetc runs");
    assert!(
        o.status.success(),
        "{sym}: build: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let lib = dir.join(format!("lib{sym}.a"));
    let header = dir.join(format!("{sym}.h"));
    assert_eq!(exported_symbols(&lib), header_functions(&header), "{sym}");
    let helpers: Vec<String> = undefined_symbols(&lib)
        .into_iter()
        .filter(|s| s.starts_with("__"))
        .collect();
    assert!(helpers.is_empty(), "{sym} needs {helpers:?}");
    let up = sym.to_uppercase();
    let demo = dir.join("demo");
    let cc = Command::new(CC)
        .args(["-O2", "-Wall", "-static", "-I"])
        .arg(dir)
        .arg(format!("-DMODEL_HEADER=\"{sym}.h\""))
        .arg(format!("-DFORWARD={sym}_forward"))
        .arg(format!("-DSET_THREADS={sym}_set_num_threads"))
        .arg(format!("-DFORWARD_WITH_ARENA={sym}_forward_with_arena"))
        .arg(format!("-DARENA_BYTES={up}_ARENA_BYTES_PER_IMAGE"))
        .arg(format!("-DINPUT_SIZE={up}_INPUT_SIZE"))
        .arg(format!("-DOUTPUT_SIZE={up}_OUTPUT_SIZE"))
        .arg("examples/embed_c/main.c")
        .arg(dir.join(format!("lib{sym}.a")))
        .args(["-lm", "-lpthread", "-o"])
        .arg(&demo)
        .current_dir(root())
        .output()
        .expect("cross gcc runs");
    assert!(
        cc.status.success(),
        "{sym}: link: {}",
        String::from_utf8_lossy(&cc.stderr)
    );
    demo
}

/// Runs `demo` under qemu-aarch64 on `x` (2 threads in the model, one
/// caller; the demo also checks its arena entry point and a forked child).
/// `G_SLICE=always-malloc`: qemu 7.2's child of a multi-threaded program
/// can deadlock in GLib's slice allocator, whose lock another thread held
/// at the fork (qemu's bug, not the program's).
fn run_demo(demo: &Path, x: &Tensor, out_shape: &[usize], dir: &Path) -> Tensor {
    let input = dir.join("in.f32");
    write_raw_floats(&input, x);
    let output = dir.join("out.f32");
    let run = Command::new(QEMU)
        .env("G_SLICE", "always-malloc")
        .arg(demo)
        .arg(&input)
        .arg(&output)
        .args([&x.shape[0].to_string(), "1", "2"])
        .output()
        .expect("qemu-aarch64 runs");
    assert!(
        run.status.success(),
        "{}: {}",
        demo.display(),
        String::from_utf8_lossy(&run.stderr)
    );
    read_raw_floats(&output, out_shape)
}

/// The input size an example is checked at, where not its own: qemu
/// emulates NEON arithmetic at a few hundred MFLOP/s, so inputs larger
/// than 64x64 are 32x32, as in tests/cpu_backend.rs (the same layers and
/// kernel code paths), U-Net's 256x256 is 16x16 (its smallest: four
/// poolings), and CIFAR ResNet-1202's 32x32 (2.7 GMACs an image, over a
/// minute under qemu) is 8x8.
fn test_size(name: &str, own: &[usize]) -> Option<usize> {
    match name {
        "cifar_resnet1202" => Some(8),
        "unet" => Some(16),
        _ => own.iter().skip(1).any(|&d| d > 64).then_some(32),
    }
}

/// One example: its AArch64 library under qemu against the interpreter,
/// on `batch` images.
fn check_example(i: usize, name: &str, extra: &[&str], batch: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let full = compile_example(name);
    let size = test_size(name, full.graph.input_shape());
    let c = match size {
        Some(s) => {
            let opts = resnetc::front::Options {
                input_size: Some(vec![s, s]),
                ..Default::default()
            };
            resnetc::front::compile_file_with(&example(name), &opts)
                .unwrap_or_else(|e| panic!("{name}: {}", e.render_plain()))
        }
        None => full,
    };
    let size_arg = size.map(|s| format!("{s}x{s}"));
    let mut args: Vec<&str> = extra.to_vec();
    if let Some(s) = &size_arg {
        args.extend(["--input-size", s]);
    }
    let w = tame_residuals(
        &c.graph,
        random_weights(&specs_of(&c.graph), 700 + i as u64),
    );
    let wfile = dir.path().join("w.safetensors");
    save_safetensors(&wfile, &w).expect("save weights");
    let sym = resnetc::backend::shared::symbol(&c.graph.name);
    let demo = build_demo(&example(name), &sym, &wfile, &args, dir.path());
    let mut shape = vec![batch];
    shape.extend(c.graph.input_shape());
    let x = random_tensor(&shape, 40 + i as u64);
    let expected = resnetc::interp::run(&c.graph, &w, &x).expect("interpreter");
    let y = run_demo(&demo, &x, &expected.shape, dir.path());
    assert_close(
        &format!("{name} on aarch64 {extra:?}"),
        &y,
        &expected,
        1e-4,
        1e-3,
    );
}

/// Every example, built for `generic` AArch64 (CIFAR ResNet-20 also for
/// `neoverse-v1`, whose SVE LLVM may use outside the NEON kernels), run
/// by qemu-aarch64 from the C demo on 2 threads (batch 1; CIFAR ResNet-20
/// batch 2), matches the interpreter within 1e-4 (max |diff| / max |ref|;
/// at batch 2 also 1e-3 batch-centred). Two examples at a time.
#[test]
fn every_example_on_aarch64_matches_the_interpreter() {
    if !cross_tools(&[CC, QEMU]) {
        return;
    }
    let t0 = std::time::Instant::now();
    let mut jobs: Vec<(usize, String, Vec<&str>, usize)> = example_names()
        .into_iter()
        .enumerate()
        .map(|(i, n)| {
            let batch = if n == "cifar_resnet20" { 2 } else { 1 };
            (i, n, vec![], batch)
        })
        .collect();
    // The slowest first, so that two threads finish together.
    jobs.sort_by_key(|j| !["cifar_resnet110", "unet", "cifar_resnet1202"].contains(&j.1.as_str()));
    jobs.push((99, "cifar_resnet20".into(), vec!["--cpu", "neoverse-v1"], 2));
    let next = std::sync::Mutex::new(jobs.into_iter());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let job = next.lock().expect("queue").next();
                let Some((i, name, extra, batch)) = job else {
                    break;
                };
                let t = std::time::Instant::now();
                check_example(i, &name, &extra, batch);
                eprintln!("{name} {extra:?}: {:.1} s", t.elapsed().as_secs_f64());
            });
        }
    });
    eprintln!("all: {:.1} s", t0.elapsed().as_secs_f64());
}

/// runtime/parallel.aarch64.s is what scripts/gen_runtime_asm.sh makes of
/// runtime/parallel.c now: it cannot go stale where the cross gcc is.
#[test]
fn aarch64_runtime_assembly_is_current() {
    if !cross_tools(&[CC]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let fresh = dir.path().join("parallel.aarch64.s");
    let o = Command::new("bash")
        .arg("scripts/gen_runtime_asm.sh")
        .arg(&fresh)
        .current_dir(root())
        .output()
        .expect("bash runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let checked_in =
        std::fs::read_to_string(root().join("runtime/parallel.aarch64.s")).expect("checked in");
    assert!(
        std::fs::read_to_string(&fresh).expect("generated") == checked_in,
        "runtime/parallel.aarch64.s is stale: run scripts/gen_runtime_asm.sh and commit it"
    );
}

/// `--precision bf16` for AArch64: no AMX, so the emulated path (the fp32
/// NEON kernels on operands rounded to bfloat16). Its library under qemu
/// gives what the x86-64 emulated path gives through the JIT (the same
/// roundings; the sums in another order) within 1e-4, says bf16 in its
/// header, and keeps PyTorch's fp32 top-1.
#[test]
fn bf16_library_matches_the_x86_emulated_path() {
    use resnetc::backend::cpu::{run_jit, CpuOptions};
    use resnetc::precision::Precision;
    if !cross_tools(&[CC, QEMU]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (name, sym) = ("cifar_resnet20", "cifar_resnet20");
    let weights = fixture("cifar_resnet20.safetensors");
    let demo = build_demo(
        &example(name),
        sym,
        &weights,
        &["--precision", "bf16"],
        dir.path(),
    );
    let header = std::fs::read_to_string(dir.path().join("cifar_resnet20.h")).expect("header");
    assert!(header.contains("#define CIFAR_RESNET20_PRECISION \"bf16\""));
    assert!(header.contains("fp32 vector units"), "{header}");
    let x = resnetc::weights::read_npy(&fixture("cifar_resnet20.input.npy")).expect("input");
    let torch = resnetc::weights::read_npy(&fixture("cifar_resnet20.output.npy")).expect("output");
    let y = run_demo(&demo, &x, &torch.shape, dir.path());
    let c = compile_example(name);
    let w = bind_weights(&c, &weights);
    let mut g = c.graph.clone();
    resnetc::passes::optimize(&mut g, None);
    let opts = CpuOptions {
        cpu: "x86-64-v3".into(),
        precision: Precision::Bf16,
        ..Default::default()
    };
    let jit = run_jit(&g, &w, &x, &opts).expect("jit");
    assert_close("bf16 on aarch64 vs x86-64-v3", &y, &jit, 1e-4, 1e-3);
    let classes = torch.shape[1];
    let top = |v: &[f32]| {
        (0..v.len())
            .max_by(|&i, &j| v[i].total_cmp(&v[j]))
            .unwrap_or(0)
    };
    for (a, b) in y.data.chunks(classes).zip(torch.data.chunks(classes)) {
        assert_eq!(top(a), top(b), "bf16 changed a top-1 class");
    }
}

/// `build --input-size A --input-size B` for AArch64: one library (the
/// size dispatcher an AArch64 object too), both sizes served from C
/// (examples/embed_c/sizes.c) under qemu, each equal to the interpreter at
/// its size; a size not held is refused.
#[test]
fn a_two_size_library_runs_on_aarch64() {
    if !cross_tools(&[CC, QEMU]) {
        return;
    }
    let out = tempfile::tempdir().expect("tempdir");
    let sizes = [[16, 16], [32, 48]];
    let o = Command::new(env!("CARGO_BIN_EXE_resnetc"))
        .args(["build", "examples/unet_small.res", "--random-weights", "4"])
        .args(["--input-size", "16x16", "--input-size", "32x48"])
        .args(["--triple", "aarch64-linux-gnu", "--quiet", "-o"])
        .arg(out.path())
        .current_dir(root())
        .output()
        .expect("resnetc runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let demo = link_sizes_demo(CC, &["-static"], out.path(), "unet_small");
    let (mut inputs, mut expected) = (Vec::new(), Vec::new());
    for (i, [h, w]) in sizes.into_iter().enumerate() {
        let opts = resnetc::front::Options {
            input_size: Some(vec![h, w]),
            ..Default::default()
        };
        let c = resnetc::front::compile_file_with(&example("unet_small"), &opts)
            .unwrap_or_else(|e| panic!("{}", e.render_plain()));
        let wts = random_weights(&specs_of(&c.graph), 4);
        let x = random_tensor(&[1, 3, h, w], i as u64);
        expected.push(resnetc::interp::run(&c.graph, &wts, &x).expect("interpreter"));
        inputs.push(x);
    }
    let got = run_sizes_demo(Some(QEMU), &demo, out.path(), &inputs, &expected);
    for (i, (y, e)) in got.iter().zip(&expected).enumerate() {
        assert_close(&format!("aarch64, size {i} from C"), y, e, 1e-4, 1e-3);
    }
}
