//! The example networks in examples/: each compiles cleanly, has PyTorch's
//! parameter and multiply-add counts, and declares exactly the state_dict
//! keys and shapes of its PyTorch counterpart (torchvision key lists in
//! tests/fixtures/torchvision_keys, fixture safetensors in tests/fixtures).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use resnetc::front::{compile_file, Compiled};
use resnetc::ir::op::Op;
use resnetc::weights::load_safetensors;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn example(name: &str) -> PathBuf {
    Path::new(ROOT).join("examples").join(format!("{name}.res"))
}

fn fixture(name: &str) -> PathBuf {
    Path::new(ROOT).join("tests/fixtures").join(name)
}

/// Every example, by file stem.
const EXAMPLES: &[&str] = &[
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "se_resnet50",
    "cifar_resnet20",
    "cifar_resnet56",
    "cifar_resnet110",
    "cifar_resnet1202",
    "cifar_plain20",
    "cifar_plain56",
    "densenet121",
    "densenet169",
    "densenet201",
    "densenet_bc_small",
    "unet_small",
    "unet",
];

const TORCHVISION: &[&str] = &[
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "densenet121",
    "densenet169",
    "densenet201",
];

const FIXTURES: &[&str] = &[
    "cifar_resnet20",
    "cifar_plain20",
    "unet_small",
    "densenet_bc_small",
];

/// (model, parameters, multiply-adds per image) as PyTorch counts them.
const COUNTS: &[(&str, usize, u64)] = &[
    ("resnet18", 11_689_512, 1_814_073_344),
    ("resnet34", 21_797_672, 3_663_761_408),
    ("resnet50", 25_557_032, 4_089_184_256),
    ("resnet101", 44_549_160, 7_801_405_440),
    ("resnet152", 60_192_808, 11_513_626_624),
    // timm's seresnet50 (28.09M parameters); its SE convs add 2·C·C/16
    // multiply-adds per block on 1x1 maps to resnet50's.
    ("se_resnet50", 28_088_024, 4_091_699_200),
    ("densenet121", 7_978_856, 2_834_161_664),
    ("densenet169", 14_149_480, 3_359_843_328),
    ("densenet201", 20_013_928, 4_291_365_888),
    ("cifar_resnet20", 272_474, 40_813_184),
    ("cifar_plain20", 269_722, 40_551_040),
    ("unet_small", 1_942_594, 189_595_648),
    ("densenet_bc_small", 105_658, 3_596_292),
];

fn compile(name: &str) -> Compiled {
    let path = example(name);
    let c =
        compile_file(&path).unwrap_or_else(|e| panic!("{}:\n{}", path.display(), e.render_plain()));
    assert!(
        c.warnings.is_empty(),
        "{}: {} warning(s):\n{}",
        path.display(),
        c.warnings.len(),
        c.warnings
            .iter()
            .map(|d| d.render_plain())
            .collect::<Vec<_>>()
            .join("\n")
    );
    c
}

/// (name, shape) of every weight the model declares; no name twice.
fn weights_of(c: &Compiled) -> BTreeSet<(String, Vec<usize>)> {
    let g = &c.graph;
    let mut set = BTreeSet::new();
    for n in g.weights() {
        let node = g.node(n);
        let Op::Weight { name } = &node.op else {
            panic!("weights() returned a non-weight node {:?}", node.op)
        };
        assert!(
            set.insert((name.clone(), node.shape.clone())),
            "weight `{name}` declared twice"
        );
    }
    let names: BTreeSet<&String> = set.iter().map(|(n, _)| n).collect();
    assert_eq!(names.len(), set.len(), "a weight name with two shapes");
    set
}

fn counts(c: &Compiled) -> (usize, u64) {
    let g = &c.graph;
    g.schedule()
        .into_iter()
        .fold((0, 0), |(p, m), n| (p + g.params_of(n), m + g.macs_of(n)))
}

/// Parses `name<TAB>[a, b]<TAB>dtype` lines; skips `#` comments and BN's
/// `num_batches_tracked` counters (not weights of the compiled model).
fn torchvision_keys(model: &str) -> BTreeSet<(String, Vec<usize>)> {
    let path = fixture(&format!("torchvision_keys/{model}.txt"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut set = BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(
            fields.len(),
            3,
            "{}:{}: expected 3 tab-separated fields",
            path.display(),
            i + 1
        );
        let name = fields[0];
        if name.ends_with("num_batches_tracked") {
            continue;
        }
        let dims = fields[1]
            .trim()
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .unwrap_or_else(|| panic!("{}:{}: bad shape `{}`", path.display(), i + 1, fields[1]));
        let shape: Vec<usize> = dims
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse()
                    .unwrap_or_else(|e| panic!("{}:{}: {e}", path.display(), i + 1))
            })
            .collect();
        assert!(
            set.insert((name.to_string(), shape)),
            "{}: `{name}` twice",
            path.display()
        );
    }
    assert!(!set.is_empty(), "{}: no keys", path.display());
    set
}

