//! The x86-64 back end against the oracles: the interpreter on every example
//! (batch 1 and 3), PyTorch on the fixtures, and a C program linked to the
//! static library, from one thread and from two at once.

mod common;
use common::*;
use resnetc::backend::cpu::{run_jit, ConvAlgo, ConvKernel, CpuOptions};
use resnetc::ir::Graph;
use resnetc::passes;
use resnetc::weights::{random_weights, read_npy, specs_of};
use std::path::Path;
use std::process::Command;

fn optimized(g: &Graph) -> Graph {
    let mut o = g.clone();
    passes::optimize(&mut o, None);
    o
}

/// Every example, CPU vs interpreter, batch 1 and 3 with the tilings and
/// algorithms the cost model picks, batch 2 with each conv tiling forced on
/// every conv (so both direct kernels meet every conv shape of the
/// examples) and Winograd F(2×2) on every eligible one, and batch 3 with
/// F(4×4) on every eligible one (its error is the largest: this is the
/// test that fails if it drifts past the 1e-4 bound).
/// Batch 3 is compiled for AVX2 (8-lane vectors, 16 registers), the others
/// for the host (16 lanes and 32 registers where it has AVX-512), so both
/// vector widths meet every example.
/// Inputs larger than 64x64 are compiled at 32x32 (same layers, names and
/// kernels' code paths) to keep the suite fast; `resnet18_full_size`
/// covers 224x224.
#[test]
fn every_example_matches_the_interpreter() {
    use ConvAlgo::{Auto as A, Direct, Winograd, Winograd2};
    use ConvKernel::{Channels, Pixels};
    type Convs = &'static [(ConvKernel, ConvAlgo)];
    let runs: [(usize, &str, Convs); 3] = [
        (1, "native", &[(ConvKernel::Auto, A)]),
        (
            3,
            "x86-64-v3",
            &[(ConvKernel::Auto, A), (ConvKernel::Auto, Winograd)],
        ),
        (
            2,
            "native",
            &[
                (Pixels, Direct),
                (Channels, Direct),
                (ConvKernel::Auto, Winograd2),
            ],
        ),
    ];
    for (i, (name, c)) in examples_small().into_iter().enumerate() {
        let w = tame_residuals(
            &c.graph,
            random_weights(&specs_of(&c.graph), 200 + i as u64),
        );
        let opt = optimized(&c.graph);
        for (batch, cpu, convs) in runs {
            let mut shape = vec![batch];
            shape.extend(c.graph.input_shape());
            let x = random_tensor(&shape, 31 * i as u64 + batch as u64);
            let reference = resnetc::interp::run(&c.graph, &w, &x).expect("interpreter");
            for &(conv, algo) in convs {
                let opts = CpuOptions {
                    algo,
                    conv,
                    cpu: cpu.into(),
                    tuning: None,
                    ..Default::default()
                };
                let y = run_jit(&opt, &w, &x, &opts).expect("cpu");
                let what = format!("{name} batch {batch} {cpu} {conv:?} {algo:?}");
                assert_close(&what, &y, &reference, 1e-4, 1e-3);
            }
        }
    }
}

/// Winograd at its edges, F(4×4) and F(2×2), 16 and 8 lanes, against the
/// interpreter: sizes that are no multiple of the tile (13×11, 6×5, 3×3
/// and 2×2 outputs), padding 0, 1 and 2, output channels that leave a
/// partial register panel (20, 3), three input channels, a BN-ReLU prologue
/// (staged with the padding), a bias, a residual add and ReLU in the
/// epilogue, and outputs written into a concat in place; batch 3.
#[test]
fn winograd_edges_match_the_interpreter() {
    let text = r#"
model wino(x: f32[N, 3, 13, 11]) {
    let a = x |> c1: conv(20, k: 3, pad: 1, bias: true) |> relu()
    let b = relu((a |> c2: conv(20, k: 3, pad: 1)) + a)
    let c = b |> bn: batchnorm() |> relu() |> c3: conv(24, k: 3, pad: 2)
    let d = concat(c |> c4: conv(8, k: 3), c |> c5: conv(3, k: 3, bias: true))
    let e = d |> maxpool(k: 2, stride: 2) |> c6: conv(32, k: 3, pad: 1)
    e |> c7: conv(16, k: 3) |> c8: conv(16, k: 3, pad: 1)
}
"#;
    let c = resnetc::front::compile_source("wino.res", text, None)
        .unwrap_or_else(|e| panic!("{}", e.render_plain()));
    let w = random_weights(&specs_of(&c.graph), 17);
    let x = random_tensor(&[3, 3, 13, 11], 17);
    let reference = resnetc::interp::run(&c.graph, &w, &x).expect("interpreter");
    let opt = optimized(&c.graph);
    for cpu in ["native", "x86-64-v3"] {
        for algo in [ConvAlgo::Winograd, ConvAlgo::Winograd2] {
            let opts = CpuOptions {
                algo,
                cpu: cpu.into(),
                ..CpuOptions::default()
            };
            let y = run_jit(&opt, &w, &x, &opts).expect("cpu");
            assert_close(&format!("wino {cpu} {algo:?}"), &y, &reference, 1e-4, 1e-3);
        }
    }
}

/// The outputs do not depend on the thread count: each output element is
/// computed by one task with the same arithmetic.
#[test]
fn thread_count_does_not_change_the_numbers() {
    let c = compile_example("densenet_bc_small");
    let w = random_weights(&specs_of(&c.graph), 9);
    let x = random_tensor(&[3, 3, 32, 32], 9);
    let opt = optimized(&c.graph);
    resnetc::backend::cpu::set_num_threads(1);
    let one = run_jit(&opt, &w, &x, &CpuOptions::default()).expect("cpu");
    resnetc::backend::cpu::set_num_threads(2);
    let two = run_jit(&opt, &w, &x, &CpuOptions::default()).expect("cpu");
    assert_eq!(resnetc::backend::cpu::num_threads(), 2);
    assert_eq!(one, two);
}

#[test]
fn resnet18_full_size() {
    let c = compile_example("resnet18");
    let w = random_weights(&specs_of(&c.graph), 5);
    let x = random_tensor(&[1, 3, 224, 224], 5);
    let reference = resnetc::interp::run(&c.graph, &w, &x).expect("interpreter");
    let opt = optimized(&c.graph);
    for algo in [ConvAlgo::Auto, ConvAlgo::Winograd] {
        let opts = CpuOptions {
            algo,
            ..CpuOptions::default()
        };
        let y = run_jit(&opt, &w, &x, &opts).expect("cpu");
        assert_close(
            &format!("resnet18 224x224 {algo:?}"),
            &y,
            &reference,
            1e-4,
            1e-3,
        );
    }
}

#[test]
fn fixtures_match_pytorch() {
    for name in [
        "cifar_resnet20",
        "cifar_plain20",
        "unet_small",
        "densenet_bc_small",
    ] {
        for dir in ["", "alt/"] {
            let c = compile_example(name);
            let w = bind_weights(&c, &fixture(&format!("{dir}{name}.safetensors")));
            let x = read_npy(&fixture(&format!("{dir}{name}.input.npy"))).expect("input");
            let e = read_npy(&fixture(&format!("{dir}{name}.output.npy"))).expect("output");
            let y = run_jit(&optimized(&c.graph), &w, &x, &CpuOptions::default()).expect("cpu");
            assert_close(&format!("{dir}{name}"), &y, &e, 1e-4, 1e-3);
        }
    }
}

