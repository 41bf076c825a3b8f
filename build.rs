//! Compiles the runtimes of generated code: the thread pool of CPU models
//! (runtime/parallel.c), linked into resnetc for JIT runs and embedded as
//! assembly so `resnetc build` can put it inside every model's object,
//! and the C runtime of CUDA static libraries (runtime/cuda_rt.c), only
//! embedded, the same way.

fn main() {
    println!("cargo:rerun-if-changed=runtime/parallel.c");
    println!("cargo:rerun-if-changed=runtime/default_threads.h");
    println!("cargo:rerun-if-changed=runtime/cuda_rt.c");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut build = cc::Build::new();
    build
        .file("runtime/parallel.c")
        .pic(true)
        .opt_level(2)
        .warnings(true);
    build.compile("resnetc_rt");
    assembly(&build, "runtime/parallel.c", &out.join("parallel.s"));
    let mut cuda = cc::Build::new();
    cuda.pic(true).opt_level(2).warnings(true);
    assembly(&cuda, "runtime/cuda_rt.c", &out.join("cuda_rt.s"));
}

/// `src` compiled to assembly, which `resnetc build` puts inside each
/// model's object as module-level assembly (so the object links alone and
/// exports only what its header declares). Hidden visibility: its data is
/// reached PC-relative, not through the GOT; no debug info.
fn assembly(build: &cc::Build, src: &str, out: &std::path::Path) {
    let status = build
        .get_compiler()
        .to_command()
        .args(["-S", "-g0", "-fvisibility=hidden", src, "-o"])
        .arg(out)
        .status()
        .expect("run the C compiler");
    assert!(status.success(), "compiling {src} to assembly failed");
}
