//! The CUDA back end. Without a GPU (CI): every kernel emulated on the host
//! against the interpreter and PyTorch, every example's PTX through
//! NVIDIA's ptxas for sm_80 and sm_90 (and the other architectures on a few; no spills), PTX snapshots, and the
//! static library linked into a C program that reports the missing driver.
//! With a GPU and its driver: the same models run on the device.

mod common;
use common::*;
use resnetc::backend::cuda::{self, emulate, gemm, runtime, CudaOptions};
use resnetc::ir::Graph;
use resnetc::passes;
use resnetc::weights::{random_weights, read_npy, specs_of, Weights};
use std::path::PathBuf;
use std::process::Command;

fn optimized(g: &Graph) -> Graph {
    let mut o = g.clone();
    passes::optimize(&mut o, None);
    o
}

/// `graph` with tamed random weights (`seed`) at batch 2: the emulated
/// CUDA kernels against the interpreter, once with the tiles chosen for
/// batch 1 and once with those for batch 64. The weights and the
/// optimized graph, for more checks.
fn emulated_matches_the_interpreter(name: &str, graph: &Graph, seed: u64) -> (Weights, Graph) {
    emulated_for(name, graph, seed, "sm_80")
}

/// `emulated_matches_the_interpreter` with the kernels for `gpu`.
fn emulated_for(name: &str, graph: &Graph, seed: u64, gpu: &str) -> (Weights, Graph) {
    let w = tame_residuals(graph, random_weights(&specs_of(graph), seed));
    let opt = optimized(graph);
    let mut shape = vec![2];
    shape.extend(graph.input_shape());
    let x = random_tensor(&shape, seed + 1);
    let reference = resnetc::interp::run(graph, &w, &x).expect("interpreter");
    for tune in [1, 64] {
        let y = emulate::run(&opt, &w, &x, &CudaOptions::for_gpu(gpu), Some(tune))
            .expect("emulated cuda");
        let what = format!("{name} {gpu} (tiles for batch {tune})");
        assert_close(&what, &y, &reference, 1e-4, 1e-3);
    }
    (w, opt)
}

/// Every example, emulated CUDA kernels vs the interpreter at batch 2;
/// the GEMMs once with the tiles chosen for batch 1 and once with those
/// for batch 64, so every tile shape runs. Inputs over 64x64 at 32x32.
#[test]
fn every_example_matches_the_interpreter_emulated() {
    for (i, (name, c)) in examples_small().into_iter().enumerate() {
        if name == "cifar_resnet1202" {
            continue; // cifar_resnet110's kernels, ten times over
        }
        emulated_matches_the_interpreter(&name, &c.graph, 300 + i as u64);
    }
}

/// Every IR test case (tests/ir_cases: every operator the language has,
/// sigmoid and softmax among them, whose e^x has no libm to call on
/// NVPTX) through the CUDA back end: emulated against the interpreter at
/// batch 2 with the tiles for batch 1 and for 64, and its PTX for sm_80
/// and sm_90 assembled by ptxas.
#[test]
fn every_ir_case_builds_for_the_gpu_and_matches_the_interpreter_emulated() {
    let ptxas = ptxas();
    let cases = ir_cases();
    for (i, path) in cases.iter().enumerate() {
        let name = path
            .file_stem()
            .expect("stem")
            .to_string_lossy()
            .to_string();
        let c = resnetc::front::compile_file(path)
            .unwrap_or_else(|e| panic!("{name}: {}", e.render_plain()));
        let (w, opt) = emulated_matches_the_interpreter(&name, &c.graph, 40 + i as u64);
        for gpu in ["sm_80", "sm_90"] {
            let p = cuda::compile(&opt, &w, &CudaOptions::for_gpu(gpu))
                .unwrap_or_else(|e| panic!("{name} {gpu}: {e}"));
            if let Some(ptxas) = &ptxas {
                assemble(ptxas, &p.ptx, gpu, &format!("{name} {gpu}"));
            }
        }
    }
}

