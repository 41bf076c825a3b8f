//! Blocks as values (a block parameter takes a block, with arguments given
//! ahead: `layer(bottleneck(se_reduction: 4), 64, 3)`) and `if` as a
//! sequence item or pipeline stage: each written form against the same
//! network written without it, which must declare the same weights and,
//! through the interpreter, compute the same numbers.

mod common;
use common::*;
use resnetc::front::{compile_source_with, Compiled, Options};
use resnetc::weights::{random_weights, specs_of};

fn compile(text: &str) -> Compiled {
    let dir = root().join("examples");
    compile_source_with("m.res", text, Some(&dir), &Options::default())
        .unwrap_or_else(|e| panic!("{}", e.render_plain()))
}

/// Same weights (names, shapes, order) and the same output on one input.
fn same_network(a: &str, b: &str, input: &[usize]) {
    let (ca, cb) = (compile(a), compile(b));
    let specs = specs_of(&ca.graph);
    assert_eq!(specs, specs_of(&cb.graph));
    let w = random_weights(&specs, 2);
    let x = random_tensor(input, 2);
    let ya = resnetc::interp::run(&ca.graph, &w, &x).expect("interpreter");
    let yb = resnetc::interp::run(&cb.graph, &w, &x).expect("interpreter");
    assert_eq!(ya.shape, yb.shape);
    assert_eq!(ya.data, yb.data);
}

#[test]
fn a_block_parameter_takes_a_block() {
    let with = r#"
        use "lib/resnet.res"
        block stage_of(x, unit, planes, n, stride = 1) {
            x |> [unit(planes, stride: stride), (n - 1) * unit(planes)]
        }
        model m(x: f32[N, 3, 32, 32]) {
            x |> stem() |> layer1: stage_of(basic, 64, 2)
              |> layer2: stage_of(bottleneck(se_reduction: 4), 32, 2, stride: 2)
              |> head(10)
        }
    "#;
    let without = r#"
        use "lib/resnet.res"
        model m(x: f32[N, 3, 32, 32]) {
            x |> stem() |> layer1: basic_layer(64, 2)
              |> layer2: bottleneck_layer(32, 2, stride: 2, se_reduction: 4)
              |> head(10)
        }
    "#;
    same_network(with, without, &[2, 3, 32, 32]);
    // A block value in a `let`, and an operator as a value.
    let with = r#"
        block twice(x, f) { x |> f() |> f() }
        model m(x: f32[N, 3, 8, 8]) {
            let pool = maxpool(k: 2)
            x |> twice(pool) |> twice(relu)
        }
    "#;
    let without = r#"
        model m(x: f32[N, 3, 8, 8]) {
            x |> maxpool(k: 2) |> maxpool(k: 2) |> relu() |> relu()
        }
    "#;
    same_network(with, without, &[1, 3, 8, 8]);
}

#[test]
fn if_is_a_sequence_item_and_a_pipeline_stage() {
    // ResNet-D's shortcut as PyTorch builds it: Sequential(AvgPool2d or
    // Identity, conv, BN), so the conv is `downsample.1`.
    let block = |shortcut: &str| {
        format!(
            r#"
        block d(x, planes, stride = 1) {{
            let y = x |> conv1: conv(planes, k: 3, stride: stride, pad: 1) |> bn1: batchnorm()
            relu(y + {shortcut})
        }}
        model m(x: f32[N, 8, 16, 16]) {{
            x |> layer1: [d(16, stride: 2), d(16)]
        }}
    "#
        )
    };
    let with = block(
        "(x |> downsample: [if stride != 1 { avgpool(k: 2, stride: 2) } else { identity() }, \
         conv(planes, k: 1), batchnorm()])",
    );
    let without = block(
        "(if stride != 1 { x |> avgpool(k: 2, stride: 2) } else { x } \
         |> downsample: [identity(), conv(planes, k: 1), batchnorm()])",
    );
    same_network(&with, &without, &[1, 8, 16, 16]);
    let c = compile(&with);
    let names: Vec<String> = specs_of(&c.graph).into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"layer1.0.downsample.1.weight".to_string())
            && names.contains(&"layer1.1.downsample.2.running_var".to_string()),
        "{names:?}"
    );
    // As a pipeline stage, a branch may be a pipeline and hold `let`s.
    same_network(
        "model m(x: f32[N, 3, 8, 8]) { x |> if x.height > 4 { let k = 2\n maxpool(k: k) |> relu() } else { identity() } }",
        "model m(x: f32[N, 3, 8, 8]) { x |> maxpool(k: 2) |> relu() }",
        &[1, 3, 8, 8],
    );
}

