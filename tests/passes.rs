//! The optimization passes: every example gives the same numbers before and
//! after optimization (also when run inside the planned arena), the passes do
//! what they promise structurally, and the IR after each pass is snapshotted.

mod common;
use common::*;
use resnetc::front::compile_file;
use resnetc::ir::{Graph, Op};
use resnetc::passes;
use resnetc::weights::{random_weights, specs_of};
use std::collections::BTreeMap;
use std::path::Path;

fn optimized(g: &Graph) -> Graph {
    let mut o = g.clone();
    passes::optimize(&mut o, None);
    resnetc::ir::verify::verify(&o).expect("optimized graph verifies");
    o
}

fn op_counts(g: &Graph) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for n in g.schedule() {
        let op = &g.node(n).op;
        let kind = match op {
            Op::Concat { .. } if !passes::concat_in_place::copies(op) => "concat_in_place",
            _ => op.kind(),
        };
        *m.entry(kind.to_string()).or_insert(0) += 1;
    }
    m
}

#[test]
fn optimized_examples_match_the_unoptimized_graph() {
    for (i, (name, c)) in examples_small().into_iter().enumerate() {
        let t0 = std::time::Instant::now();
        let w = tame_residuals(
            &c.graph,
            random_weights(&specs_of(&c.graph), 100 + i as u64),
        );
        // Batch 2 where concat slices are strided views; 1 elsewhere (the
        // big nets' interpreter time is spent per weight, per image).
        let has_concat = c
            .graph
            .schedule()
            .iter()
            .any(|&n| matches!(c.graph.node(n).op, Op::Concat { .. }));
        let mut shape = vec![if has_concat { 2 } else { 1 }];
        shape.extend(c.graph.input_shape());
        let x = random_tensor(&shape, 7 + i as u64);
        let reference = resnetc::interp::run(&c.graph, &w, &x).expect("reference runs");
        assert!(
            reference.data.iter().all(|v| v.is_finite()),
            "{name}: reference not finite"
        );
        let opt = optimized(&c.graph);
        let y = resnetc::interp::run(&opt, &w, &x).expect("optimized runs");
        assert_close(&format!("{name} optimized"), &y, &reference, 1e-5, 1e-3);
        let planned = resnetc::interp::run_planned(&opt, &w, &x)
            .expect("runs")
            .expect("planned");
        assert_close(
            &format!("{name} in the arena"),
            &planned,
            &reference,
            1e-5,
            1e-3,
        );
        println!("{name}: {:.1?}", t0.elapsed());
    }
}

#[test]
fn folding_traps_keep_the_numbers() {
    let path = root().join("tests/ir_cases/fold_traps.res");
    let c = compile_file(&path).expect("compiles");
    let w = random_weights(&specs_of(&c.graph), 3);
    let x = random_tensor(&[3, 4, 12, 12], 11);
    let reference = resnetc::interp::run(&c.graph, &w, &x).expect("runs");
    let opt = optimized(&c.graph);
    let y = resnetc::interp::run(&opt, &w, &x).expect("runs");
    assert_close("fold_traps", &y, &reference, 1e-5, 1e-3);
    let planned = resnetc::interp::run_planned(&opt, &w, &x)
        .expect("runs")
        .expect("planned");
    assert_close("fold_traps in the arena", &planned, &reference, 1e-5, 1e-3);
    let ops = op_counts(&opt);
    // b1 folds into c1 (with its bias), b4 cannot (raw is used twice), b2
    // follows a ReLU and b3 a concat; b3+relu becomes c2's prologue.
    assert_eq!(ops.get("batchnorm"), None, "{ops:?}");
    assert_eq!(
        ops.get("affine"),
        Some(&2),
        "b2 and b4 stay standalone: {ops:?}"
    );
    assert_eq!(ops.get("dropout").or(ops.get("identity")), None);
}

#[test]
fn residual_nets_have_no_standalone_bn_add_or_relu() {
    for name in [
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet101",
        "resnet152",
        "cifar_resnet20",
        "cifar_resnet56",
        "cifar_resnet110",
        "cifar_plain20",
        "cifar_plain56",
        "unet_small",
    ] {
        let ops = op_counts(&optimized(&compile_example(name).graph));
        for op in ["batchnorm", "add", "relu", "affine"] {
            assert!(!ops.contains_key(op), "{name} still has {op}: {ops:?}");
        }
    }
}

#[test]
fn dense_and_unet_concats_copy_nothing() {
    for name in ["densenet121", "densenet_bc_small", "unet_small", "unet"] {
        let ops = op_counts(&optimized(&compile_example(name).graph));
        assert!(
            !ops.contains_key("concat"),
            "{name} has a copying concat: {ops:?}"
        );
        assert!(ops["concat_in_place"] > 0, "{name}: {ops:?}");
    }
}

#[test]
fn densenet121_arena_is_at_most_a_third_of_the_naive_sum() {
    let g = optimized(&compile_example("densenet121").graph);
    let plan = g.plan.as_ref().expect("planned");
    assert!(
        plan.arena_bytes * 3 <= plan.naive_bytes,
        "arena {} vs naive {}",
        plan.arena_bytes,
        plan.naive_bytes
    );
}