#[test]
fn portable_cpu_choices_work_and_unknown_ones_are_refused() {
    let c = compile_example("cifar_resnet20");
    let w = bind_weights(&c, &fixture("cifar_resnet20.safetensors"));
    let x = read_npy(&fixture("cifar_resnet20.input.npy")).expect("input");
    let e = read_npy(&fixture("cifar_resnet20.output.npy")).expect("output");
    let opt = optimized(&c.graph);
    for cpu in ["x86-64", "x86-64-v3"] {
        let y = run_jit(
            &opt,
            &w,
            &x,
            &CpuOptions {
                cpu: cpu.into(),
                ..CpuOptions::default()
            },
        )
        .expect("cpu");
        assert_close(cpu, &y, &e, 1e-4, 1e-3);
    }
    let err = run_jit(
        &opt,
        &w,
        &x,
        &CpuOptions {
            cpu: "pentium-9000".into(),
            ..CpuOptions::default()
        },
    )
    .expect_err("refused");
    assert!(err.to_string().contains("unknown CPU"), "{err}");
}

/// A library caller's mistakes are their own errors, not "a bug in
/// resnetc": an input of the wrong shape, a graph that skipped the passes.
#[test]
fn caller_mistakes_are_not_internal_errors() {
    use resnetc::backend::llvm::LlvmError;
    let c = compile_example("cifar_resnet20");
    let w = bind_weights(&c, &fixture("cifar_resnet20.safetensors"));
    let opt = optimized(&c.graph);
    let wrong = resnetc::tensor::Tensor::zeros(&[1, 3, 16, 16]);
    let err = run_jit(&opt, &w, &wrong, &CpuOptions::default()).expect_err("refused");
    assert!(matches!(err, LlvmError::Input { .. }), "{err:?}");
    let x = read_npy(&fixture("cifar_resnet20.input.npy")).expect("input");
    let err = run_jit(&c.graph, &w, &x, &CpuOptions::default()).expect_err("refused");
    assert!(matches!(err, LlvmError::Unplanned), "{err:?}");
}

