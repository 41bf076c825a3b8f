//! Any text through the front end (parse, expand, shape check), and when it
//! compiles, through every pass with the verifier: it must end in a value or
//! a diagnostic, never a panic, a hang or a memory blow-up.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // `use "lib/resnet.res"` resolves against the examples, as in the seeds.
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    match resnetc::front::compile_source("fuzz.res", text, Some(&base)) {
        Ok(c) => {
            let mut g = c.graph.clone();
            resnetc::passes::optimize(&mut g, None);
            resnetc::ir::verify::verify(&g).expect("optimized IR verifies");
            let _ = resnetc::ir::print::print(&g);
        }
        Err(e) => {
            assert!(!e.diags.is_empty());
            let _ = e.render_plain();
        }
    }
});
