//! Compiles the runtimes of generated code: the thread pool of CPU models
//! (runtime/parallel.c), linked into resnetc for JIT runs and embedded so
//! `resnetc build` can put it in every static library, and the C runtime
//! of CUDA static libraries (runtime/cuda_rt.c), only embedded.

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
    let objects = build.compile_intermediates();
    std::fs::copy(&objects[0], out.join("parallel.o")).expect("copy the runtime object");
    build.compile("resnetc_rt");
    let cuda = cc::Build::new()
        .file("runtime/cuda_rt.c")
        .pic(true)
        .opt_level(2)
        .warnings(true)
        .compile_intermediates();
    std::fs::copy(&cuda[0], out.join("cuda_rt.o")).expect("copy the CUDA runtime object");
}