/// The kernels for a GPU without `cp.async` (sm_75, T4; sm_70 has the
/// same), whose GEMMs stage their weight and im2col loads in registers:
/// every IR test case and the examples holding every kind of GEMM,
/// emulated against the interpreter with the tiles for batch 1 and 64.
#[test]
fn register_staged_kernels_match_the_interpreter_emulated() {
    let keep = [
        "resnet18",
        "densenet_bc_small",
        "unet_small",
        "cifar_resnet20",
    ];
    let examples: Vec<_> = examples_small()
        .into_iter()
        .filter(|(n, _)| keep.contains(&n.as_str()))
        .collect();
    assert_eq!(examples.len(), keep.len(), "examples renamed?");
    for (i, (name, c)) in examples.into_iter().enumerate() {
        emulated_for(&name, &c.graph, 500 + i as u64, "sm_75");
    }
    for (i, path) in ir_cases().iter().enumerate() {
        let c = resnetc::front::compile_file(path)
            .unwrap_or_else(|e| panic!("{}: {}", path.display(), e.render_plain()));
        emulated_for(
            &path.display().to_string(),
            &c.graph,
            600 + i as u64,
            "sm_75",
        );
    }
}

/// tests/ir_cases/*.res, sorted.
fn ir_cases() -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(root().join("tests/ir_cases"))
        .expect("tests/ir_cases")
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "res"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 6, "{cases:?}");
    cases
}

/// A model written in the test: its graph, tamed random weights (`seed`),
/// the optimized graph and its PTX program for sm_80.
fn source_case(name: &str, source: &str, seed: u64) -> (Graph, Weights, Graph, cuda::CudaProgram) {
    let c = resnetc::front::compile_source(name, source, None)
        .unwrap_or_else(|e| panic!("{}", e.render_plain()));
    let w = tame_residuals(&c.graph, random_weights(&specs_of(&c.graph), seed));
    let opt = optimized(&c.graph);
    let p = cuda::compile(&opt, &w, &CudaOptions::default()).expect("ptx");
    (c.graph, w, opt, p)
}

/// Split K on layers the examples do not have: grouped convs (each group's
/// slices summed apart), a residual add and a bias in the sum's epilogue,
/// and the sum written into a concat slice; emulated against the
/// interpreter at batch 1 (split) and with the tiles for batch 64.
#[test]
fn split_k_handles_groups_residuals_and_concat_slices() {
    let source = r#"
model split(x: f32[N, 64, 7, 7]) {
    let a = x |> ga: conv(128, k: 3, pad: 1, groups: 4, bias: true) |> relu()
    let b = a |> gb: conv(128, k: 3, pad: 1, groups: 2) |> bn: batchnorm()
    let c = relu(b + a)
    let d = c |> gc: conv(64, k: 3, pad: 1) |> relu()
    concat(d, x) |> gd: conv(32, k: 3, pad: 1)
}
"#;
    let (graph, w, opt, p) = source_case("split.res", source, 5);
    let split: Vec<&str> = p
        .plan
        .launches
        .iter()
        .filter(|l| l.label.ends_with("(split-K sum)") && l.variant(1).runs(1))
        .map(|l| l.label.as_str())
        .collect();
    for layer in ["ga", "gb", "gc", "gd"] {
        assert!(
            split.iter().any(|l| l.starts_with(&format!("{layer} "))),
            "{layer} is not split at batch 1: {split:?}"
        );
    }
    for n in [1, 3] {
        let x = random_tensor(&[n, 64, 7, 7], 9);
        let reference = resnetc::interp::run(&graph, &w, &x).expect("interpreter");
        for tune in [None, Some(64)] {
            let y =
                emulate::run(&opt, &w, &x, &CudaOptions::default(), tune).expect("emulated cuda");
            assert_close(
                &format!("batch {n}, tiles for {tune:?}"),
                &y,
                &reference,
                1e-4,
                1e-3,
            );
        }
    }
}