/// Buffers alive at the same time never overlap in the arena.
#[test]
fn live_buffers_never_overlap() {
    for (name, c) in examples_small() {
        let g = optimized(&c.graph);
        let plan = g.plan.as_ref().expect("planned");
        for (i, a) in plan.buffers.iter().enumerate() {
            assert_eq!(a.offset % 64, 0, "{name}: buffer {i} misaligned");
            assert!(a.offset + a.bytes <= plan.arena_bytes);
            for b in &plan.buffers[i + 1..] {
                let live_together = a.first <= b.last && b.first <= a.last;
                let overlap = a.offset < b.offset + b.bytes && b.offset < a.offset + a.bytes;
                assert!(!(live_together && overlap), "{name}: {a:?} overlaps {b:?}");
            }
        }
    }
}

fn ir_after(case: &str, pass: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/ir_cases")
        .join(format!("{case}.res"));
    let c = compile_file(&path).unwrap_or_else(|e| panic!("{case}: {}", e.render_plain()));
    let mut g = c.graph.clone();
    passes::optimize(&mut g, Some(pass));
    resnetc::ir::print::print(&g)
}

#[test]
fn ir_after_each_pass() {
    for case in [
        "basic_block",
        "bottleneck",
        "dense_block",
        "unet_up",
        "se_block",
    ] {
        for pass in passes::names() {
            insta::assert_snapshot!(format!("{case}__after_{pass}"), ir_after(case, pass));
        }
    }
}

/// A conv followed by two batchnorms folds both (found by the property test:
/// the second fold's constants clashed with the first's names).
#[test]
fn two_batchnorms_after_a_conv_fold_twice() {
    let text = "model m(x: f32[N, 3, 6, 6]) {\n    x |> c0: conv(4, k: 3, pad: 1, bias: true) |> n1: batchnorm() |> n2: batchnorm()\n}\n";
    let c = resnetc::front::compile_source("twice.res", text, None).expect("compiles");
    let opt = optimized(&c.graph);
    assert!(!op_counts(&opt).contains_key("batchnorm"));
    let w = random_weights(&specs_of(&c.graph), 1);
    let x = random_tensor(&[2, 3, 6, 6], 1);
    let reference = resnetc::interp::run(&c.graph, &w, &x).expect("runs");
    let y = resnetc::interp::run(&opt, &w, &x).expect("runs");
    assert_close("two BNs", &y, &reference, 1e-5, 1e-3);
}

/// For each conv with a fused residual add: whether its output shares the
/// residual's buffer.
fn residual_in_place(g: &Graph) -> Vec<(String, bool)> {
    let plan = g.plan.as_ref().expect("planned");
    g.schedule()
        .into_iter()
        .filter_map(|n| {
            let Op::Conv { fused, .. } = &g.node(n).op else {
                return None;
            };
            let z = g.operands(n)[fused.operands().residual?];
            let name = g.node(n).name.clone();
            Some((name, plan.storage[&n].buffer == plan.storage[&z].buffer))
        })
        .collect()
}

/// A conv whose residual dies with it writes the sum over the residual's
/// buffer; one whose residual is read again later, or is also its input,
/// does not. Each graph gives the unplanned numbers inside the arena.
#[test]
fn a_dying_residual_becomes_the_sum() {
    let cases = [
        // Two bottleneck-like blocks: both sums in place.
        (
            "block b(x) {\n    let y = x |> c1: conv(8, k: 1) |> relu() |> c2: conv(8, k: 3, pad: 1)\n    relu(y + x)\n}\nmodel m(x: f32[N, 8, 6, 6]) {\n    x |> c0: conv(8, k: 1) |> one: b() |> two: b()\n}\n",
            vec![("one.c2", true), ("two.c2", true)],
        ),
        // The residual is the conv's own input: never in place.
        (
            "model m(x: f32[N, 8, 6, 6]) {\n    let a = x |> c0: conv(8, k: 1)\n    let y = a |> c1: conv(8, k: 3, pad: 1)\n    y + a\n}\n",
            vec![("c1", false)],
        ),
        // The residual is read again by a later conv: only that one sums in place.
        (
            "model m(x: f32[N, 8, 6, 6]) {\n    let a = x |> c0: conv(8, k: 1)\n    let b = a |> c1: conv(8, k: 1)\n    let z = b + a\n    let d = z |> c2: conv(8, k: 1)\n    d + a\n}\n",
            vec![("c1", false), ("c2", true)],
        ),
    ];
    for (i, (text, want)) in cases.into_iter().enumerate() {
        let c = resnetc::front::compile_source("in_place.res", text, None)
            .unwrap_or_else(|e| panic!("case {i}: {}", e.render_plain()));
        let opt = optimized(&c.graph);
        let got = residual_in_place(&opt);
        let want: Vec<(String, bool)> = want.into_iter().map(|(n, b)| (n.to_string(), b)).collect();
        assert_eq!(got, want, "case {i}");
        let w = random_weights(&specs_of(&c.graph), 3 + i as u64);
        let x = random_tensor(&[2, 8, 6, 6], 5 + i as u64);
        let reference = resnetc::interp::run(&c.graph, &w, &x).expect("runs");
        let planned = resnetc::interp::run_planned(&opt, &w, &x)
            .expect("runs")
            .expect("planned");
        assert_close(
            &format!("case {i} planned"),
            &planned,
            &reference,
            1e-5,
            1e-3,
        );
    }
}
