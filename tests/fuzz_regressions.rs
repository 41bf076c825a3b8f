//! Inputs the fuzzers found (fuzz/README.md), kept so the bugs stay fixed.
//! Each runs what its fuzz target runs, on a test thread's 2 MiB stack.

use std::path::Path;

/// Every `front_end_*.res`: compile, and if it compiles, optimize and
/// verify, as the `front_end` target does. It must end in a graph or a
/// diagnostic.
#[test]
fn front_end_regressions() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("dir") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .to_string();
        if !name.starts_with("front_end_") {
            continue;
        }
        n += 1;
        match resnetc::front::compile_file(&path) {
            Ok(c) => {
                let mut g = c.graph.clone();
                resnetc::passes::optimize(&mut g, None);
                resnetc::ir::verify::verify(&g).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            Err(e) => assert!(!e.render_plain().is_empty(), "{name}: empty diagnostic"),
        }
    }
    assert!(n > 0);
}