/// The 128×128 tile without a prologue, resnet50's workhorse at batch 64,
/// which the examples' 32×32 copies never pick: a stem-like conv (3 input
/// channels, K per element), a 3×3 conv with a residual epilogue and a 1×1
/// conv, all on 128×128 tiles with the tiles for batch 64, two of them
/// unsplit (checked on the plan), emulated against the interpreter in both
/// thread orders.
#[test]
fn the_largest_tile_matches_the_interpreter() {
    use resnetc::backend::cuda::simt::ThreadOrder;
    let source = r#"
model big(x: f32[N, 3, 64, 64]) {
    let a = x |> c1: conv(128, k: 7, stride: 2, pad: 3) |> relu()
    let b = a |> c2: conv(128, k: 3, pad: 1) |> bn: batchnorm()
    relu(b + a) |> c3: conv(256, k: 1) |> relu()
}
"#;
    let (graph, w, opt, p) = source_case("big.res", source, 6);
    let mut unsplit = 0;
    for layer in ["c1", "c2", "c3"] {
        let l = p
            .plan
            .launches
            .iter()
            .find(|l| l.label.starts_with(&format!("{layer} ")))
            .expect("the layer's launch");
        let v = l.variant(64);
        // 256 threads and 128 columns: only the 128×128 tile; one block
        // in z: unsplit.
        assert_eq!((v.block, v.x_tile), (256, 128), "{layer}: {v:?}");
        unsplit += usize::from(v.grid_z == 1);
    }
    assert!(unsplit >= 2, "the layers are split at batch 64");
    let x = random_tensor(&[2, 3, 64, 64], 4);
    let reference = resnetc::interp::run(&graph, &w, &x).expect("interpreter");
    let run = |order| {
        emulate::run_in_order(&opt, &w, &x, &CudaOptions::default(), Some(64), order)
            .expect("emulated cuda")
    };
    let (fwd, bwd) = (run(ThreadOrder::Forward), run(ThreadOrder::Backward));
    assert_close("128x128 tiles", &fwd, &reference, 1e-4, 1e-3);
    assert_eq!(fwd.data, bwd.data, "the thread order changed the output");
}

/// No phase of any kernel depends on the order its threads or blocks run
/// in (which on a GPU is none), nor on when a `cp.async` copy lands before
/// its wait: with every phase's threads and every launch's blocks walked
/// backwards, and copies landing only at their wait, the emulation gives
/// bit for bit the same outputs. A thread reading shared memory another
/// thread writes in the same phase (a missing barrier, or a two-stage GEMM
/// writing the stage being read), or reading a stage whose copies it has
/// not waited for, would break this.
#[test]
fn kernels_do_not_depend_on_thread_order() {
    use resnetc::backend::cuda::simt::ThreadOrder;
    let keep = [
        "resnet18",
        "densenet_bc_small",
        "unet_small",
        "cifar_resnet20",
    ];
    for (i, (name, c)) in examples_small()
        .into_iter()
        .filter(|(n, _)| keep.contains(&n.as_str()))
        .enumerate()
    {
        let w = tame_residuals(&c.graph, random_weights(&specs_of(&c.graph), 40 + i as u64));
        let opt = optimized(&c.graph);
        let mut shape = vec![2];
        shape.extend(c.graph.input_shape());
        let x = random_tensor(&shape, 3 + i as u64);
        // sm_75: the GEMMs' loads staged in registers (no `cp.async`).
        for (tune, gpu) in [(1, "sm_80"), (64, "sm_80"), (1, "sm_75"), (64, "sm_75")] {
            let run = |order| {
                let opts = CudaOptions::for_gpu(gpu);
                emulate::run_in_order(&opt, &w, &x, &opts, Some(tune), order)
                    .expect("emulated cuda")
            };
            let (fwd, bwd) = (run(ThreadOrder::Forward), run(ThreadOrder::Backward));
            let same = fwd
                .data
                .iter()
                .zip(&bwd.data)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same,
                "{name} {gpu} (tiles for batch {tune}): thread order changes the output"
            );
        }
    }
}

