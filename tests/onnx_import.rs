//! `resnetc import`: ONNX files PyTorch wrote (tests/fixtures/*.onnx, BN
//! folded into the convs by the exporter) must import to models that give
//! PyTorch's outputs; every example exported by `resnetc export` must come
//! back as the same network with the same weights; broken or unsupported
//! files must fail with a message, never a panic.

mod common;
use common::*;
use prost::Message;
use resnetc::import::onnx_proto as pb;
use resnetc::import::{import, ImportError, LiftOptions};
use resnetc::weights::{random_weights, read_npy, specs_of};
use std::collections::BTreeMap;
use std::process::Command;

const PYTORCH_CASES: [&str; 4] = [
    "cifar_resnet20",
    "cifar_plain20",
    "densenet_bc_small",
    "unet_small",
];

fn import_fixture(name: &str) -> resnetc::import::Imported {
    let path = fixture(&format!("{name}.onnx"));
    let bytes = std::fs::read(&path).expect("fixture");
    import(
        &bytes,
        &path.display().to_string(),
        name,
        &LiftOptions::default(),
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn compile(name: &str, text: &str) -> resnetc::front::Compiled {
    resnetc::front::compile_source(name, text, None)
        .unwrap_or_else(|e| panic!("{name}: {}\n{text}", e.render_plain()))
}

fn optimized(g: &resnetc::ir::Graph) -> resnetc::ir::Graph {
    let mut o = g.clone();
    resnetc::passes::optimize(&mut o, None);
    o
}

/// How many nodes of each kind a graph has.
fn op_counts(g: &resnetc::ir::Graph) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for n in g.schedule() {
        *m.entry(g.node(n).op.kind().to_string()).or_default() += 1;
    }
    m
}

#[test]
fn pytorch_exports_import_and_match_pytorch() {
    for name in PYTORCH_CASES {
        let imp = import_fixture(name);
        assert!(imp.structured, "{name}: fell back to a flat model");
        let c = compile(name, &imp.res);
        // The weights the import wrote bind strictly to the model it wrote.
        let w = resnetc::weights::bind(&specs_of(&c.graph), imp.weights.clone(), name)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let x = read_npy(&fixture(&format!("{name}.input.npy"))).expect("input");
        let expected = read_npy(&fixture(&format!("{name}.output.npy"))).expect("output");
        let y = resnetc::interp::run(&c.graph, &w, &x).expect("interpreter");
        assert_close(&format!("{name} (ref)"), &y, &expected, 1e-4, 1e-3);
        let opts = resnetc::backend::cpu::CpuOptions {
            cpu: "x86-64-v3".into(),
            ..Default::default()
        };
        let y = resnetc::backend::cpu::run_jit(&optimized(&c.graph), &w, &x, &opts).expect("cpu");
        assert_close(&format!("{name} (cpu)"), &y, &expected, 1e-4, 1e-3);
    }
}

#[test]
fn state_dict_names_are_kept() {
    // Tensors the exporter did not fold keep their state_dict keys, and the
    // folded ones are named by their module path, as the .res declares them.
    let imp = import_fixture("densenet_bc_small");
    let torch = resnetc::weights::load_safetensors(&fixture("densenet_bc_small.safetensors"))
        .expect("fixture");
    for (k, t) in &imp.weights {
        if let Some(orig) = torch.get(k) {
            if k.contains("norm1") || k.contains("conv2") || k.starts_with("classifier") {
                assert_eq!(orig, t, "{k}: the values of the initializer");
            }
        } else {
            assert!(
                k.ends_with(".bias"),
                "{k}: neither a state_dict key nor a folded bias"
            );
        }
    }
    assert!(imp
        .weights
        .contains_key("features.denseblock1.denselayer1.conv1.weight"));
    assert!(imp
        .weights
        .contains_key("features.denseblock1.denselayer1.conv1.bias"));
}

#[test]
fn repeated_modules_become_blocks() {
    let imp = import_fixture("cifar_resnet20");
    let text = &imp.res;
    // The three stages as sequences of one residual block, not 19 convs.
    assert!(text.contains("layer1: [3 * "), "{text}");
    assert!(text.contains("layer2: ["), "{text}");
    assert_eq!(text.matches("block ").count(), 2, "{text}");
    assert!(text.lines().count() < 45, "{text}");
    let d = import_fixture("densenet_bc_small").res;
    assert!(d.contains("block denselayer(x)"), "{d}");
    // Each dense block is a loop over that layer.
    assert!(
        d.contains("for i in 1..=4 {\n        features = concat(features, \"denselayer{i}\": denselayer(features))"),
        "{d}"
    );
    assert!(d.contains("\"features.denseblock3\": denseblock()"), "{d}");
    let u = import_fixture("unet_small").res;
    assert!(u.contains("up1: up(down3, 128)"), "{u}");
}

/// export → import gives back every example: the same weights (names and
/// values), the same optimized graph (op counts), the same outputs, and
/// exporting the import again writes the same ONNX operators.
#[test]
fn export_then_import_round_trips_every_example() {
    let (mut checked, mut numeric) = (0, 0);
    for (i, (name, c)) in examples_small().into_iter().enumerate() {
        let w = tame_residuals(&c.graph, random_weights(&specs_of(&c.graph), 40 + i as u64));
        let bytes = resnetc::export::onnx::export(&c.graph, &w).expect("exports");
        let imp = import(
            &bytes,
            &format!("{name}.onnx"),
            &name,
            &LiftOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(imp.structured, "{name}: fell back to a flat model");
        if name.starts_with("densenet") {
            assert!(
                imp.res.contains("for i in 1..="),
                "{name}: no dense loop\n{}",
                imp.res
            );
        }
        assert_eq!(imp.weights, w, "{name}: weights");
        let back = compile(&name, &imp.res);
        assert_eq!(
            op_counts(&optimized(&back.graph)),
            op_counts(&optimized(&c.graph)),
            "{name}: op counts after the passes"
        );
        // The same numbers, on the smaller nets (the interpreter's time).
        if c.graph.weights().len() < 300 {
            let mut shape = vec![1];
            shape.extend(c.graph.input_shape());
            let x = random_tensor(&shape, i as u64);
            let want = resnetc::interp::run(&c.graph, &w, &x).expect("interpreter");
            let got = resnetc::interp::run(&back.graph, &imp.weights, &x).expect("interpreter");
            assert_close(&format!("{name} imported"), &got, &want, 1e-6, 1e-5);
            numeric += 1;
        }
        let again = resnetc::export::onnx::export(&back.graph, &imp.weights).expect("exports");
        assert_eq!(onnx_ops(&again), onnx_ops(&bytes), "{name}: ONNX operators");
        checked += 1;
    }
    assert!(
        checked >= 18 && numeric >= 8,
        "only {checked} examples, {numeric} run"
    );
}

fn onnx_ops(bytes: &[u8]) -> BTreeMap<String, usize> {
    let m = pb::ModelProto::decode(bytes).expect("decodes");
    let mut c = BTreeMap::new();
    for n in m.graph.expect("graph").node {
        *c.entry(n.op_type.unwrap_or_default()).or_default() += 1;
    }
    c
}

fn fixture_model(name: &str) -> pb::ModelProto {
    pb::ModelProto::decode(&*std::fs::read(fixture(&format!("{name}.onnx"))).expect("read"))
        .expect("decodes")
}

fn try_import(
    m: &pb::ModelProto,
    opts: &LiftOptions,
) -> Result<resnetc::import::Imported, ImportError> {
    import(&m.encode_to_vec(), "edited.onnx", "edited", opts)
}

#[test]
fn unsupported_nodes_are_all_listed_by_name() {
    let mut m = fixture_model("cifar_resnet20");
    let g = m.graph.as_mut().expect("graph");
    g.node[1].op_type = Some("Tanh".into());
    g.node[5].op_type = Some("GridSample".into());
    let (a, b) = (
        g.node[1].name.clone().unwrap(),
        g.node[5].name.clone().unwrap(),
    );
    match try_import(&m, &LiftOptions::default()) {
        Err(ImportError::Unsupported { items, .. }) => {
            let nodes: Vec<&str> = items.iter().map(|u| u.node.as_str()).collect();
            assert_eq!(nodes, [a.as_str(), b.as_str()], "{items:?}");
            assert!(items[0].reason.contains("activation"), "{items:?}");
        }
        other => panic!("expected an unsupported-op error, got {other:?}"),
    }
}

#[test]
fn asymmetric_padding_is_refused_with_the_reason() {
    let mut m = fixture_model("cifar_resnet20");
    let g = m.graph.as_mut().expect("graph");
    let pads = g.node[0]
        .attribute
        .iter_mut()
        .find(|a| a.name.as_deref() == Some("pads"))
        .expect("pads");
    pads.ints = vec![1, 1, 2, 2];
    let e = try_import(&m, &LiftOptions::default()).expect_err("asymmetric");
    assert!(e.to_string().contains("not the same on every side"), "{e}");
}

#[test]
fn open_image_sizes_need_an_input_shape() {
    use pb::tensor_shape_proto::dimension::Value;
    let mut m = fixture_model("cifar_resnet20");
    let g = m.graph.as_mut().expect("graph");
    let Some(pb::type_proto::Value::TensorType(t)) =
        g.input[0].r#type.as_mut().unwrap().value.as_mut()
    else {
        panic!("tensor input")
    };
    for d in &mut t.shape.as_mut().unwrap().dim[2..] {
        d.value = Some(Value::DimParam("size".into()));
    }
    let e = try_import(&m, &LiftOptions::default()).expect_err("open sizes");
    assert!(e.to_string().contains("leaves axis 2"), "{e}");
    let opts = LiftOptions {
        input_shape: Some(vec![1, 3, 32, 32]),
    };
    let imp = try_import(&m, &opts).expect("with --input-shape");
    assert!(imp.res.contains("x: f32[N, 3, 32, 32]"));
    let bad = LiftOptions {
        input_shape: Some(vec![1, 4, 32, 32]),
    };
    assert!(
        try_import(&m, &bad).is_err(),
        "3 channels declared, 4 given"
    );
}

#[test]
fn tensor_data_must_match_its_shape() {
    let mut m = fixture_model("cifar_resnet20");
    let g = m.graph.as_mut().expect("graph");
    let t = &mut g.initializer[0];
    // Claim far more elements than there are bytes: refused before allocating.
    t.dims = vec![1 << 20, 1 << 20, 1 << 10];
    let e = try_import(&m, &LiftOptions::default()).expect_err("short data");
    assert!(matches!(e, ImportError::Decode { .. }), "{e:?}");
    assert!(e.to_string().contains("bytes of data"), "{e}");
    t_negative(&mut m);
}

fn t_negative(m: &mut pb::ModelProto) {
    m.graph.as_mut().unwrap().initializer[0].dims = vec![-1, 10];
    let e = try_import(m, &LiftOptions::default()).expect_err("negative dim");
    assert!(e.to_string().contains("invalid shape"), "{e}");
}

#[test]
fn truncated_and_corrupt_files_fail_cleanly() {
    let bytes = std::fs::read(fixture("densenet_bc_small.onnx")).expect("read");
    let opts = LiftOptions::default();
    let cuts = (0..bytes.len())
        .step_by(1531)
        .chain(bytes.len() - 64..bytes.len());
    for cut in cuts {
        assert!(
            import(&bytes[..cut], "cut.onnx", "cut", &opts).is_err(),
            "cut at {cut} imported"
        );
    }
    // Flipped bytes: an error or (where only data changed) a model, never a panic.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..200 {
        let mut b = bytes.clone();
        for _ in 0..4 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let i = (state % b.len() as u64) as usize;
            b[i] ^= (state >> 32) as u8 | 1;
        }
        let _ = import(&b, "flipped.onnx", "flipped", &opts);
    }
}