fn raw_floats(path: &Path) -> Vec<u8> {
    let t = read_npy(path).expect("npy");
    t.data.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// `resnetc build` → libcifar_resnet20.a + header → gcc → run: PyTorch's
/// numbers, from one thread and from two calling at once.
#[test]
fn static_library_links_into_a_c_program() {
    let out = tempfile::tempdir().expect("tempdir");
    let resnetc = env!("CARGO_BIN_EXE_resnetc");
    let lib = out.path().join("libcifar_resnet20.a");
    // The Makefile rebuilds when WEIGHTS or the weights file changes, and
    // only then: a seed, then a file of other weights (a new WEIGHTS), then
    // PyTorch's weights copied over that file, which the numbers below
    // are compared with.
    make_example_with(
        "embed_c",
        out.path(),
        resnetc,
        &["WEIGHTS=--random-weights 5"],
    );
    let seeded = std::fs::read(&lib).expect("library");
    let w = out.path().join("w.safetensors");
    let init = Command::new(resnetc)
        .args(["init", "examples/cifar_resnet20.res", "--seed", "3", "-o"])
        .arg(&w)
        .current_dir(root())
        .output()
        .expect("init");
    assert!(init.status.success());
    let from_file = format!("WEIGHTS=--weights {}", w.display());
    make_example_with("embed_c", out.path(), resnetc, &[&from_file]);
    assert_ne!(
        std::fs::read(&lib).expect("library"),
        seeded,
        "WEIGHTS changed"
    );
    std::fs::copy(fixture("cifar_resnet20.safetensors"), &w).expect("copy weights");
    make_example_with("embed_c", out.path(), resnetc, &[&from_file]);
    // The library exports what its header declares, nothing else (the
    // thread pool inside, its symbols local).
    let declared = header_functions(&out.path().join("cifar_resnet20.h"));
    assert_eq!(declared.len(), 4, "{declared:?}");
    assert_eq!(exported_symbols(&lib), declared);
    let built = std::fs::metadata(&lib)
        .and_then(|m| m.modified())
        .expect("mtime");
    make_example_with("embed_c", out.path(), resnetc, &[&from_file]);
    let again = std::fs::metadata(&lib)
        .and_then(|m| m.modified())
        .expect("mtime");
    assert_eq!(built, again, "nothing changed, yet the library was rebuilt");
    // The library needs nothing but libc, libm and pthreads: every symbol
    // it uses and does not define itself is one of theirs.
    for sym in undefined_symbols(&out.path().join("libcifar_resnet20.a")) {
        assert!(
            [
                "malloc",
                "free",
                "memset",
                "memcpy",
                "memmove",
                "expf",
                "exp",
                "sysconf",
                "sched_getaffinity",
                "sched_yield",
                // The default thread count reads the cgroup CPU limit.
                "fopen",
                "fgets",
                "fclose",
                "snprintf",
                "strchr",
                "strrchr",
                "strcmp",
                "strncmp",
                "strcspn",
                "strlen",
                "strtok_r",
                "strstr",
                "pthread_mutex_lock",
                "pthread_mutex_unlock",
                "pthread_cond_wait",
                "pthread_cond_signal",
                "pthread_cond_broadcast",
                "pthread_create",
                "pthread_attr_init",
                "pthread_attr_destroy",
                "pthread_attr_setdetachstate",
                "pthread_atfork",
                "pthread_once",
                "clock_gettime",
                // The AMX permission request (arch_prctl), asked only by
                // bf16 code for AMX CPUs.
                "syscall",
                // The pick of a multi-level library's level
                // (RESNETC_CPU_LEVEL).
                "getenv",
                "memcmp",
            ]
            .contains(&sym.as_str()),
            "unexpected dependency `{sym}`"
        );
    }
    let input = out.path().join("in.f32");
    std::fs::write(&input, raw_floats(&fixture("cifar_resnet20.input.npy"))).expect("write input");
    let expected = read_npy(&fixture("cifar_resnet20.output.npy")).expect("expected");
    // (threads calling forward at once, threads the model uses)
    for (callers, threads) in [("1", "1"), ("1", "2"), ("2", "2")] {
        let output = out.path().join(format!("out{callers}{threads}.f32"));
        let run = Command::new(out.path().join("demo"))
            .arg(&input)
            .arg(&output)
            .args(["2", callers, threads])
            .output()
            .expect("demo runs");
        assert!(
            run.status.success(),
            "demo failed: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let y = read_raw_floats(&output, &expected.shape);
        assert_close(
            &format!("C program, {threads} thread(s)"),
            &y,
            &expected,
            1e-4,
            1e-3,
        );
    }
}

/// The C runtimes embedded in static libraries (the thread pool, the CUDA
/// driver loader) call only plain libc names even where the compiler
/// fortifies by default (Ubuntu's gcc: `_FORTIFY_SOURCE=2`, which turns
/// `snprintf` into `__snprintf_chk`, a name musl lacks).
#[test]
fn runtimes_call_no_fortified_libc_names() {
    let out = tempfile::tempdir().expect("tempdir");
    for src in ["runtime/parallel.c", "runtime/cuda_rt.c"] {
        let obj = out.path().join("rt.o");
        let cc = Command::new("gcc")
            .args(["-O2", "-D_FORTIFY_SOURCE=2", "-fPIC", "-c", src, "-o"])
            .arg(&obj)
            .current_dir(root())
            .output()
            .expect("gcc runs");
        assert!(
            cc.status.success(),
            "{}",
            String::from_utf8_lossy(&cc.stderr)
        );
        let bad: Vec<String> = undefined_symbols(&obj)
            .into_iter()
            .filter(|s| s.ends_with("_chk") || s.starts_with("__isoc"))
            .collect();
        assert!(bad.is_empty(), "{src} calls {bad:?}");
    }
}

/// Ops that read one value in two slots (`a + a`, a residual that is also
/// the conv's input, `concat(x, x)`) next to same-shaped ops that do not:
/// kernel sharing must not mix them up (found in review).
#[test]
fn aliased_operands_do_not_share_kernels_wrongly() {
    let text = r#"
model aliasing(x: f32[N, 8, 6, 6]) {
    let a = x |> c0: conv(8, k: 3, pad: 1)
    let s = a + a
    let t = s + a
    let b = (t |> c1: conv(8, k: 3, pad: 1)) + x
    let c = (b |> c2: conv(8, k: 3, pad: 1)) + x
    let d = (c |> c3: conv(8, k: 3, pad: 1)) + c
    let u = concat(x, x)
    concat(u |> c4: conv(8, k: 1), d) |> c5: conv(4, k: 1)
}
"#;
    let c = resnetc::front::compile_source("aliasing.res", text, None)
        .unwrap_or_else(|e| panic!("{}", e.render_plain()));
    let w = random_weights(&specs_of(&c.graph), 4);
    let x = random_tensor(&[2, 8, 6, 6], 4);
    let reference = resnetc::interp::run(&c.graph, &w, &x).expect("interpreter");
    let y = run_jit(&optimized(&c.graph), &w, &x, &CpuOptions::default()).expect("cpu");
    assert_close("aliasing", &y, &reference, 1e-4, 1e-3);
}

/// Transposed convs run as channel tiles over row phases: strides 1-3,
/// padding, output padding, dilation, groups, odd widths (ragged strips),
/// a BatchNorm+ReLU after a concat (an op of its own: transposed convs
/// take no prologue), a residual add and a BN folded into the output
/// channels, all against the interpreter; in
/// bf16 each layer against the bf16 interpreter, emulated and (where the
/// host has AVX512-BF16) on the pair kernels, an odd channel count among
/// the inputs (the pair's second half zero).
#[test]
fn transposed_convs_match_the_interpreter() {
    let text = r#"
model transposed(x: f32[N, 5, 7, 9]) {
    let a = x |> t0: conv_transpose(16, k: 2, stride: 2, bias: true) |> relu()
    let b = a |> t1: conv_transpose(8, k: 3, stride: 2, pad: 1, output_padding: 1)
    let c = b |> t2: conv_transpose(8, k: 3, pad: 1, dilation: 2, groups: 2, bias: true)
    let d = (c |> t3: conv_transpose(8, k: 3, pad: 1, bias: true)) + c
    let e = concat(d, c) |> bn: batchnorm() |> relu() |> t4: conv_transpose(12, k: 4, stride: 3, pad: 1)
    e |> t5: conv_transpose(3, k: 5, stride: 1, pad: 2) |> b5: batchnorm()
}
"#;
    source_matches_the_interpreter(text, &[2, 5, 7, 9], 5, &[ConvKernel::Auto]);
    source_matches_bf16("transposed", text, &[2, 5, 7, 9], 5);
}

/// Linear layers with a BN-ReLU prologue, a bias and ReLU epilogue, input
/// lengths with and without a whole vector step (200, 37, 130): against
/// the interpreter in fp32, and each layer against the bf16 interpreter,
/// emulated and (where the host has AVX512-BF16) on `vdpbf16ps`.
#[test]
fn linear_layers_match_the_interpreter() {
    let text = "model lin(x: f32[N, 200]) {
    x |> bn: batchnorm() |> relu() |> fc1: linear(37) |> relu()
      |> fc2: linear(130, bias: false) |> fc3: linear(5)
}
";
    source_matches_the_interpreter(text, &[3, 200], 6, &[ConvKernel::Auto]);
    source_matches_bf16("linear", text, &[3, 200], 6);
}

/// Stride-2 convs over an odd number of channels in bf16, whose last
/// channel pairs its neighbouring column taps on the pair kernels
/// (`GemmConv::tail`): a 7×7 stem over 3 channels, a 5×5 over 5 with a
/// BN-ReLU prologue (staged into the tail plane), a 3×3 over 7; odd and
/// even widths, paddings 3, 2, 1 and 0; each tiling, and the cost model's
/// choice.
#[test]
fn odd_channel_strided_convs_match_the_interpreter_in_bf16() {
    let text = "model odd(x: f32[N, 3, 29, 26]) {
    let a = x |> c1: conv(24, k: 7, stride: 2, pad: 3, bias: true) |> relu() |> c2: conv(5, k: 1)
    let b = a |> bn: batchnorm() |> relu() |> c3: conv(20, k: 5, stride: 2, pad: 2)
    b |> c4: conv(7, k: 1) |> c5: conv(16, k: 3, stride: 2) |> c6: conv(9, k: 3, stride: 2, pad: 1)
}
";
    source_matches_bf16("odd channels", text, &[2, 3, 29, 26], 8);
    let c = resnetc::front::compile_source("test.res", text, None)
        .unwrap_or_else(|e| panic!("{}", e.render_plain()));
    let w = random_weights(&specs_of(&c.graph), 8);
    let x = random_tensor(&[2, 3, 29, 26], 8);
    if !resnetc::backend::llvm::VectorIsa::of("native").dp_bf16 {
        eprintln!("this host has no AVX512-BF16: the pair kernels are not run");
        return;
    }
    for conv in [ConvKernel::Pixels, ConvKernel::Channels] {
        let opts = CpuOptions {
            cpu: "cooperlake".into(),
            conv,
            precision: resnetc::precision::Precision::Bf16,
            ..Default::default()
        };
        bf16_layers_match(
            &format!("odd channels {conv:?}"),
            &optimized(&c.graph),
            &w,
            &x,
            &opts,
        );
    }
}

/// The model `text` with seeded random weights on a random input of
/// `shape` in bf16, each layer against the bf16 interpreter: emulated
/// (`x86-64-v3`) and, where the host has AVX512-BF16, on the pair kernels
/// (`cooperlake`).
fn source_matches_bf16(what: &str, text: &str, shape: &[usize], seed: u64) {
    let c = resnetc::front::compile_source("test.res", text, None)
        .unwrap_or_else(|e| panic!("{}", e.render_plain()));
    let w = random_weights(&specs_of(&c.graph), seed);
    let x = random_tensor(shape, seed);
    let mut cpus = vec!["x86-64-v3"];
    if resnetc::backend::llvm::VectorIsa::of("native").dp_bf16 {
        cpus.push("cooperlake");
    } else {
        eprintln!("this host has no AVX512-BF16: the pair kernels are not run");
    }
    for cpu in cpus {
        let opts = CpuOptions {
            cpu: cpu.into(),
            precision: resnetc::precision::Precision::Bf16,
            ..Default::default()
        };
        let what = format!("{what} {cpu}");
        bf16_layers_match(&what, &optimized(&c.graph), &w, &x, &opts);
    }
}