/// Asserts two key sets are equal, listing what differs.
fn assert_same_keys(
    model: &str,
    got: &BTreeSet<(String, Vec<usize>)>,
    want: &BTreeSet<(String, Vec<usize>)>,
) {
    if got == want {
        return;
    }
    let extra: Vec<_> = got.difference(want).take(20).collect();
    let missing: Vec<_> = want.difference(got).take(20).collect();
    panic!(
        "{model}: weights differ from PyTorch's ({} declared, {} expected)\n  declared but not expected: {extra:?}\n  expected but not declared: {missing:?}",
        got.len(),
        want.len()
    );
}

#[test]
fn every_example_compiles_without_warnings() {
    for name in EXAMPLES {
        let c = compile(name);
        assert_eq!(c.graph.name, *name, "model name of {name}.res");
    }
    // The list above is complete.
    let mut on_disk: Vec<String> = std::fs::read_dir(Path::new(ROOT).join("examples"))
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            (p.extension()? == "res").then(|| p.file_stem().unwrap().to_string_lossy().into_owned())
        })
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = EXAMPLES.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(
        on_disk, listed,
        "examples/*.res and the EXAMPLES list disagree"
    );
}

#[test]
fn params_and_macs_match_pytorch() {
    let mut failures = Vec::new();
    for &(name, params, macs) in COUNTS {
        let c = compile(name);
        let (p, m) = counts(&c);
        println!("{name:18} params {p:>11}  MACs/image {m:>14}");
        if (p, m) != (params, macs) {
            failures.push(format!(
                "{name}: params {p} (want {params}), MACs {m} (want {macs})"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn input_and_output_shapes() {
    let cases: &[(&str, &[usize], &[usize])] = &[
        ("resnet18", &[3, 224, 224], &[1000]),
        ("resnet152", &[3, 224, 224], &[1000]),
        ("densenet121", &[3, 224, 224], &[1000]),
        ("cifar_resnet20", &[3, 32, 32], &[10]),
        ("cifar_plain56", &[3, 32, 32], &[10]),
        ("densenet_bc_small", &[3, 32, 32], &[10]),
        ("unet_small", &[3, 64, 64], &[2, 64, 64]),
        ("unet", &[3, 256, 256], &[2, 256, 256]),
    ];
    for &(name, input, output) in cases {
        let c = compile(name);
        assert_eq!(c.graph.input_shape(), input, "{name} input");
        assert_eq!(c.graph.output_shape(), output, "{name} output");
    }
}

#[test]
fn torchvision_state_dict_keys() {
    for name in TORCHVISION {
        let c = compile(name);
        assert_same_keys(name, &weights_of(&c), &torchvision_keys(name));
    }
}

#[test]
fn fixture_safetensors_keys() {
    for name in FIXTURES {
        let c = compile(name);
        let path = fixture(&format!("{name}.safetensors"));
        let w = load_safetensors(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let want: BTreeSet<(String, Vec<usize>)> = w
            .iter()
            .map(|(k, t)| (k.clone(), t.shape.clone()))
            .collect();
        assert_same_keys(name, &weights_of(&c), &want);
    }
}

#[test]
fn deeper_cifar_nets_have_the_papers_sizes() {
    // He et al. Table 6: 0.27M, 0.85M, 1.7M, 19.4M parameters (option A there;
    // projection shortcuts add a few thousand).
    for (name, approx) in [
        ("cifar_resnet20", 0.27e6),
        ("cifar_resnet56", 0.85e6),
        ("cifar_resnet110", 1.7e6),
        ("cifar_resnet1202", 19.4e6),
    ] {
        let (p, _) = counts(&compile(name));
        let rel = (p as f64 - approx).abs() / approx;
        assert!(
            rel < 0.03,
            "{name}: {p} parameters, paper says about {approx}"
        );
    }
    // Plain nets differ only by the two projection shortcuts.
    let (r56, m56) = counts(&compile("cifar_resnet56"));
    let (p56, pm56) = counts(&compile("cifar_plain56"));
    assert_eq!(r56 - p56, 272_474 - 269_722);
    assert_eq!(m56 - pm56, 40_813_184 - 40_551_040);
}

#[test]
fn cifar_resnet1202_compiles_fast() {
    let path = example("cifar_resnet1202");
    // Warm up the file cache and allocator once.
    compile_file(&path).unwrap_or_else(|e| panic!("{}", e.render_plain()));
    let start = Instant::now();
    let c = compile_file(&path).unwrap_or_else(|e| panic!("{}", e.render_plain()));
    let dt = start.elapsed();
    println!(
        "cifar_resnet1202: compiled in {:.1} ms ({} nodes)",
        dt.as_secs_f64() * 1e3,
        c.graph.g.node_count()
    );
    assert!(c.warnings.is_empty());
    assert!(
        dt.as_secs_f64() < 1.0,
        "cifar_resnet1202 took {dt:?} to compile"
    );
}