#[test]
fn blocks_and_tensors_in_each_others_place_are_type_errors() {
    let err = |text: &str| {
        compile_source_with("m.res", text, None, &Options::default())
            .expect_err("a type error")
            .render_plain()
    };
    let e = err("block u(x) { x |> relu() }\nmodel m(x: f32[N, 3, 8, 8]) { x + u }");
    assert!(e.contains("res::type") && e.contains("a block"), "{e}");
    let e = err("block u(x) { x |> relu() }\nmodel m(x: f32[N, 3, 8, 8]) { concat(x, u) }");
    assert!(e.contains("the block `u`, not called"), "{e}");
    let e = err("block l(x, f) { x |> f() }\nmodel m(x: f32[N, 3, 8, 8]) { x |> l(x) }");
    assert!(e.contains("`f` is a tensor, not a block"), "{e}");
    let e = err("model m(x: f32[N, 3, 8, 8]) { relu() }");
    assert!(e.contains("must end in a tensor"), "{e}");
}

/// ResNeXt-50 32x4d and Wide ResNet-50-2 from `std/resnet`'s bottleneck
/// given as a value: torchvision's published parameter counts.
#[test]
fn resnext_and_wide_resnet_from_the_standard_library() {
    let model = |unit: &str| {
        format!(
            r#"
        use "std/resnet"
        model m(x: f32[N, 3, H = 224, W = 224]) {{
            x |> stem()
              |> layer1: layer({unit}, 64, 3) |> layer2: layer({unit}, 128, 4, stride: 2)
              |> layer3: layer({unit}, 256, 6, stride: 2) |> layer4: layer({unit}, 512, 3, stride: 2)
              |> head(1000)
        }}
    "#
        )
    };
    for (unit, params) in [
        ("bottleneck(groups: 32, base_width: 4)", 25_028_904), // resnext50_32x4d
        ("bottleneck(base_width: 128)", 68_883_240),           // wide_resnet50_2
        ("bottleneck", 25_557_032),                            // resnet50
    ] {
        let c = compile(&model(unit));
        let g = &c.graph;
        let n: usize = g.schedule().iter().map(|&n| g.params_of(n)).sum();
        assert_eq!(n, params, "{unit}");
    }
}

/// `std/cifar` takes the shortcut's kind as a block: option A
/// (`pad_channels`) declares no downsample weights and computes what the
/// option-A shortcut written out by hand computes.
#[test]
fn cifar_resnet_takes_the_shortcut_kind() {
    let a = compile(
        "use \"lib/cifar.res\"\nmodel m(x: f32[N, 3, 32, 32]) { x |> cifar_resnet(20, downsample: pad_channels) }",
    );
    let names: Vec<String> = specs_of(&a.graph).into_iter().map(|s| s.name).collect();
    assert!(!names.iter().any(|n| n.contains("downsample")), "{names:?}");
    same_network(
        "use \"lib/cifar.res\"\nmodel m(x: f32[N, 3, 32, 32]) { x |> layer2: cifar_stage(32, 1, 2, true, pad_channels) }",
        "model m(x: f32[N, 3, 32, 32]) {\n  let y = x |> layer2: [[conv1: conv(32, k: 3, stride: 2, pad: 1), bn1: batchnorm(), relu(), conv2: conv(32, k: 3, pad: 1), bn2: batchnorm()]]\n  relu(y + channel_pad(x, 32, stride: 2))\n}",
        &[1, 3, 32, 32],
    );
}