/// Products (`mul`) per channel and elementwise whose operands and results
/// are concat slices (tests/ir_cases/mul_slices.res), and SE-ResNet
/// blocks whose gated branch takes the residual add and ReLU
/// (tests/ir_cases/se_block.res), against the interpreter.
#[test]
fn products_match_the_interpreter() {
    for (case, shape) in [("mul_slices", [3, 4, 6, 6]), ("se_block", [2, 32, 16, 16])] {
        let path = root().join(format!("tests/ir_cases/{case}.res"));
        let c =
            resnetc::front::compile_file(&path).unwrap_or_else(|e| panic!("{}", e.render_plain()));
        let w = random_weights(&specs_of(&c.graph), 4);
        let x = random_tensor(&shape, 4);
        let reference = resnetc::interp::run(&c.graph, &w, &x).expect("interpreter");
        let y = run_jit(&optimized(&c.graph), &w, &x, &CpuOptions::default()).expect("cpu");
        assert_close(case, &y, &reference, 1e-4, 1e-3);
    }
}

/// The model `text` with seeded random weights on a random input of
/// `shape`, compiled with each of `convs`, against the interpreter.
fn source_matches_the_interpreter(text: &str, shape: &[usize], seed: u64, convs: &[ConvKernel]) {
    let c = resnetc::front::compile_source("test.res", text, None)
        .unwrap_or_else(|e| panic!("{}", e.render_plain()));
    let w = random_weights(&specs_of(&c.graph), seed);
    let x = random_tensor(shape, seed);
    let reference = resnetc::interp::run(&c.graph, &w, &x).expect("interpreter");
    for &conv in convs {
        let opts = CpuOptions {
            conv,
            ..CpuOptions::default()
        };
        let y = run_jit(&optimized(&c.graph), &w, &x, &opts).expect("cpu");
        let what = format!("{} {conv:?}", c.graph.name);
        assert_close(&what, &y, &reference, 1e-4, 1e-3);
    }
}

/// A batch runs activation-heavy ops image by image and weight-heavy ones
/// over the whole batch; values of different sizes reuse one buffer. With
/// the images of a buffer laid side by side, image 0's downsample once
/// overwrote image 1's input before image 1 had run (found while building
/// it): each image now has its own arena slice. The 3×3 conv to 128
/// channels on 8×8 is weight-heavy (batched), the others are not.
#[test]
fn image_by_image_and_batched_ops_mix_correctly() {
    let text = r#"
model mixed(x: f32[N, 16, 32, 32]) {
    let y = x |> a: conv(16, k: 3, pad: 1, bias: true) |> relu()
    let z = y |> b: conv(32, k: 3, stride: 2, pad: 1, bias: true) |> relu()
    let s = y |> d: conv(32, k: 1, stride: 2, bias: true)
    let u = relu((z |> c: conv(32, k: 3, pad: 1, bias: true)) + s)
    u |> maxpool(k: 2, stride: 2) |> e: conv(128, k: 3, pad: 1, bias: true) |> relu()
      |> f: conv(16, k: 1, bias: true) |> g: conv(16, k: 3, pad: 1, bias: true)
}
"#;
    let convs = [ConvKernel::Pixels, ConvKernel::Channels];
    source_matches_the_interpreter(text, &[3, 16, 32, 32], 11, &convs);
}

/// The tuner's choice per conv shape is the fastest candidate that applies
/// to every conv of the shape (times made up here, so the answer is known);
/// a record's choice steers the plan, and a choice that does not apply to
/// a conv (Winograd on a 1×1) leaves it to the cost model; the result
/// matches the interpreter either way.
#[test]
fn tuning_records_pick_the_fastest_applicable_kernel() {
    use resnetc::backend::cpu::tuning::{choose, conv_key, ConvChoice, Tuning};
    use std::collections::BTreeMap;
    let text = r#"
model tuned(x: f32[N, 16, 12, 12]) {
    let a = x |> c1: conv(16, k: 3, pad: 1) |> relu()
    let b = a |> c2: conv(16, k: 3, pad: 1)
    relu(b + x) |> c3: conv(32, k: 1)
}
"#;
    let c = resnetc::front::compile_source("tuned.res", text, None)
        .unwrap_or_else(|e| panic!("{}", e.render_plain()));
    let g = optimized(&c.graph);
    let isa = resnetc::backend::llvm::VectorIsa::of("native");
    let node = |name: &str| {
        g.schedule()
            .into_iter()
            .find(|&n| g.node(n).name == name)
            .expect("conv")
    };
    let (c1, c3) = (node("c1"), node("c3"));
    // c1 and c2 share a shape: their times add up per candidate.
    assert_eq!(conv_key(&g, c1, isa), conv_key(&g, node("c2"), isa));
    let ms = |p: f64, ch: f64, w4: f64, w2: f64| {
        BTreeMap::from([
            (ConvChoice::Pixels, p),
            (ConvChoice::Channels, ch),
            (ConvChoice::Winograd4, w4),
            (ConvChoice::Winograd2, w2),
        ])
    };
    let per = [
        ("c1", ms(3.0, 2.0, 1.5, 9.0)),
        ("c2", ms(3.0, 2.0, 1.0, 0.1)),
        ("c3", ms(2.0, 1.0, 0.1, 0.1)),
    ];
    let mut times: BTreeMap<ConvChoice, BTreeMap<String, f64>> = BTreeMap::new();
    for (name, t) in &per {
        for (&choice, &v) in t {
            times.entry(choice).or_default().insert(name.to_string(), v);
        }
    }
    let model = BTreeMap::new();
    let entries = choose(&g, isa, &times, &model);
    let key1 = conv_key(&g, c1, isa).expect("key");
    let key3 = conv_key(&g, c3, isa).expect("key");
    // 3×3: Winograd F(4×4) sums to 2.5 ms, below F(2×2)'s 9.1.
    assert_eq!(entries[&key1].choice, ConvChoice::Winograd4);
    assert_eq!(entries[&key1].ms[&ConvChoice::Winograd2], 9.1);
    // 1×1: Winograd does not apply, whatever its (made-up) time.
    assert_eq!(entries[&key3].choice, ConvChoice::Channels);
    assert!(!entries[&key3].ms.contains_key(&ConvChoice::Winograd4));
    // A record steers the plan; Winograd on the 1×1 is ignored there.
    let mut record = Tuning {
        entries,
        ..Tuning::default()
    };
    for e in record.entries.values_mut() {
        e.choice = ConvChoice::Winograd2;
    }
    assert_eq!(record.choice(&g, c1, isa), Some(ConvChoice::Winograd2));
    assert_eq!(record.choice(&g, c3, isa), None);
    let w = random_weights(&specs_of(&c.graph), 3);
    let x = random_tensor(&[2, 16, 12, 12], 3);
    let reference = resnetc::interp::run(&c.graph, &w, &x).expect("interpreter");
    let opts = CpuOptions {
        tuning: Some(std::sync::Arc::new(record)),
        ..CpuOptions::default()
    };
    let y = run_jit(&g, &w, &x, &opts).expect("cpu");
    assert_close("tuned", &y, &reference, 1e-4, 1e-3);
}