#[test]
fn fixtures_match_pytorch_emulated() {
    for name in [
        "cifar_resnet20",
        "cifar_plain20",
        "unet_small",
        "densenet_bc_small",
    ] {
        let c = compile_example(name);
        let w = bind_weights(&c, &fixture(&format!("{name}.safetensors")));
        let x = read_npy(&fixture(&format!("{name}.input.npy"))).expect("input");
        let e = read_npy(&fixture(&format!("{name}.output.npy"))).expect("output");
        let y = emulate::run(
            &optimized(&c.graph),
            &w,
            &x,
            &CudaOptions::for_gpu("sm_90"),
            None,
        )
        .expect("emulated");
        assert_close(&format!("{name} vs PyTorch"), &y, &e, 1e-4, 1e-3);
    }
}

/// NVIDIA's PTX assembler, installed by scripts/setup.sh from the PyPI
/// wheel `nvidia-cuda-nvcc-cu12` (`RESNETC_PTXAS` overrides). Missing
/// under CI it is a failure; elsewhere the caller skips, saying so.
fn ptxas() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("RESNETC_PTXAS") {
        return Some(PathBuf::from(p));
    }
    let lib = root().join(".tools/py/lib");
    let found = std::fs::read_dir(lib).ok().and_then(|dir| {
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

/// Assembles `ptx` for `gpu` with `ptxas -v`; returns ptxas's report.
fn assemble(ptxas: &PathBuf, ptx: &str, gpu: &str, what: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("k.ptx");
    std::fs::write(&src, ptx).expect("write ptx");
    let out = Command::new(ptxas)
        .args(["-v", &format!("-arch={gpu}"), "-o"])
        .arg(dir.path().join("k.cubin"))
        .arg(&src)
        .output()
        .expect("ptxas runs");
    let report = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "ptxas {gpu} on {what}:\n{report}");
    report
}

/// A GEMM kernel (known by its shared memory and its block of `threads`,
/// which are its tile's) uses no more registers than lets the blocks the
/// cost model counts on be resident together: 65536 per multiprocessor.
/// A global average pool's shared memory is its block's partial sums.
fn check_registers(what: &str, line: &str, threads: Option<u64>) -> bool {
    let number_before = |unit: &str| -> Option<u64> {
        let head = line.split(unit).next()?;
        head.rsplit(|c: char| !c.is_ascii_digit())
            .find(|w| !w.is_empty())?
            .parse()
            .ok()
    };
    if !line.contains("registers") || !line.contains("bytes smem") {
        return false;
    }
    let (Some(regs), Some(smem)) = (number_before(" registers"), number_before(" bytes smem"))
    else {
        panic!("{what}: cannot read ptxas's line `{line}`");
    };
    if what.ends_with("_global_avgpool") {
        assert_eq!(Some(smem / 4), threads, "{what}: one partial sum a thread");
        return false;
    }
    let Some(t) = gemm::TILES
        .iter()
        .find(|t| t.shared_bytes() == smem && Some(t.threads()) == threads)
    else {
        panic!("{what}: {smem} bytes of shared memory and {threads:?} threads are no GEMM tile's");
    };
    // Registers go to warps in units of 256: 8 a thread.
    assert!(
        regs.div_ceil(8) * 8 * t.threads() * t.resident() <= 65536,
        "{what}: {regs} registers a thread keep fewer than {} blocks of {t:?} resident",
        t.resident()
    );
    true
}

/// Every example compiles to PTX for sm_80 and sm_90, ptxas assembles it,
/// no kernel spills registers, and the GEMMs fit the register budget of
/// their tiles.
#[test]
fn every_example_assembles_with_ptxas_without_spills() {
    let Some(ptxas) = ptxas() else {
        eprintln!("skipped: ptxas not found (run scripts/setup.sh)");
        return;
    };
    let names = example_names();
    std::thread::scope(|s| {
        for gpu in ["sm_80", "sm_90"] {
            let (names, ptxas) = (&names, &ptxas);
            s.spawn(move || {
                for name in names {
                    let p = assembles_without_spills(ptxas, name, gpu);
                    // sm_80 PTX also assembles for Hopper (what the driver
                    // JIT does on an H100).
                    if gpu == "sm_80" && name == "resnet50" {
                        assemble(ptxas, &p.ptx, "sm_90", "resnet50 sm_80 PTX");
                    }
                }
            });
        }
    });
}

/// Example `name` compiled for `gpu` and assembled by ptxas: no kernel
/// spills or uses local memory, and the GEMMs fit the register budget of
/// their tiles. The program.
fn assembles_without_spills(ptxas: &PathBuf, name: &str, gpu: &str) -> cuda::CudaProgram {
    let c = compile_example(name);
    let w = random_weights(&specs_of(&c.graph), 1);
    let opts = CudaOptions::for_gpu(gpu);
    let p = cuda::compile(&optimized(&c.graph), &w, &opts).expect("ptx");
    assert!(p.ptx.contains(&format!(".target {gpu}")), "{name}");
    let report = assemble(ptxas, &p.ptx, gpu, name);
    let block: std::collections::HashMap<&str, u64> = p
        .plan
        .launches
        .iter()
        .flat_map(|l| &l.variants)
        .map(|v| (v.kernel.as_str(), v.block))
        .collect();
    let mut kernel = String::new();
    let (mut checked, mut gemms) = (0, 0);
    for line in report.lines() {
        if let Some(k) = line.split("entry function '").nth(1) {
            kernel = k.split('\'').next().unwrap_or("").to_string();
        }
        let what = format!("{name} {gpu}: {kernel}");
        let threads = block.get(kernel.as_str()).copied();
        gemms += check_registers(&what, line, threads) as usize;
        if line.contains("spill stores") {
            checked += 1;
            assert!(
                line.contains(" 0 bytes spill stores, 0 bytes spill loads"),
                "{name} {gpu}: {kernel} spills: {line}"
            );
            // No local memory at all: a register tile indexed by a
            // run-time value would live there without counting as a
            // spill.
            assert!(
                line.trim_start().starts_with("0 bytes stack frame"),
                "{name} {gpu}: {kernel} uses local memory: {line}"
            );
        }
    }
    assert_eq!(checked, p.plan.kernels.len(), "{name} {gpu}: {report}");
    // Only the GEMM kernels (and the global pools) use shared memory.
    let convs = p
        .plan
        .kernels
        .iter()
        .filter(|k| k.ends_with("_conv") || k.ends_with("_linear"))
        .count();
    assert_eq!(gemms, convs, "{name} {gpu}: GEMM kernels checked");
    p
}

/// The other architectures: sm_75 (T4: no `cp.async`, so the GEMMs stage
/// their loads in registers) for models holding every kind of GEMM (7x7
/// stem, bottlenecks, DenseNet's BN-ReLU prologue, U-Net's transposed
/// convs), sm_70 (V100, the same kernels) for resnet50, sm_86 and sm_89
/// (A10, L4) for resnet18; each
/// assembled by ptxas without spills, and no PTX before sm_80 holding a
/// `cp.async`, which those GPUs do not have.
#[test]
fn other_architectures_assemble_without_spills() {
    let Some(ptxas) = ptxas() else {
        eprintln!("skipped: ptxas not found (run scripts/setup.sh)");
        return;
    };
    let cases = [
        ("sm_70", "resnet50"),
        ("sm_75", "resnet50"),
        ("sm_75", "densenet121"),
        ("sm_75", "unet_small"),
        ("sm_86", "resnet18"),
        ("sm_89", "resnet18"),
    ];
    std::thread::scope(|s| {
        for half in cases.chunks(cases.len().div_ceil(2)) {
            let ptxas = &ptxas;
            s.spawn(move || {
                for &(gpu, name) in half {
                    let p = assembles_without_spills(ptxas, name, gpu);
                    let asynchronous = p.ptx.contains("cp.async");
                    assert_eq!(asynchronous, gpu >= "sm_80", "{name} {gpu}");
                }
            });
        }
    });
}

/// The PTX of one kernel of `source`'s model: the first whose label
/// contains `label`.
fn kernel_ptx(source: &str, label: &str) -> String {
    let dir = root().join("examples");
    let c = resnetc::front::compile_source("case.res", source, Some(&dir))
        .unwrap_or_else(|e| panic!("{}", e.render_plain()));
    let w = random_weights(&specs_of(&c.graph), 1);
    // K not split: the kernel with the whole epilogue.
    let opts = CudaOptions {
        max_split_k: 1,
        ..Default::default()
    };
    let p = cuda::compile(&optimized(&c.graph), &w, &opts).expect("ptx");
    let launch = p
        .plan
        .launches
        .iter()
        .find(|l| l.label.contains(label))
        .unwrap_or_else(|| panic!("no launch `{label}`"));
    let name = &launch.variants[0].kernel;
    let start = p
        .ptx
        .find(&format!(".entry {name}("))
        .expect("the kernel is in the PTX");
    // From the entry to its closing brace at column 0.
    let body = &p.ptx[start..];
    let end = body.find("\n}\n").map_or(body.len(), |e| e + 3);
    body[..end].to_string()
}

const BLOCK: &str = r#"
use "lib/resnet.res"
model case(x: f32[N, 64, 14, 14]) {
    x |> layer: [basic(128, stride: 2), basic(128)] |> pool: maxpool(k: 3, stride: 2, pad: 1)
}
"#;

#[test]
fn ptx_snapshot_conv3x3_with_residual_epilogue() {
    // layer.1.conv2: 3x3, bias (folded BN), + residual, ReLU.
    insta::assert_snapshot!(kernel_ptx(BLOCK, "layer.1.conv2"));
}

#[test]
fn ptx_snapshot_conv1x1() {
    insta::assert_snapshot!(kernel_ptx(BLOCK, "layer.0.downsample.0"));
}

#[test]
fn ptx_snapshot_maxpool() {
    insta::assert_snapshot!(kernel_ptx(BLOCK, "maxpool"));
}

/// PTX built on several threads (each optimizing and emitting a run of
/// the kernels) is byte for byte what one thread writes: the same kernels
/// in the same order, labels numbered as in one module, one header. A
/// DenseNet (prologue kernels, concat slices) and a CIFAR ResNet, cut
/// into runs of one or a few kernels.
#[test]
fn ptx_built_on_several_threads_is_the_single_threaded_ptx() {
    for (name, gpu, threads) in [
        ("densenet_bc_small", "sm_80", 3),
        ("cifar_resnet20", "sm_90", 7),
    ] {
        let c = compile_example(name);
        let w = random_weights(&specs_of(&c.graph), 1);
        let g = optimized(&c.graph);
        let build = |codegen_threads| {
            let opts = CudaOptions {
                gpu: gpu.into(),
                codegen_threads,
                ..Default::default()
            };
            cuda::compile(&g, &w, &opts).expect("ptx").ptx
        };
        let one = build(1);
        let many = build(threads);
        assert!(one.matches(".visible .entry").count() > threads);
        assert!(
            one == many,
            "{name}: PTX on {threads} threads differs from one thread's, first at byte {}",
            one.bytes()
                .zip(many.bytes())
                .take_while(|(a, b)| a == b)
                .count()
        );
    }
}

/// `resnetc build --target cuda --emit staticlib` → C program (libc, libdl,
/// pthreads only). Without a driver the program says so (exit 3); with
/// one its output is PyTorch's.
#[test]
fn cuda_static_library_links_into_a_c_program() {
    let out = tempfile::tempdir().expect("tempdir");
    make_example("embed_cuda", out.path(), env!("CARGO_BIN_EXE_resnetc"));
    // It exports what its header declares, nothing else (the C runtime
    // inside, its symbols local).
    let declared = header_functions(&out.path().join("cifar_resnet20.h"));
    assert_eq!(declared.len(), 3, "{declared:?}");
    assert_eq!(
        exported_symbols(&out.path().join("libcifar_resnet20.a")),
        declared
    );
    for sym in undefined_symbols(&out.path().join("libcifar_resnet20.a")) {
        assert!(
            [
                "dlopen",
                "dlsym",
                "calloc",
                "free",
                "memset",
                "strlen",
                "strstr",
                "snprintf",
                "pthread_mutex_lock",
                "pthread_mutex_unlock",
                "__tls_get_addr",
                "_GLOBAL_OFFSET_TABLE_",
            ]
            .contains(&sym.as_str()),
            "unexpected dependency `{sym}`"
        );
    }
    let input = out.path().join("in.f32");
    let x = read_npy(&fixture("cifar_resnet20.input.npy")).expect("input");
    let bytes: Vec<u8> = x.data.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&input, bytes).expect("write input");
    let expected = read_npy(&fixture("cifar_resnet20.output.npy")).expect("expected");
    // Host memory in and out, then the program's own device memory.
    for program in ["demo", "demo_device"] {
        let output = out.path().join(format!("{program}.f32"));
        let run = Command::new(out.path().join(program))
            .arg(&input)
            .arg(&output)
            .arg(x.shape[0].to_string())
            .output()
            .expect("demo runs");
        let stderr = String::from_utf8_lossy(&run.stderr);
        if !runtime::driver_present() {
            assert_eq!(run.status.code(), Some(3), "{program}: {stderr}");
            assert!(stderr.contains("no CUDA driver"), "{program}: {stderr}");
            assert!(!output.exists());
            eprintln!("GPU part skipped for {program}: no CUDA driver found");
            continue;
        }
        assert!(run.status.success(), "{program} failed: {stderr}");
        let y = read_raw_floats(&output, &expected.shape);
        assert_close(&format!("{program} on the GPU"), &y, &expected, 1e-4, 1e-3);
    }
}

