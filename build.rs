//! Compiles the thread pool of generated code (runtime/parallel.c): linked
//! into resnetc for JIT runs, and its object embedded so `resnetc build` can
//! put it in every static library.

fn main() {
    println!("cargo:rerun-if-changed=runtime/parallel.c");
    let mut build = cc::Build::new();
    build
        .file("runtime/parallel.c")
        .pic(true)
        .opt_level(2)
        .warnings(true);
    let objects = build.compile_intermediates();
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::copy(&objects[0], out.join("parallel.o")).expect("copy the runtime object");
    build.compile("resnetc_rt");
}