/// The library refuses to JIT code for a CPU whose instructions this
/// machine lacks (it would die of SIGILL), and runs it where it has them:
/// the kernel's `/proc/cpuinfo` flags are the oracle.
#[test]
fn jit_runs_only_code_this_machine_can_execute() {
    use resnetc::backend::llvm::LlvmError;
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").expect("/proc/cpuinfo");
    let flags: Vec<&str> = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .expect("flags")
        .split_whitespace()
        .collect();
    let c = compile_example("cifar_resnet20");
    let w = bind_weights(&c, &fixture("cifar_resnet20.safetensors"));
    let x = read_npy(&fixture("cifar_resnet20.input.npy")).expect("input");
    let expected = read_npy(&fixture("cifar_resnet20.output.npy")).expect("expected");
    let opt = optimized(&c.graph);
    // (CPU, the cpuinfo flags its code needs, how the error names one)
    for (cpu, needs, named) in [
        (
            "x86-64-v4",
            &["avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"][..],
            "AVX-512F",
        ),
        ("x86-64-v3", &["avx2", "fma", "bmi2", "f16c"][..], "AVX2"),
    ] {
        let opts = CpuOptions {
            cpu: cpu.into(),
            ..CpuOptions::default()
        };
        let r = run_jit(&opt, &w, &x, &opts);
        if needs.iter().all(|f| flags.contains(f)) {
            assert_close(cpu, &r.expect(cpu), &expected, 1e-4, 1e-3);
        } else {
            let err = r.expect_err("refused");
            assert!(matches!(err, LlvmError::HostLacks { .. }), "{err:?}");
            assert!(err.to_string().contains(named), "{err}");
        }
    }
}

/// `build --emit obj`: an object that links alone (the thread pool inside)
/// and exports exactly what the header written beside it declares; a C
/// program linked with it and libm, libpthread gives PyTorch's numbers.
#[test]
fn object_links_alone_with_its_header() {
    let out = tempfile::tempdir().expect("tempdir");
    let (y, expected, _) = cifar_resnet20_from_c(out.path(), &[], 1);
    assert_close("C program on the object", &y, &expected, 1e-4, 1e-3);
}

/// Where storing the Winograd filters transformed would grow a library's
/// constants past 1.5× (F(4×4) forced on cifar_resnet20: 4× its 3×3
/// filters), the library stores the 3×3 filters and transforms them at its
/// first call (the header says so): with F(4×4) the object stays near
/// the direct one's size, and a C
/// program on it, four threads making that first call at once, gives
/// PyTorch's numbers, with F(4×4) and F(2×2) (16/9 of the filters) from
/// one level (`--cpu x86-64-v3`), F(4×4) from that level planned over
/// x86-64-v4's packing, and from the portable dispatch.
#[test]
fn winograd_filters_transformed_at_the_first_call_match_pytorch() {
    let out = tempfile::tempdir().expect("tempdir");
    let v3 = &["--cpu", "x86-64-v3"][..];
    // One level planned over another's packing (panels of 16 channels
    // read as tiles of 8).
    let narrowed = &["--cpu", "x86-64-v3", "--packed-for", "x86-64-v4"][..];
    for (cpu, algos) in [
        (v3, &["winograd", "winograd2"][..]),
        (narrowed, &["winograd"]),
        (&[], &["winograd"]),
    ] {
        let direct = [cpu, &["--conv-algo", "direct"]].concat();
        let (_, _, direct) = cifar_resnet20_from_c(out.path(), &direct, 1);
        for algo in algos {
            let args = [cpu, &["--conv-algo", algo]].concat();
            let (y, expected, size) = cifar_resnet20_from_c(out.path(), &args, 4);
            assert_close(&format!("deferred {args:?}"), &y, &expected, 1e-4, 1e-3);
            let header =
                std::fs::read_to_string(out.path().join("cifar_resnet20.h")).expect("header");
            assert!(header.contains("The first call also lays out"), "{args:?}");
            // Stored: the 3×3 filters, not 4× them; the Winograd kernels'
            // code makes up the difference.
            assert!(
                *algo == "winograd2" || size * 4 < direct * 5,
                "{args:?}: {size} bytes against {direct} direct"
            );
        }
    }
}