/// On a GPU: every example at batch 2 against the interpreter, and the
/// fixtures against PyTorch. Skips (saying so) without a CUDA driver.
#[test]
fn every_example_matches_the_interpreter_on_the_gpu() {
    if !runtime::driver_present() {
        eprintln!("skipped: no CUDA driver found");
        return;
    }
    for (i, (name, c)) in examples_small().into_iter().enumerate() {
        let w = tame_residuals(
            &c.graph,
            random_weights(&specs_of(&c.graph), 300 + i as u64),
        );
        let mut shape = vec![2];
        shape.extend(c.graph.input_shape());
        let x = random_tensor(&shape, 17 * i as u64 + 1);
        let reference = resnetc::interp::run(&c.graph, &w, &x).expect("interpreter");
        let p = cuda::compile(&optimized(&c.graph), &w, &CudaOptions::default()).expect("ptx");
        let mut dev = runtime::Device::load(&p).expect("load on the GPU");
        let y = dev.run(&x).expect("run on the GPU");
        assert_close(&format!("{name} on the GPU"), &y, &reference, 1e-4, 1e-3);
    }
}

/// NVIDIA's disassembler, installed by scripts/setup.sh from the PyPI
/// wheel `nvidia-cuda-nvdisasm`.
fn nvdisasm() -> Option<PathBuf> {
    let lib = root().join(".tools/py/lib");
    let nvidia = std::fs::read_dir(lib)
        .ok()?
        .flatten()
        .map(|d| d.path().join("site-packages/nvidia"))
        .find(|p| p.exists())?;
    std::fs::read_dir(nvidia)
        .ok()?
        .flatten()
        .map(|d| d.path().join("bin/nvdisasm"))
        .find(|p| p.exists())
}

