//! Property tests: random well-formed networks (convs of random kernel,
//! stride, padding, dilation and groups, residual adds, concats, pools,
//! transposed convs, BN, activations) written as `.res` text, compiled with
//! every pass, the CPU back end and the CUDA back end (emulated; its PTX
//! built), must match the interpreter.

mod common;
use common::*;
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use resnetc::backend::cpu::{run_jit, CpuOptions};
use resnetc::backend::cuda::{self, emulate};
use resnetc::ir::sizes::{conv_out, pool_out};

/// One randomly chosen layer; `build` turns the choices into valid code.
#[derive(Clone, Debug)]
enum Layer {
    Conv {
        out: usize,
        k: usize,
        stride: usize,
        pad: usize,
        dil: usize,
        grouped: bool,
        bias: bool,
    },
    Residual {
        k: usize,
    },
    Concat {
        out: usize,
    },
    Pool {
        max: bool,
        k: usize,
        stride: usize,
        pad: usize,
        ceil: bool,
        include_pad: bool,
    },
    ConvT {
        out: usize,
        k: usize,
        stride: usize,
    },
    Norm {
        relu: bool,
    },
    Act(&'static str),
    Up {
        bilinear: bool,
        align: bool,
    },
    /// Squeeze-and-excitation (a per-channel product), or `x · σ(x)` (an
    /// elementwise one).
    Excite {
        hidden: usize,
        elementwise: bool,
    },
}

fn layer() -> impl Strategy<Value = Layer> {
    prop_oneof![
        (
            1usize..9,
            1usize..6,
            1usize..3,
            0usize..3,
            1usize..3,
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(|(out, k, stride, pad, dil, grouped, bias)| Layer::Conv {
                out,
                k,
                stride,
                pad,
                dil,
                grouped,
                bias
            }),
        prop_oneof![Just(1usize), Just(3)].prop_map(|k| Layer::Residual { k }),
        (1usize..6).prop_map(|out| Layer::Concat { out }),
        (
            any::<bool>(),
            1usize..4,
            1usize..3,
            0usize..2,
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(|(max, k, stride, pad, ceil, include_pad)| Layer::Pool {
                max,
                k,
                stride,
                pad,
                ceil,
                include_pad
            }),
        (1usize..6, 1usize..4, 1usize..3).prop_map(|(out, k, stride)| Layer::ConvT {
            out,
            k,
            stride
        }),
        any::<bool>().prop_map(|relu| Layer::Norm { relu }),
        prop_oneof![
            Just("relu"),
            Just("relu6"),
            Just("sigmoid"),
            Just("leaky_relu")
        ]
        .prop_map(Layer::Act),
        (any::<bool>(), any::<bool>()).prop_map(|(bilinear, align)| Layer::Up { bilinear, align }),
        (1usize..4, any::<bool>()).prop_map(|(hidden, elementwise)| Layer::Excite {
            hidden,
            elementwise
        }),
    ]
}

/// The model text, tracking (c, h, w) so every layer is valid: parameters
/// that would not fit are clamped, layers that would blow up are skipped.
fn build(c0: usize, hw: usize, layers: &[Layer]) -> String {
    let (mut c, mut h, mut w) = (c0, hw, hw);
    let mut body = String::new();
    for (i, l) in layers.iter().enumerate() {
        let line = match *l {
            Layer::Conv { out, k, stride, pad, dil, grouped, bias } => {
                let pad = pad.min(k / 2);
                let groups = if grouped && c % 2 == 0 && out % 2 == 0 { 2 } else { 1 };
                match (conv_out(h, k, stride, pad, dil), conv_out(w, k, stride, pad, dil)) {
                    (Some(oh), Some(ow)) => {
                        (c, h, w) = (out, oh, ow);
                        format!("x = x |> \"c{i}\": conv({out}, k: {k}, stride: {stride}, pad: {pad}, dilation: {dil}, groups: {groups}, bias: {bias})")
                    }
                    _ => continue,
                }
            }
            Layer::Residual { k } => format!(
                "x = relu((x |> \"r{i}\": [conv({c}, k: {k}, pad: {}), batchnorm(), relu(), conv({c}, k: {k}, pad: {}), batchnorm()]) + x)",
                k / 2,
                k / 2
            ),
            Layer::Concat { out } => {
                c += out;
                format!("x = concat(x, \"d{i}\": dense_unit(x, {out}))")
            }
            Layer::Pool { max, k, stride, pad, ceil, include_pad } => {
                let pad = pad.min(k / 2);
                match (pool_out(h, k, stride, pad, 1, ceil), pool_out(w, k, stride, pad, 1, ceil)) {
                    (Some(oh), Some(ow)) if oh > 0 && ow > 0 => {
                        (h, w) = (oh, ow);
                        if max {
                            format!("x = x |> maxpool(k: {k}, stride: {stride}, pad: {pad}, ceil: {ceil})")
                        } else {
                            format!("x = x |> avgpool(k: {k}, stride: {stride}, pad: {pad}, ceil: {ceil}, count_include_pad: {include_pad})")
                        }
                    }
                    _ => continue,
                }
            }
            Layer::ConvT { out, k, stride } => {
                if h * stride > 24 {
                    continue;
                }
                (c, h, w) = (out, (h - 1) * stride + k, (w - 1) * stride + k);
                format!("x = x |> \"t{i}\": conv_transpose({out}, k: {k}, stride: {stride}, bias: true)")
            }
            Layer::Norm { relu } => {
                format!("x = x |> \"n{i}\": batchnorm(){}", if relu { " |> relu()" } else { "" })
            }
            Layer::Act(a) => format!("x = x |> {a}()"),
            Layer::Up { bilinear, align } => {
                if h * 2 > 24 {
                    continue;
                }
                (h, w) = (h * 2, w * 2);
                let mode = if bilinear { "bilinear" } else { "nearest" };
                format!("x = x |> upsample(scale: 2, mode: \"{mode}\", align_corners: {align})")
            }
            Layer::Excite { elementwise: true, .. } => "x = x * (x |> sigmoid())".to_string(),
            // The gate on the left: the front end puts it second.
            Layer::Excite { hidden, .. } => format!(
                "x = (x |> global_avgpool() |> \"e{i}\": [conv({hidden}, k: 1, bias: true), relu(), conv({c}, k: 1, bias: true), sigmoid()]) * x"
            ),
        };
        body.push_str("    ");
        body.push_str(&line);
        body.push('\n');
    }
    format!(
        "block dense_unit(x, g) {{ x |> norm: batchnorm() |> relu() |> conv: conv(g, k: 3, pad: 1) }}\n\
         model random(x: f32[N, {c0}, {hw}, {hw}]) {{\n{body}    x |> \"head\": conv(3, k: 1, bias: true) |> global_avgpool() |> flatten() |> fc: linear(4) |> softmax()\n}}\n"
    )
}

proptest! {
    // A fixed seed keeps CI deterministic; PROPTEST_RNG_SEED=<n> explores others.
    #![proptest_config(ProptestConfig {
        cases: 48,
        rng_seed: std::env::var("PROPTEST_RNG_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .map_or(RngSeed::Fixed(0x5EED_2026), RngSeed::Fixed),
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_networks_compile_to_the_interpreters_numbers(
        c0 in 1usize..6,
        hw in 5usize..14,
        layers in prop::collection::vec(layer(), 1..7),
        seed in 0u64..1000,
        batch in 1usize..3,
    ) {
        let text = build(c0, hw, &layers);
        let c = resnetc::front::compile_source("random.res", &text, None)
            .unwrap_or_else(|e| panic!("generated model does not compile:\n{text}\n{}", e.render_plain()));
        let w = resnetc::weights::random_weights(&resnetc::weights::specs_of(&c.graph), seed);
        let x = random_tensor(&[batch, c0, hw, hw], seed + 1);
        let reference = resnetc::interp::run(&c.graph, &w, &x).expect("interpreter");
        let mut opt = c.graph.clone();
        resnetc::passes::optimize(&mut opt, None);
        resnetc::ir::verify::verify(&opt).expect("optimized IR verifies");
        let y = resnetc::interp::run(&opt, &w, &x).expect("optimized");
        assert_close(&format!("optimized\n{text}"), &y, &reference, 1e-5, 1e-3);
        let planned = resnetc::interp::run_planned(&opt, &w, &x).expect("runs").expect("planned");
        assert_close(&format!("arena\n{text}"), &planned, &reference, 1e-5, 1e-3);
        let cpu = run_jit(&opt, &w, &x, &CpuOptions::default()).expect("cpu");
        assert_close(&format!("cpu\n{text}"), &cpu, &reference, 1e-4, 1e-3);
        // The CUDA back end: its kernels emulated, and its PTX built (every
        // network ends in softmax, whose e^x NVPTX has no libm for).
        let cuda = emulate::run(&opt, &w, &x, &cuda::CudaOptions::default(), None).expect("emulated cuda");
        assert_close(&format!("cuda (emulated)\n{text}"), &cuda, &reference, 1e-4, 1e-3);
        cuda::compile(&opt, &w, &cuda::CudaOptions::default())
            .unwrap_or_else(|e| panic!("PTX: {e}\n{text}"));
    }
}