/// Builds cifar_resnet20 (PyTorch's weights, `extra` build flags) as an
/// object in `dir`, links `examples/embed_c/main.c` with it, runs that on
/// the fixture's input from `callers` threads at once: its output,
/// PyTorch's, and the object's size.
fn cifar_resnet20_from_c(
    dir: &std::path::Path,
    extra: &[&str],
    callers: usize,
) -> (resnetc::tensor::Tensor, resnetc::tensor::Tensor, u64) {
    let o = Command::new(env!("CARGO_BIN_EXE_resnetc"))
        .args(["build", "examples/cifar_resnet20.res", "--weights"])
        .arg(fixture("cifar_resnet20.safetensors"))
        .args(["--emit", "obj", "--quiet"])
        .args(extra)
        .arg("-o")
        .arg(dir)
        .current_dir(root())
        .output()
        .expect("resnetc runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let obj = dir.join("cifar_resnet20.o");
    let header = dir.join("cifar_resnet20.h");
    let declared = header_functions(&header);
    assert_eq!(declared.len(), 4, "{declared:?}");
    assert_eq!(exported_symbols(&obj), declared);
    let (m, up) = ("cifar_resnet20", "CIFAR_RESNET20");
    let demo = dir.join("demo");
    let cc = Command::new("gcc")
        .args(["-O2", "-Wall", "-I"])
        .arg(dir)
        .arg(format!("-DMODEL_HEADER=\"{m}.h\""))
        .arg(format!("-DFORWARD={m}_forward"))
        .arg(format!("-DSET_THREADS={m}_set_num_threads"))
        .arg(format!("-DFORWARD_WITH_ARENA={m}_forward_with_arena"))
        .arg(format!("-DARENA_BYTES={up}_ARENA_BYTES_PER_IMAGE"))
        .arg(format!("-DINPUT_SIZE={up}_INPUT_SIZE"))
        .arg(format!("-DOUTPUT_SIZE={up}_OUTPUT_SIZE"))
        .arg("examples/embed_c/main.c")
        .arg(&obj)
        .args(["-lm", "-lpthread", "-o"])
        .arg(&demo)
        .current_dir(root())
        .output()
        .expect("gcc runs");
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let input = dir.join("in.f32");
    std::fs::write(&input, raw_floats(&fixture("cifar_resnet20.input.npy"))).expect("input");
    let output = dir.join("out.f32");
    let run = Command::new(&demo)
        .arg(&input)
        .arg(&output)
        .args(["2", &callers.to_string(), "2"])
        .output()
        .expect("demo runs");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let expected = read_npy(&fixture("cifar_resnet20.output.npy")).expect("expected");
    let y = read_raw_floats(&output, &expected.shape);
    let size = std::fs::metadata(&obj).expect("object").len();
    (y, expected, size)
}

/// `--precision bf16` on every example, layer by layer: each compiled
/// layer against the interpreter's bf16 mode (inputs and weights rounded
/// at the same points, f64 sums) on the compiled code's own inputs to it,
/// within 1e-4. End to end the two may part by more: a sum that lands
/// next to a bf16 rounding boundary rounds one way in fp32 and the other
/// in f64, and every later layer carries that step. Native runs the AMX
/// tile kernels where the host has AMX-BF16; x86-64-v3 the emulated path
/// (the fp32 kernels on rounded operands), on the examples that hold every
/// layer kind (the deeper variants repeat them); cooperlake (AVX512-BF16,
/// no AMX) the `vdpbf16ps` pair kernels, on four of them.
#[test]
fn every_example_in_bf16_matches_the_interpreter_layer_by_layer() {
    use resnetc::precision::Precision;
    let amx = resnetc::backend::llvm::VectorIsa::of("native").amx_bf16
        && resnetc::backend::cpu::amx_permitted();
    if !amx {
        eprintln!("this host has no AMX-BF16: native runs the emulated bf16 path too");
    }
    let dp_bf16 = resnetc::backend::llvm::VectorIsa::of("native").dp_bf16;
    if !dp_bf16 {
        eprintln!("this host has no AVX512-BF16: the pair kernels are not run");
    }
    for (i, (name, c)) in examples_small().into_iter().enumerate() {
        if name == "cifar_resnet1202" {
            continue; // cifar_resnet110 has the same layers, fewer times
        }
        let w = tame_residuals(
            &c.graph,
            random_weights(&specs_of(&c.graph), 300 + i as u64),
        );
        let opt = optimized(&c.graph);
        let mut shape = vec![2];
        shape.extend(c.graph.input_shape());
        let x = random_tensor(&shape, 41 * i as u64);
        let emulated = [
            "cifar_plain20",
            "cifar_resnet20",
            "densenet_bc_small",
            "densenet121",
            "resnet18",
            "resnet50",
            "se_resnet50",
            "unet_small",
        ]
        .contains(&name.as_str());
        let mut cpus = vec!["native"];
        if emulated {
            cpus.push("x86-64-v3");
        }
        // AVX512-BF16 without AMX: the pair kernels (`GemmConv::pairs`).
        let pairs = ["densenet_bc_small", "resnet18", "unet_small", "se_resnet50"];
        if dp_bf16 && pairs.contains(&name.as_str()) {
            cpus.push("cooperlake");
        }
        for cpu in cpus {
            let opts = CpuOptions {
                cpu: cpu.into(),
                precision: Precision::Bf16,
                ..Default::default()
            };
            let y = bf16_layers_match(&format!("{name} {cpu}"), &opt, &w, &x, &opts);
            // The output is the last layer's value as the code left it.
            let fp32 = resnetc::interp::run(&c.graph, &w, &x).expect("interpreter");
            assert!(
                rel_error(&y, &fp32) < 0.1,
                "{name} {cpu}: bf16 output far from fp32"
            );
        }
    }
}

/// Runs `opt` in bf16 with `opts` and checks every layer against the bf16
/// interpreter (1e-4 relative); returns the output.
fn bf16_layers_match(
    what: &str,
    opt: &Graph,
    w: &resnetc::weights::Weights,
    x: &resnetc::tensor::Tensor,
    opts: &CpuOptions,
) -> resnetc::tensor::Tensor {
    use resnetc::backend::cpu::run_jit_layers;
    use resnetc::interp::layer_check::layer_check;
    use resnetc::precision::Precision;
    let (y, values) = run_jit_layers(opt, w, x, opts).expect("cpu");
    let winograd = resnetc::backend::cpu::bf16_winograd(opt, opts);
    let diffs = layer_check(opt, w, &values, Precision::Bf16, &winograd).expect("check");
    use resnetc::ir::Op;
    let convs = opt
        .schedule()
        .into_iter()
        .filter(|&n| {
            matches!(
                opt.node(n).op,
                Op::Conv { .. } | Op::ConvTranspose { .. } | Op::Linear { .. }
            )
        })
        .count();
    assert!(
        diffs.len() >= convs,
        "{what}: only {} layers checked",
        diffs.len()
    );
    for d in &diffs {
        assert!(
            d.error <= 1e-4,
            "{what}: layer {} is off by {:.3e} from the bf16 interpreter",
            d.label,
            d.error
        );
    }
    y
}

/// Convs read a pixel-major staged image on AMX (`BfConv::pixel_major`)
/// where input channels are few (any row length) or whole chunks of 32
/// (rows of whole tiles at most an eighth longer): strided and not, with a
/// prologue, output rows that are not whole tiles (21, 10, 4; 30, 15
/// columns), the last pixel block running past the image. Each layer
/// against the bf16 interpreter.
#[test]
fn bf16_pixel_major_convs_match_the_interpreter() {
    use resnetc::precision::Precision;
    let models = [
        (
            "few_channels",
            [37, 41],
            "    x |> c1: conv(4, k: 7, stride: 2, pad: 3) |> relu()
      |> c2: conv(4, k: 3, pad: 1) |> relu()
      |> maxpool(k: 2) |> bn: batchnorm() |> relu()
      |> c3: conv(3, k: 5, pad: 2)
      |> c4: conv(6, k: 3, stride: 2)",
        ),
        (
            "wide_channels",
            [60, 60],
            "    x |> c1: conv(32, k: 3, pad: 1) |> relu()
      |> maxpool(k: 2) |> bn: batchnorm() |> relu()
      |> c2: conv(32, k: 3, pad: 1) |> relu()
      |> c3: conv(64, k: 3, stride: 2, pad: 1) |> relu()
      |> c4: conv(32, k: 3, pad: 1)",
        ),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    for (i, (name, [h, w], body)) in models.into_iter().enumerate() {
        let path = dir.path().join(format!("{name}.res"));
        let src = format!("model {name}(x: f32[N, 3, H = {h}, W = {w}]) {{\n{body}\n}}\n");
        std::fs::write(&path, src).expect("write");
        let c =
            resnetc::front::compile_file(&path).unwrap_or_else(|e| panic!("{}", e.render_plain()));
        let wt = random_weights(&specs_of(&c.graph), 7 + i as u64);
        let opt = optimized(&c.graph);
        let x = random_tensor(&[2, 3, h, w], 8 + i as u64);
        let opts = CpuOptions {
            precision: Precision::Bf16,
            ..Default::default()
        };
        let y = bf16_layers_match(name, &opt, &wt, &x, &opts);
        let fp32 = resnetc::interp::run(&c.graph, &wt, &x).expect("interpreter");
        assert!(
            rel_error(&y, &fp32) < 0.1,
            "{name}: bf16 output far from fp32"
        );
    }
}

/// bf16 handoffs (`conv_bf16::plan_handoffs`): a producer's epilogue
/// writes its flat 1×1 consumer's staged tiles. First a chain at 56×56 where
/// a conv that reads one handoff writes the next (the two regions
/// alternate) and one adds a residual; all of it one image-by-image run, so
/// every handoff is one copy for all images (`Handoff::shared`). Then a
/// weight-heavy strided conv (batched) handing off to a run that hands off
/// again: one handoff per image, one shared, in regions of their own. Each
/// layer against the bf16 interpreter (the values of a run whose plan
/// reuses nothing), and the normal plan gives the same output, batch 2.
#[test]
fn bf16_handoffs_between_1x1_convs_match_the_interpreter() {
    use resnetc::backend::cpu::consts::ConstPool;
    use resnetc::precision::Precision;
    let models = [
        (
            "handoffs",
            [64, 56],
            "    let a = x |> c1: conv(256, k: 1) |> relu()
    let b = a |> c2: conv(256, k: 1) |> relu() |> c3: conv(256, k: 1)
    relu(b + a) |> c4: conv(64, k: 1) |> relu() |> c5: conv(32, k: 1)",
            [0, 3],
        ),
        (
            "mixed_handoffs",
            [256, 52],
            "    x |> p1: conv(640, k: 3, stride: 2, pad: 1) |> relu()
      |> c1: conv(128, k: 1) |> relu()
      |> c2: conv(640, k: 1) |> relu() |> c3: conv(64, k: 1)",
            [1, 1],
        ),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    for (i, (name, [ch, hw], body, kinds)) in models.into_iter().enumerate() {
        let path = dir.path().join(format!("{name}.res"));
        let src = format!("model {name}(x: f32[N, {ch}, H = {hw}, W = {hw}]) {{\n{body}\n}}\n");
        std::fs::write(&path, src).expect("write");
        let c =
            resnetc::front::compile_file(&path).unwrap_or_else(|e| panic!("{}", e.render_plain()));
        let w = random_weights(&specs_of(&c.graph), 11 + i as u64);
        let opt = optimized(&c.graph);
        let x = random_tensor(&[2, ch, hw, hw], 12 + i as u64);
        let opts = CpuOptions {
            precision: Precision::Bf16,
            ..Default::default()
        };
        let amx = resnetc::backend::llvm::VectorIsa::of("native").amx_bf16
            && resnetc::backend::cpu::amx_permitted();
        if amx {
            // The handoffs this model is for: per image, shared.
            let derived = resnetc::weights::materialize(&opt, &w);
            let pool = ConstPool::build(&opt, &w, &derived, &opts);
            let count = |s: bool| {
                let outs = pool.bf.values().filter_map(|p| p.handoff_out);
                outs.filter(|h| h.shared == s).count()
            };
            assert_eq!([count(false), count(true)], kinds, "{name}: handoffs");
        }
        let y = bf16_layers_match(name, &opt, &w, &x, &opts);
        let planned = run_jit(&opt, &w, &x, &opts).expect("jit");
        assert_close(&format!("{name}: planned"), &planned, &y, 1e-6, 1e-6);
    }
}

/// On AVX512-BF16 without AMX (`cooperlake` here; Zen 4 and 5 natively)
/// bf16 convs reduce over channel pairs with `vdpbf16ps`
/// (`GemmConv::pairs`): odd channel counts (the last pair half zero),
/// grouped, strided, with a prologue, a reduction blocked in L1 (192
/// channels, 3×3, at 6×5), through both tilings. Each layer against the
/// bf16 interpreter. Runs where the host has AVX512-BF16.
#[test]
fn bf16_pair_convs_match_the_interpreter() {
    use resnetc::backend::cpu::conv_gemm;
    use resnetc::backend::llvm::VectorIsa;
    use resnetc::precision::Precision;
    if !VectorIsa::of("native").dp_bf16 {
        eprintln!("this host has no AVX512-BF16: the pair kernels are not run");
        return;
    }
    let isa = VectorIsa::of("cooperlake");
    assert!(isa.dp_bf16 && !isa.amx_bf16);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pairs.res");
    std::fs::write(
        &path,
        "model pairs(x: f32[N, 5, H = 23, W = 19]) {
    x |> c1: conv(12, k: 3, pad: 1) |> relu()
      |> c2: conv(36, k: 3, stride: 2, pad: 1) |> relu()
      |> maxpool(k: 2) |> bn: batchnorm() |> relu()
      |> c3: conv(40, k: 3, pad: 1, groups: 4) |> relu()
      |> c4: conv(192, k: 1) |> relu()
      |> c5: conv(64, k: 3, pad: 1) |> relu()
      |> c6: conv(7, k: 1, stride: 2)
}
",
    )
    .expect("write");
    let c = resnetc::front::compile_file(&path).unwrap_or_else(|e| panic!("{}", e.render_plain()));
    let w = random_weights(&specs_of(&c.graph), 21);
    let opt = optimized(&c.graph);
    let x = random_tensor(&[2, 5, 23, 19], 22);
    let plans = conv_gemm::plans(&opt, isa, Precision::Bf16, |_| ConvKernel::Auto, |_| None);
    assert_eq!(plans.len(), 6);
    assert!(plans.values().all(|p| p.pairs), "every conv reads pairs");
    assert!(
        plans.values().any(|p| p.kc < p.kdim()),
        "one conv blocks its reduction"
    );
    let fp32 = resnetc::interp::run(&c.graph, &w, &x).expect("interpreter");
    for conv in [ConvKernel::Auto, ConvKernel::Pixels, ConvKernel::Channels] {
        let opts = CpuOptions {
            cpu: "cooperlake".into(),
            conv,
            precision: Precision::Bf16,
            ..Default::default()
        };
        let y = bf16_layers_match(&format!("pairs {conv:?}"), &opt, &w, &x, &opts);
        assert!(
            rel_error(&y, &fp32) < 0.1,
            "{conv:?}: bf16 output far from fp32"
        );
    }
}

/// On AVX512-BF16 without AMX, 3×3 stride-1 bf16 convs may run as
/// Winograd F(2×2) over channel pairs, rounding the transformed input and
/// filter (`WinoConv::pairs`): an odd channel count, a prologue, a concat
/// slice, padding 0, a residual add, partial tiles (21×37), rows of two
/// blocks, output channels not a multiple of the vector, the input
/// transformed per unit and shared (an odd count there too). Each layer
/// against the
/// interpreter's bf16 Winograd (`interp::winograd_bf16`), which the direct
/// bf16 oracle would not pass. Runs where the host has AVX512-BF16.
#[test]
fn bf16_pair_winograd_convs_match_the_interpreter() {
    use resnetc::backend::cpu::conv_winograd::WinoConv;
    use resnetc::backend::cpu::{bf16_winograd, run_jit_layers, ConvAlgo};
    use resnetc::backend::llvm::VectorIsa;
    use resnetc::interp::layer_check::layer_check;
    use resnetc::precision::Precision;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("wino.res");
    std::fs::write(
        &path,
        "model wino(x: f32[N, 5, H = 21, W = 37]) {
    let a = x |> c1: conv(24, k: 3, pad: 1) |> relu()
    let b = a |> bn: batchnorm() |> relu() |> c2: conv(40, k: 3, pad: 1)
    let c = concat(a, b) |> c3: conv(35, k: 3) |> relu()
    let d = c |> c4: conv(35, k: 3, pad: 1)
    relu(d + c) |> c5: conv(9, k: 1) |> maxpool(k: 2) |> c6: conv(100, k: 3, pad: 1)
}
",
    )
    .expect("write");
    let c = resnetc::front::compile_file(&path).unwrap_or_else(|e| panic!("{}", e.render_plain()));
    let w = random_weights(&specs_of(&c.graph), 23);
    let opt = optimized(&c.graph);
    let x = random_tensor(&[2, 5, 21, 37], 24);
    let fp32 = resnetc::interp::run(&c.graph, &w, &x).expect("interpreter");
    let opts = CpuOptions {
        cpu: "cooperlake".into(),
        algo: ConvAlgo::Winograd2,
        precision: Precision::Bf16,
        ..Default::default()
    };
    assert_eq!(bf16_winograd(&opt, &opts).len(), 5, "every 3×3 conv");
    // Both input transforms (per GEMM unit, and shared by a block's
    // units), each with an odd channel count; rows of more than one block.
    let isa = VectorIsa::of("cooperlake");
    let plans: Vec<WinoConv> = opt
        .schedule()
        .into_iter()
        .filter_map(|n| WinoConv::plan(&opt, n, isa, ConvAlgo::Winograd2, true))
        .collect();
    assert!(plans.iter().all(|p| p.pairs && p.m == 2));
    let kinds: Vec<(bool, u64, u64, u64)> =
        plans.iter().map(|p| (p.shared, p.ic, p.c, p.tw)).collect();
    for shared in [false, true] {
        assert!(
            plans.iter().any(|p| p.shared == shared && p.ic % 2 == 1),
            "(shared, ic, c, tw): {kinds:?}"
        );
    }
    assert!(
        plans.iter().any(|p| p.c < p.tw),
        "(shared, ic, c, tw): {kinds:?}"
    );
    if !VectorIsa::of("native").dp_bf16 {
        eprintln!("this host has no AVX512-BF16: the pair kernels are not run");
        return;
    }
    let y = bf16_layers_match("pair winograd", &opt, &w, &x, &opts);
    assert!(rel_error(&y, &fp32) < 0.1, "bf16 output far from fp32");
    // The direct bf16 oracle tells the two apart.
    let (_, values) = run_jit_layers(&opt, &w, &x, &opts).expect("cpu");
    let direct = layer_check(&opt, &w, &values, Precision::Bf16, &Default::default());
    let worst = direct
        .expect("check")
        .iter()
        .fold(0f64, |m, d| m.max(d.error));
    assert!(worst > 1e-4, "Winograd rounds like direct: {worst:.3e}");
}

/// A bf16 static library (`--precision bf16`) called from C gives what the
/// JIT gives for the same build (the same kernels: AMX natively where the
/// host has it, the emulated path for x86-64-v3), its header says bf16, and
/// PyTorch's fp32 top-1 stays.
#[test]
fn bf16_static_library_matches_the_jit() {
    use resnetc::precision::Precision;
    let resnetc = env!("CARGO_BIN_EXE_resnetc");
    let c = compile_example("cifar_resnet20");
    let w = bind_weights(&c, &fixture("cifar_resnet20.safetensors"));
    let x = read_npy(&fixture("cifar_resnet20.input.npy")).expect("input");
    let torch = read_npy(&fixture("cifar_resnet20.output.npy")).expect("output");
    let opt = optimized(&c.graph);
    for cpu in ["native", "x86-64-v3"] {
        let out = tempfile::tempdir().expect("tempdir");
        let weights = format!(
            "WEIGHTS=--weights {}",
            fixture("cifar_resnet20.safetensors").display()
        );
        let flags = format!("FLAGS=--precision bf16 --cpu {cpu}");
        make_example_with("embed_c", out.path(), resnetc, &[&weights, &flags]);
        let header = std::fs::read_to_string(out.path().join("cifar_resnet20.h")).expect("h");
        assert!(header.contains("#define CIFAR_RESNET20_PRECISION \"bf16\""));
        let input = out.path().join("in.f32");
        std::fs::write(&input, raw_floats(&fixture("cifar_resnet20.input.npy"))).expect("write");
        let output = out.path().join("out.f32");
        let run = Command::new(out.path().join("demo"))
            .arg(&input)
            .arg(&output)
            .args(["2", "1", "2"])
            .output()
            .expect("demo runs");
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let y = read_raw_floats(&output, &torch.shape);
        let opts = CpuOptions {
            cpu: cpu.into(),
            precision: Precision::Bf16,
            ..Default::default()
        };
        let jit = run_jit(&opt, &w, &x, &opts).expect("jit");
        assert_close(&format!("bf16 library, {cpu}"), &y, &jit, 1e-5, 1e-4);
        let classes = torch.shape[1];
        for (a, b) in y.data.chunks(classes).zip(torch.data.chunks(classes)) {
            let top = |v: &[f32]| {
                (0..v.len())
                    .max_by(|&i, &j| v[i].total_cmp(&v[j]))
                    .unwrap_or(0)
            };
            assert_eq!(top(a), top(b), "bf16 changed a top-1 class ({cpu})");
        }
    }
}

/// A multi-level library's lower levels (x86-64-v3, x86-64-v2) run kernels
/// planned over the weights its top level (AVX-512) packed, register tiles
/// dividing the top level's panels (`CpuOptions::packed_for`). Every layer
/// of examples that hold every layer kind, against the interpreter, with
/// the top level's cost-model choices (both tilings occur) and with F(4×4)
/// Winograd forced there (the lower level keeps the top level's algorithm
/// and packing).
#[test]
fn lower_levels_on_the_top_levels_weights_match_the_interpreter_layer_by_layer() {
    use resnetc::backend::cpu::run_jit_layers;
    use resnetc::interp::layer_check::layer_check;
    use resnetc::precision::Precision;
    let kinds = [
        "cifar_resnet20",
        "densenet_bc_small",
        "resnet18",
        "se_resnet50",
        "unet_small",
    ];
    let runs = [
        ("x86-64-v3", ConvKernel::Auto, ConvAlgo::Auto),
        ("x86-64-v2", ConvKernel::Auto, ConvAlgo::Auto),
        ("x86-64-v3", ConvKernel::Pixels, ConvAlgo::Winograd),
    ];
    for (i, (name, c)) in examples_small().into_iter().enumerate() {
        if !kinds.contains(&name.as_str()) {
            continue;
        }
        let w = tame_residuals(
            &c.graph,
            random_weights(&specs_of(&c.graph), 500 + i as u64),
        );
        let opt = optimized(&c.graph);
        let mut shape = vec![2];
        shape.extend(c.graph.input_shape());
        let x = random_tensor(&shape, 43 * i as u64);
        for (cpu, conv, algo) in runs {
            let opts = CpuOptions {
                cpu: cpu.into(),
                conv,
                algo,
                packed_for: Some("x86-64-v4".into()),
                ..Default::default()
            };
            let what = format!("{name} {cpu} {conv:?} {algo:?}");
            let (_, values) = run_jit_layers(&opt, &w, &x, &opts).expect("cpu");
            let diffs =
                layer_check(&opt, &w, &values, Precision::F32, &Default::default()).expect("check");
            assert!(!diffs.is_empty(), "{what}: no layer checked");
            for d in &diffs {
                assert!(
                    d.error <= 1e-4,
                    "{what}: layer {} is off by {:.3e} from the interpreter",
                    d.label,
                    d.error
                );
            }
        }
    }
}