/// The K loop of every kernel in `sass` (`nvdisasm -c`): the body of the
/// backward branch with the most FFMAs, as (instructions, FFMAs).
fn k_loops(sass: &str) -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    let mut kernel: Option<String> = None;
    let (mut labels, mut ins) = (std::collections::HashMap::new(), Vec::<String>::new());
    let mut finish = |kernel: &Option<String>,
                      labels: &std::collections::HashMap<String, usize>,
                      ins: &[String]| {
        let Some(k) = kernel else { return };
        let mut best = (0, 0);
        for (i, text) in ins.iter().enumerate() {
            let Some(target) = text.split("BRA").nth(1) else {
                continue;
            };
            let target =
                target.trim_matches(|c: char| c == ' ' || c == '`' || c == '(' || c == ')');
            if let Some(&start) = labels.get(target).filter(|&&s| s <= i) {
                let body = &ins[start..=i];
                let ffma = body.iter().filter(|b| b.contains("FFMA")).count();
                if ffma > best.1 {
                    best = (body.len(), ffma);
                }
            }
        }
        if best.1 > 0 {
            out.push((k.clone(), best.0, best.1));
        }
    };
    for line in sass.lines() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix(".text.").and_then(|n| n.strip_suffix(':')) {
            finish(&kernel, &labels, &ins);
            kernel = Some(name.to_string());
            labels.clear();
            ins.clear();
        } else if t.starts_with(".L_x_") && t.ends_with(':') {
            labels.insert(t.trim_end_matches(':').to_string(), ins.len());
        } else if let Some(rest) = t.strip_prefix("/*").and_then(|r| r.split_once("*/")) {
            ins.push(rest.1.trim().trim_end_matches(';').trim().to_string());
        }
    }
    finish(&kernel, &labels, &ins);
    out
}