fn resnetc(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_resnetc"))
        .args(args)
        .env("COLUMNS", "400")
        .output()
        .expect("resnetc runs")
}

#[test]
fn cli_imports_runs_and_writes_nothing_on_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (res, w, y) = (
        dir.path().join("r20.res"),
        dir.path().join("r20.safetensors"),
        dir.path().join("y.npy"),
    );
    let onnx = fixture("cifar_resnet20.onnx");
    let s = |p: &std::path::Path| p.display().to_string();
    let o = resnetc(&["import", &s(&onnx), "-o", &s(&res)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(w.exists(), "the weights go beside the model by default");
    let input = fixture("cifar_resnet20.input.npy");
    let o = resnetc(&[
        "run",
        &s(&res),
        "--weights",
        &s(&w),
        "--input",
        &s(&input),
        "--output",
        &s(&y),
        "--target",
        "ref",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let expected = read_npy(&fixture("cifar_resnet20.output.npy")).expect("output");
    assert_close(
        "cli import + run",
        &read_npy(&y).expect("y"),
        &expected,
        1e-4,
        1e-3,
    );

    // An unsupported node: exit 1, the node named, no file written.
    let mut m = fixture_model("cifar_resnet20");
    m.graph.as_mut().unwrap().node[3].op_type = Some("Erf".into());
    let bad = dir.path().join("bad.onnx");
    std::fs::write(&bad, m.encode_to_vec()).expect("write");
    let (out2, w2) = (
        dir.path().join("bad.res"),
        dir.path().join("bad.w.safetensors"),
    );
    let o = resnetc(&[
        "import",
        &s(&bad),
        "-o",
        &s(&out2),
        "--weights-out",
        &s(&w2),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("Erf") && err.contains("/layer1/layer1.0/relu/Relu"),
        "{err}"
    );
    assert!(!out2.exists() && !w2.exists(), "nothing written on failure");

    // A truncated file: a decode error, exit 1.
    let bytes = std::fs::read(&onnx).expect("read");
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).expect("write");
    let o = resnetc(&["import", &s(&bad), "-o", &s(&out2)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a valid ONNX model"));
    assert!(!out2.exists());

    // `check` and `summary` on an ONNX file point to `import`.
    for cmd in ["check", "summary"] {
        let o = resnetc(&[cmd, &s(&onnx)]);
        assert_eq!(o.status.code(), Some(1), "{cmd}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("is an ONNX model") && err.contains("resnetc import"),
            "{cmd}: {err}"
        );
    }
}

#[test]
fn export_refuses_models_past_two_gib() {
    // 8192 x 8192 x 3 x 3 x 4 bytes = 2.25 GiB of weights: refused from the
    // shapes alone, before any weight is read.
    let c = compile(
        "big",
        "model big(x: f32[N, 8192, 4, 4]) { x |> c: conv(8192, k: 3, pad: 1) }",
    );
    let e = resnetc::export::onnx::export(&c.graph, &Default::default()).expect_err("too large");
    assert!(e.to_string().contains("2 GiB"), "{e}");
}

/// The dynamo exporter names nodes `node_Conv_3` and records the module in
/// `metadata_props` (`pkg.torch.onnx.name_scopes`): the same file written
/// that way must import to the same `.res`.
#[test]
fn dynamo_name_scopes_give_the_same_structure() {
    let mut m = fixture_model("cifar_resnet20");
    for (k, n) in m.graph.as_mut().unwrap().node.iter_mut().enumerate() {
        let path = resnetc::import::names::module_path(n.name.as_deref().unwrap_or(""));
        let mut scopes = vec![String::new()];
        for i in 1..=path.len() {
            scopes.push(path[..i].join("."));
        }
        scopes.push("aten_op".into());
        let list: Vec<String> = scopes.iter().map(|s| format!("'{s}'")).collect();
        n.metadata_props.push(pb::StringStringEntryProto {
            key: Some("pkg.torch.onnx.name_scopes".into()),
            value: Some(format!("[{}]", list.join(", "))),
        });
        n.name = Some(format!("node_{}_{k}", n.op_type.as_deref().unwrap_or("")));
    }
    let dynamo = try_import(&m, &LiftOptions::default()).expect("imports");
    let torchscript =
        try_import(&fixture_model("cifar_resnet20"), &LiftOptions::default()).expect("imports");
    assert_eq!(dynamo.res, torchscript.res);
    assert_eq!(dynamo.weights, torchscript.weights);
}

/// Structured mutations of a small valid model (the fuzz target's seeds):
/// other operators, missing inputs, wild attribute values, lying tensor
/// shapes. Every one must import or fail with an error, never panic.
#[test]
fn structured_mutations_never_panic() {
    let seeds = ["tiny.onnx", "onnx_ops.onnx"].map(|s| {
        pb::ModelProto::decode(
            &*std::fs::read(root().join("fuzz/seeds/onnx").join(s)).expect("seed"),
        )
        .expect("decodes")
    });
    let ops = [
        "Conv",
        "ConvTranspose",
        "BatchNormalization",
        "Relu",
        "Clip",
        "LeakyRelu",
        "Add",
        "Mul",
        "Sub",
        "Concat",
        "MaxPool",
        "AveragePool",
        "GlobalAveragePool",
        "ReduceMean",
        "Flatten",
        "Reshape",
        "Gemm",
        "MatMul",
        "Resize",
        "Upsample",
        "Pad",
        "Slice",
        "Shape",
        "Gather",
        "Unsqueeze",
        "Squeeze",
        "Transpose",
        "Cast",
        "Identity",
        "Dropout",
        "Softmax",
        "Constant",
        "ConstantOfShape",
    ];
    let wild = [0i64, 1, 2, 3, -1, -7, 1 << 20, 1 << 40, i64::MAX, i64::MIN];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n.max(1) as u64) as usize
    };
    let (mut ok, mut err) = (0, 0);
    let rounds = std::env::var("ONNX_MUTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500);
    for round in 0..rounds {
        let mut m = seeds[round % 2].clone();
        let g = m.graph.as_mut().unwrap();
        for _ in 0..1 + next(3) {
            let k = next(g.node.len());
            match next(6) {
                0 => g.node[k].op_type = Some(ops[next(ops.len())].into()),
                1 => {
                    let len = g.node[k].input.len();
                    g.node[k].input.truncate(next(len + 1));
                }
                2 => {
                    if let Some(a) = g.node[k].attribute.get_mut(next(4)) {
                        a.i = Some(wild[next(wild.len())]);
                        for v in a.ints.iter_mut() {
                            *v = wild[next(wild.len())];
                        }
                    }
                }
                3 => {
                    let i = next(g.initializer.len());
                    if let Some(t) = g.initializer.get_mut(i) {
                        let d = next(t.dims.len() + 1);
                        if d < t.dims.len() {
                            t.dims[d] = wild[next(wild.len())];
                        } else {
                            t.dims.push(wild[next(wild.len())]);
                        }
                    }
                }
                4 => {
                    // Rewire an input to another tensor of the graph.
                    let names: Vec<String> = g.node.iter().flat_map(|n| n.output.clone()).collect();
                    if let Some(slot) = g.node[k].input.first_mut() {
                        *slot = names[next(names.len())].clone();
                    }
                }
                _ => {
                    g.node.remove(k);
                }
            }
        }
        match try_import(&m, &LiftOptions::default()) {
            Ok(_) => ok += 1,
            Err(e) => {
                assert!(!e.to_string().is_empty());
                err += 1;
            }
        }
    }
    assert!(ok > 0 && err > 0, "{ok} imported, {err} refused");
}

fn node(op: &str, name: &str, inputs: &[&str], output: &str) -> pb::NodeProto {
    pb::NodeProto {
        op_type: Some(op.into()),
        name: Some(name.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        ..Default::default()
    }
}

fn int64s(name: &str, dims: &[i64], v: &[i64]) -> pb::TensorProto {
    pb::TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(pb::tensor_proto::DataType::Int64 as i32),
        int64_data: v.to_vec(),
        ..Default::default()
    }
}

/// What `x.view(x.size(0), -1)` and a linear layer as MatMul + Add look
/// like in an export: Shape → Gather → Unsqueeze → Concat → Reshape, and
/// MatMul by the transposed weight then Add of the bias. Folded at import,
/// the model still gives PyTorch's output, the layer named by its module.
#[test]
fn shape_arithmetic_and_matmul_add_fold() {
    let mut m = fixture_model("cifar_resnet20");
    let g = m.graph.as_mut().unwrap();
    let flat = g
        .node
        .iter()
        .position(|n| n.op_type.as_deref() == Some("Flatten"))
        .unwrap();
    let (x, y) = (
        g.node[flat].input[0].clone(),
        g.node[flat].output[0].clone(),
    );
    let chain = vec![
        node("Shape", "/Shape", &[&x], "s"),
        node("Gather", "/Gather", &["s", "zero"], "b"),
        node("Unsqueeze", "/Unsqueeze", &["b", "axes0"], "b1"),
        node("Concat", "/Concat", &["b1", "minus1"], "target"),
        node("Reshape", "/Reshape", &[&x, "target"], &y),
    ];
    let mut chain = chain;
    chain[3].attribute.push(pb::AttributeProto {
        name: Some("axis".into()),
        r#type: Some(pb::attribute_proto::AttributeType::Int as i32),
        i: Some(0),
        ..Default::default()
    });
    g.node.splice(flat..=flat, chain);
    g.initializer.push(int64s("zero", &[], &[0]));
    g.initializer.push(int64s("axes0", &[1], &[0]));
    g.initializer.push(int64s("minus1", &[1], &[-1]));
    let gemm = g
        .node
        .iter()
        .position(|n| n.op_type.as_deref() == Some("Gemm"))
        .unwrap();
    let out = g.node[gemm].output[0].clone();
    let w = g
        .initializer
        .iter()
        .position(|t| t.name.as_deref() == Some("fc.weight"))
        .unwrap();
    let (rows, cols) = (
        g.initializer[w].dims[0] as usize,
        g.initializer[w].dims[1] as usize,
    );
    let raw = g.initializer[w].raw_data.clone().unwrap();
    let mut t = vec![0u8; raw.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[(c * rows + r) * 4..][..4].copy_from_slice(&raw[(r * cols + c) * 4..][..4]);
        }
    }
    g.initializer.push(pb::TensorProto {
        name: Some("onnx::MatMul_99".into()),
        dims: vec![cols as i64, rows as i64],
        data_type: Some(pb::tensor_proto::DataType::Float as i32),
        raw_data: Some(t),
        ..Default::default()
    });
    g.node.splice(
        gemm..=gemm,
        [
            node("MatMul", "/fc/MatMul", &[&y, "onnx::MatMul_99"], "mm"),
            node("Add", "/fc/Add", &["mm", "fc.bias"], &out),
        ],
    );
    let imp = try_import(&m, &LiftOptions::default()).expect("imports");
    assert!(
        imp.res.contains("flatten()") && imp.res.contains("fc: linear(10)"),
        "{}",
        imp.res
    );
    let c = compile("folded", &imp.res);
    let x = read_npy(&fixture("cifar_resnet20.input.npy")).expect("input");
    let expected = read_npy(&fixture("cifar_resnet20.output.npy")).expect("output");
    let y = resnetc::interp::run(&c.graph, &imp.weights, &x).expect("interpreter");
    assert_close("shape arithmetic + MatMul/Add", &y, &expected, 1e-4, 1e-3);
}

/// `F.pad` in front of a conv becomes the conv's own padding.
#[test]
fn zero_pad_folds_into_the_next_conv() {
    let mut m = fixture_model("cifar_resnet20");
    let g = m.graph.as_mut().unwrap();
    let conv = &mut g.node[0];
    assert_eq!(conv.op_type.as_deref(), Some("Conv"));
    let x = conv.input[0].clone();
    conv.input[0] = "padded".into();
    for a in &mut conv.attribute {
        if a.name.as_deref() == Some("pads") {
            a.ints = vec![0, 0, 0, 0];
        }
    }
    g.node
        .insert(0, node("Pad", "/pad/Pad", &[&x, "pads"], "padded"));
    g.initializer
        .push(int64s("pads", &[8], &[0, 0, 1, 1, 0, 0, 1, 1]));
    let imp = try_import(&m, &LiftOptions::default()).expect("imports");
    assert!(
        imp.res
            .contains("conv1: conv(16, k: 3, pad: 1, bias: true)"),
        "{}",
        imp.res
    );
    let c = compile("padded", &imp.res);
    let x = read_npy(&fixture("cifar_resnet20.input.npy")).expect("input");
    let expected = read_npy(&fixture("cifar_resnet20.output.npy")).expect("output");
    let y = resnetc::interp::run(&c.graph, &imp.weights, &x).expect("interpreter");
    assert_close("Pad + Conv", &y, &expected, 1e-4, 1e-3);
    // One-sided padding cannot be said in .res: refused, the node named.
    let g = m.graph.as_mut().unwrap();
    let p = g
        .initializer
        .iter_mut()
        .find(|t| t.name.as_deref() == Some("pads"))
        .unwrap();
    p.int64_data = vec![0, 0, 0, 0, 0, 0, 1, 1];
    let e = try_import(&m, &LiftOptions::default()).expect_err("one-sided");
    assert!(
        e.to_string().contains("/conv1/Conv")
            && e.to_string().contains("not the same on every side"),
        "{e}"
    );
}

/// PyTorch's `F.pad` at opset 11+ when the exporter does not fold it: the
/// pad list extended with zeros, reshaped to pairs, reversed, transposed
/// and flattened into ONNX's order. Folded at import to the conv's padding.
#[test]
fn pytorch_pad_arithmetic_folds() {
    let mut m = fixture_model("cifar_resnet20");
    let g = m.graph.as_mut().unwrap();
    let conv = &mut g.node[0];
    let x = conv.input[0].clone();
    conv.input[0] = "padded".into();
    for a in &mut conv.attribute {
        if a.name.as_deref() == Some("pads") {
            a.ints = vec![0, 0, 0, 0];
        }
    }
    let mut zeros = node(
        "ConstantOfShape",
        "/pad/ConstantOfShape",
        &["four"],
        "zeros",
    );
    zeros.attribute.push(pb::AttributeProto {
        name: Some("value".into()),
        r#type: Some(pb::attribute_proto::AttributeType::Tensor as i32),
        t: Some(int64s("", &[1], &[0])),
        ..Default::default()
    });
    let mut cat = node("Concat", "/pad/Concat", &["torch_pads", "zeros"], "all");
    cat.attribute.push(pb::AttributeProto {
        name: Some("axis".into()),
        r#type: Some(pb::attribute_proto::AttributeType::Int as i32),
        i: Some(0),
        ..Default::default()
    });
    let chain = vec![
        zeros,
        cat,
        node("Reshape", "/pad/Reshape", &["all", "pairs"], "p2"),
        node(
            "Slice",
            "/pad/Slice",
            &["p2", "start", "end", "axis0", "back"],
            "rev",
        ),
        node("Transpose", "/pad/Transpose", &["rev"], "tr"),
        node("Reshape", "/pad/Reshape_1", &["tr", "flat"], "onnx_pads"),
        node("Pad", "/pad/Pad", &[&x, "onnx_pads"], "padded"),
    ];
    g.node.splice(0..0, chain);
    // F.pad(x, (left, right, top, bottom)) = (1, 1, 1, 1).
    for t in [
        int64s("four", &[1], &[4]),
        int64s("torch_pads", &[4], &[1, 1, 1, 1]),
        int64s("pairs", &[2], &[-1, 2]),
        int64s("start", &[1], &[-1]),
        int64s("end", &[1], &[-i64::MAX]),
        int64s("axis0", &[1], &[0]),
        int64s("back", &[1], &[-1]),
        int64s("flat", &[1], &[-1]),
    ] {
        g.initializer.push(t);
    }
    let imp = try_import(&m, &LiftOptions::default()).expect("imports");
    assert!(
        imp.res
            .contains("conv1: conv(16, k: 3, pad: 1, bias: true)"),
        "{}",
        imp.res
    );
    let c = compile("torch_pad", &imp.res);
    let x = read_npy(&fixture("cifar_resnet20.input.npy")).expect("input");
    let expected = read_npy(&fixture("cifar_resnet20.output.npy")).expect("output");
    let y = resnetc::interp::run(&c.graph, &imp.weights, &x).expect("interpreter");
    assert_close("F.pad arithmetic + Conv", &y, &expected, 1e-4, 1e-3);
}

/// Weights kept as ONNX external data (what PyTorch's dynamo exporter
/// writes: `location` beside the model, `offset`, `length`) import to the
/// same weights as when they are inside the file; a location that leaves
/// the model's directory, or a range past the end of the file, is refused.
#[test]
fn external_data_imports_and_is_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inside = import_fixture("cifar_resnet20");
    let mut m = fixture_model("cifar_resnet20");
    let mut blob = Vec::new();
    let entry = |k: &str, v: String| pb::StringStringEntryProto {
        key: Some(k.into()),
        value: Some(v),
    };
    let g = m.graph.as_mut().expect("graph");
    let mut moved = 0;
    for t in &mut g.initializer {
        if let Some(raw) = t.raw_data.take() {
            t.data_location = Some(pb::tensor_proto::DataLocation::External as i32);
            t.external_data = vec![
                entry("location", "w.bin".into()),
                entry("offset", blob.len().to_string()),
                entry("length", raw.len().to_string()),
            ];
            blob.extend(raw);
            moved += 1;
        }
    }
    assert!(moved > 10, "only {moved} initializers moved");
    std::fs::write(dir.path().join("w.bin"), &blob).expect("write");
    let model = dir.path().join("m.onnx");
    let path = model.display().to_string();
    let bytes = m.encode_to_vec();
    let outside = import(&bytes, &path, "m", &LiftOptions::default()).expect("imports");
    assert_eq!(outside.weights.len(), inside.weights.len());
    for (k, t) in &inside.weights {
        assert_eq!(outside.weights[k].data, t.data, "{k}");
    }
    // A location out of the directory, and a range past the file's end.
    for (key, value, says) in [
        ("location", "../w.bin", "leaves the model's directory"),
        ("length", "999999999", "runs past the end"),
    ] {
        let mut bad = m.clone();
        let t = &mut bad.graph.as_mut().expect("graph").initializer[0];
        for e in &mut t.external_data {
            if e.key.as_deref() == Some(key) {
                e.value = Some(value.into());
            }
        }
        let err = import(&bad.encode_to_vec(), &path, "m", &LiftOptions::default())
            .err()
            .unwrap_or_else(|| panic!("{key} = {value} imported"));
        assert!(err.to_string().contains(says), "{err}");
    }
}
