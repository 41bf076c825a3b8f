//! Insta snapshots of the IR text of the typical residual-net building
//! blocks (tests/ir_cases/). The passes' snapshots extend these.

use resnetc::front::compile_file;
use std::path::Path;

fn ir_of(case: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/ir_cases")
        .join(format!("{case}.res"));
    let c = compile_file(&path).unwrap_or_else(|e| panic!("{case}: {}", e.render_plain()));
    assert!(c.warnings.is_empty(), "{case}: unexpected warnings");
    resnetc::ir::verify::verify(&c.graph).expect("verifies");
    resnetc::ir::print::print(&c.graph)
}

#[test]
fn basic_block_ir() {
    insta::assert_snapshot!(ir_of("basic_block"));
}

#[test]
fn bottleneck_ir() {
    insta::assert_snapshot!(ir_of("bottleneck"));
}

#[test]
fn dense_block_ir() {
    insta::assert_snapshot!(ir_of("dense_block"));
}

#[test]
fn unet_up_block_ir() {
    insta::assert_snapshot!(ir_of("unet_up"));
}

#[test]
fn se_block_ir() {
    insta::assert_snapshot!(ir_of("se_block"));
}

/// The printer numbers values by structure, not by node index: removing and
/// re-adding unrelated nodes must not change the text.
#[test]
fn printer_is_stable_under_index_changes() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ir_cases/basic_block.res");
    let mut c = compile_file(&path).expect("compiles");
    let before = resnetc::ir::print::print(&c.graph);
    // Add a dead node, remove it, then add another: indices shift.
    let dead = c
        .graph
        .add(resnetc::ir::Op::Identity, "dead", vec![1], &[c.graph.input]);
    c.graph.g.remove_node(dead);
    let _ = c.graph.add(
        resnetc::ir::Op::Identity,
        "dead2",
        vec![1],
        &[c.graph.input],
    );
    assert_eq!(before, resnetc::ir::print::print(&c.graph));
}