/// `example`'s GEMM kernels for `gpu`, assembled and disassembled: the
/// plan and every kernel's K loop (`k_loops`).
fn sass_k_loops(
    ptxas: &PathBuf,
    nvdisasm: &PathBuf,
    example: &str,
    gpu: &str,
) -> (cuda::plan::LaunchPlan, Vec<(String, usize, usize)>) {
    let c = compile_example(example);
    let w = random_weights(&specs_of(&c.graph), 1);
    let p = cuda::compile(&optimized(&c.graph), &w, &CudaOptions::for_gpu(gpu)).expect("ptx");
    let dir = tempfile::tempdir().expect("tempdir");
    let (src, cubin) = (dir.path().join("k.ptx"), dir.path().join("k.cubin"));
    std::fs::write(&src, &p.ptx).expect("write ptx");
    let ok = Command::new(ptxas)
        .arg(format!("-arch={gpu}"))
        .arg("-o")
        .arg(&cubin)
        .arg(&src)
        .status()
        .expect("ptxas runs");
    assert!(ok.success(), "ptxas {gpu}");
    let out = Command::new(nvdisasm)
        .arg("-c")
        .arg(&cubin)
        .output()
        .expect("nvdisasm runs");
    assert!(out.status.success(), "nvdisasm {gpu}");
    (p.plan, k_loops(&String::from_utf8_lossy(&out.stdout)))
}

