//! Portable static libraries: a default `resnetc build` holds the model for
//! x86-64-v4 (AVX-512), -v3 (AVX2, FMA) and -v2 (SSE4.2), and runs the best
//! level the CPU has. Each level, picked natively (the best), forced by
//! `RESNETC_CPU_LEVEL`, and under `qemu-x86_64 -cpu Nehalem` (v2) and
//! `-cpu Haswell` (v3), against the interpreter.

mod common;
use common::*;
use resnetc::tensor::Tensor;
use std::path::{Path, PathBuf};
use std::process::Command;

const RESNETC: &str = env!("CARGO_BIN_EXE_resnetc");

/// `qemu-x86_64`, which CI installs (scripts/setup.sh); elsewhere a test
/// without it skips its emulated runs, saying so.
fn qemu() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("qemu-x86_64"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("CI").is_err(),
            "CI needs qemu-x86_64 (Debian's qemu-user; scripts/setup.sh installs it)"
        );
        eprintln!("no qemu-x86_64: the emulated runs are skipped");
    }
    found
}

/// The best of `levels` this machine runs (the run-time check itself is
/// compared with LLVM's view of the host in `backend::cpu::levels`' tests).
fn best_level(levels: &[&'static str]) -> &'static str {
    use resnetc::backend::cpu::cpu_runs;
    use resnetc::backend::llvm::features::runtime_needs;
    levels
        .iter()
        .copied()
        .find(|l| cpu_runs(&runtime_needs(l).expect("checkable").join(",")))
        .expect("an x86-64-v2 machine at least")
}

/// A model's library built by `examples/embed_c` with `flags`, its C demo,
/// weights from `resnetc init` and a random input of `batch` images.
struct Demo {
    dir: tempfile::TempDir,
    weights: PathBuf,
    input: Tensor,
    model: String,
}

impl Demo {
    fn build(model: &str, size: Option<&str>, flags: &str, batch: usize, seed: u64) -> Demo {
        let dir = tempfile::tempdir().expect("tempdir");
        let weights = dir.path().join("w.safetensors");
        let init = Command::new(RESNETC)
            .args(["init", &format!("examples/{model}.res"), "--seed"])
            .arg(seed.to_string())
            .arg("-o")
            .arg(&weights)
            .current_dir(root())
            .output()
            .expect("init");
        assert!(
            init.status.success(),
            "{}",
            String::from_utf8_lossy(&init.stderr)
        );
        let size_flag = size
            .map(|s| format!(" --input-size {s}"))
            .unwrap_or_default();
        make_example_with(
            "embed_c",
            dir.path(),
            RESNETC,
            &[
                &format!("MODEL={model}"),
                &format!("WEIGHTS=--weights {}", weights.display()),
                &format!("FLAGS={flags}{size_flag}"),
            ],
        );
        let c = compiled(model, size);
        let mut shape = vec![batch];
        shape.extend(c.graph.input_shape());
        let input = random_tensor(&shape, seed);
        write_raw_floats(&dir.path().join("in.f32"), &input);
        Demo {
            dir,
            weights,
            input,
            model: model.to_string(),
        }
    }

    /// The demo's output and the level it reports, run with `level` forced
    /// (if any), under `qemu -cpu <cpu>` (if any).
    fn run(&self, level: Option<&str>, qemu: Option<(&Path, &str)>) -> (Tensor, String) {
        let demo = self.dir.path().join("demo");
        let mut cmd = match qemu {
            Some((q, cpu)) => {
                let mut c = Command::new(q);
                // (The fork check doubles an emulated run; it runs natively.)
                c.args(["-cpu", cpu]).arg(&demo).env("DEMO_NO_FORK", "1");
                c
            }
            None => Command::new(&demo),
        };
        let out = self.dir.path().join("out.f32");
        let batch = self.input.shape[0].to_string();
        cmd.arg(self.dir.path().join("in.f32"))
            .arg(&out)
            .args([batch.as_str(), "1", "2"]);
        if let Some(l) = level {
            cmd.env("RESNETC_CPU_LEVEL", l);
        }
        let o = cmd.output().expect("demo runs");
        let stdout = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(
            o.status.success(),
            "{} {level:?} {qemu:?}: {}{stdout}",
            self.model,
            String::from_utf8_lossy(&o.stderr)
        );
        let ran = stdout
            .lines()
            .find_map(|l| l.strip_prefix("level: "))
            .expect("the demo reports the level")
            .to_string();
        // Floats per image, whatever size the library was built at.
        let n: usize = std::fs::metadata(&out).expect("output").len() as usize / 4;
        let per: usize = n / self.input.shape[0];
        let y = read_raw_floats(&out, &[self.input.shape[0], per]);
        (y, ran)
    }
}

/// `model` compiled at `size` (HxW), or at its own.
fn compiled(model: &str, size: Option<&str>) -> resnetc::front::Compiled {
    let input_size = size.map(|s| {
        s.split('x')
            .map(|d| d.parse::<usize>().expect("a size"))
            .collect()
    });
    let opts = resnetc::front::Options {
        input_size,
        ..Default::default()
    };
    resnetc::front::compile_file_with(&example(model), &opts)
        .unwrap_or_else(|e| panic!("{model}: {}", e.render_plain()))
}

/// The interpreter's output of `model` (at `size`) on the demo's weights and
/// input, flattened per image.
fn reference(d: &Demo, size: Option<&str>) -> Tensor {
    let c = compiled(&d.model, size);
    let w = bind_weights(&c, &d.weights);
    let y = resnetc::interp::run(&c.graph, &w, &d.input).expect("interpreter");
    let per = y.data.len() / y.shape[0];
    Tensor::from_vec(&[y.shape[0], per], y.data)
}

/// cifar_resnet56 and resnet50 (224×224) from default-built libraries:
/// natively the best level this CPU runs, and each lower level when forced;
/// every one matches the interpreter. A level the CPU lacks, or a name the
/// library does not hold, is refused (-5), never a SIGILL.
#[test]
fn default_libraries_run_the_best_level_and_each_lower_one() {
    for (model, seed) in [("cifar_resnet56", 1), ("resnet50", 2)] {
        let d = Demo::build(model, None, "", 1, seed);
        let header =
            std::fs::read_to_string(d.dir.path().join(format!("{model}.h"))).expect("header");
        assert!(
            header.contains("_CPU_LEVELS \"skylake-avx512,x86-64-v4,x86-64-v3,x86-64-v2\""),
            "{header}"
        );
        let expected = reference(&d, None);
        let best = best_level(&resnetc::backend::cpu::levels::DEFAULT_LEVELS);
        let (y, ran) = d.run(None, None);
        assert_eq!(ran, best, "{model}");
        assert_close(&format!("{model} {best}"), &y, &expected, 1e-4, 1e-3);
        let v4 = resnetc::backend::llvm::features::check_host_runs("x86-64-v4").is_ok();
        let forced: &[&str] = if v4 {
            &["x86-64-v4", "x86-64-v3", "x86-64-v2"]
        } else {
            &["x86-64-v3", "x86-64-v2"]
        };
        for &level in forced {
            let (y, ran) = d.run(Some(level), None);
            assert_eq!(ran, level, "{model}");
            assert_close(&format!("{model} {level}"), &y, &expected, 1e-4, 1e-3);
        }
        let bogus = Command::new(d.dir.path().join("demo"))
            .arg(d.dir.path().join("in.f32"))
            .arg(d.dir.path().join("x.f32"))
            .arg("1")
            .env("RESNETC_CPU_LEVEL", "pentium-9000")
            .output()
            .expect("demo runs");
        assert_eq!(bogus.status.code(), Some(1), "an unknown level is refused");
    }
}

/// The same libraries on emulated CPUs without AVX-512: a Nehalem (SSE4.2)
/// runs x86-64-v2, a Haswell (AVX2, FMA) x86-64-v3. Emulated AVX2 is slow
/// (qemu 7.2: a Haswell runs resnet50 at 224×224 in minutes), so resnet50
/// runs at 32×32 here: the same layers and kernels' code paths.
#[test]
fn emulated_cpus_without_avx512_run_their_level() {
    let Some(q) = qemu() else {
        return;
    };
    for (model, size, seed) in [("cifar_resnet56", None, 3), ("resnet50", Some("32x32"), 4)] {
        let d = Demo::build(model, size, "", 1, seed);
        let expected = reference(&d, size);
        for (cpu, level) in [("Nehalem", "x86-64-v2"), ("Haswell", "x86-64-v3")] {
            let (y, ran) = d.run(None, Some((&q, cpu)));
            assert_eq!(ran, level, "{model} on {cpu}");
            assert_close(&format!("{model} on {cpu}"), &y, &expected, 1e-4, 1e-3);
        }
    }
}

/// A default bf16 library holds AMX tiles (where the CPU has them) and the
/// emulated path for every other level: each level's output matches the JIT
/// of the same level's code within 1e-4 (issue 31: a CPU without AMX or
/// AVX512-BF16 runs the emulated path and gives the same result).
#[test]
fn bf16_default_libraries_run_amx_or_the_emulated_path() {
    use resnetc::backend::cpu::{run_jit, CpuOptions};
    use resnetc::precision::Precision;
    let model = "cifar_resnet20";
    let d = Demo::build(model, None, "--precision bf16", 2, 5);
    let c = compiled(model, None);
    let w = bind_weights(&c, &d.weights);
    let mut opt = c.graph.clone();
    resnetc::passes::optimize(&mut opt, None);
    let jit = |cpu: &str, packed_for: Option<&str>| {
        let opts = CpuOptions {
            cpu: cpu.into(),
            precision: Precision::Bf16,
            packed_for: packed_for.map(String::from),
            ..Default::default()
        };
        let y = run_jit(&opt, &w, &d.input, &opts).expect("jit");
        let per = y.data.len() / y.shape[0];
        Tensor::from_vec(&[y.shape[0], per], y.data)
    };
    let amx = resnetc::backend::llvm::VectorIsa::of("native").amx_bf16
        && resnetc::backend::cpu::amx_permitted();
    let (y, ran) = d.run(None, None);
    if amx {
        assert_eq!(ran, "sapphirerapids");
        assert_close("bf16 AMX", &y, &jit("sapphirerapids", None), 1e-4, 1e-3);
    } else {
        assert_eq!(
            ran,
            best_level(&resnetc::backend::cpu::levels::DEFAULT_BF16_LEVELS[1..])
        );
        if ran == "znver4" {
            // Zen 4 and 5: the AVX512-BF16 pair kernels.
            assert_close("bf16 pairs", &y, &jit("znver4", None), 1e-4, 1e-3);
        }
    }
    let v3 = jit("x86-64-v3", Some("x86-64-v4"));
    let (y, ran) = d.run(Some("x86-64-v3"), None);
    assert_eq!(ran, "x86-64-v3");
    assert_close("bf16 x86-64-v3", &y, &v3, 1e-4, 1e-3);
    if let Some(q) = qemu() {
        let (y, ran) = d.run(None, Some((&q, "Haswell")));
        assert_eq!(ran, "x86-64-v3");
        assert_close("bf16 on a Haswell", &y, &v3, 1e-4, 1e-3);
    }
}