/// The GEMM kernels' K loops stay mostly FFMA (an upper bound on the
/// fraction of fp32 peak a kernel can reach, read off the machine code;
/// `scripts/sass_loops.py` prints it per kernel): resnet50's 8×8 loops,
/// where every conv but the stem has K tap-major and copies by
/// `cp.async`, at 80%, and CIFAR ResNet-20's 8×4 loops (its 16- and
/// 32-channel layers, but the stem) at 70%.
#[test]
fn gemm_k_loops_are_mostly_ffma() {
    let (Some(ptxas), Some(nvdisasm)) = (ptxas(), nvdisasm()) else {
        assert!(
            std::env::var("CI").is_err(),
            "ptxas or nvdisasm is missing under CI: scripts/setup.sh installs them"
        );
        eprintln!("skipped: ptxas or nvdisasm not found (run scripts/setup.sh)");
        return;
    };
    // (example, the tile's FFMAs a step, least share, least fraction of
    // the GEMM kernels found with that tile)
    let cases = [
        ("resnet50", 512, 0.8, 0.5),
        ("cifar_resnet20", 256, 0.7, 0.4),
    ];
    for (example, ffmas, least, fraction) in cases {
        for gpu in ["sm_80", "sm_90"] {
            let (plan, loops) = sass_k_loops(&ptxas, &nvdisasm, example, gpu);
            // The stem (3 input channels) decomposes K per element.
            let stem = &plan.launches[0].variants;
            let mut found = 0;
            for (k, len, ffma) in &loops {
                let share = *ffma as f64 / *len as f64;
                if *ffma != ffmas || stem.iter().any(|v| &v.kernel == k) {
                    continue;
                }
                found += 1;
                assert!(
                    share >= least,
                    "{example} {gpu} {k}: K loop {ffma} FFMA of {len} instructions"
                );
            }
            let gemms = plan
                .kernels
                .iter()
                .filter(|k| k.ends_with("_conv") || k.ends_with("_linear"));
            assert!(
                found as f64 > fraction * gemms.count() as f64,
                "{example} {gpu}: {found} K loops of {ffmas} FFMAs found of {loops:?}"
            );
        }
    }
}
