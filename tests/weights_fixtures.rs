//! The loaders against the PyTorch-generated fixtures in tests/fixtures.

use std::path::{Path, PathBuf};

use resnetc::tensor::Tensor;
use resnetc::weights::{
    bind, check_input_shape, load_safetensors, parse_npy, read_npy, save_safetensors, write_npy,
    Role, WeightSpec, Weights,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures")).join(name)
}

fn cases() -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(fixture("cases.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["cases"].as_array().unwrap().clone()
}

fn dims(v: &serde_json::Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect()
}

/// Specs that describe the file exactly, as a model would.
fn specs_of(w: &Weights) -> Vec<WeightSpec> {
    w.iter()
        .map(|(name, t)| WeightSpec {
            name: name.clone(),
            shape: t.shape.clone(),
            role: Role::BnWeight,
        })
        .collect()
}

#[test]
fn cifar_resnet20_loads() {
    let w = load_safetensors(&fixture("cifar_resnet20.safetensors")).unwrap();
    assert_eq!(w.len(), 107);
    assert_eq!(w["conv1.weight"].shape, vec![16, 3, 3, 3]);
    assert_eq!(w["fc.weight"].shape, vec![10, 64]);
    assert!(w.values().all(|t| t.data.iter().all(|x| x.is_finite())));

    let x = read_npy(&fixture("cifar_resnet20.input.npy")).unwrap();
    assert_eq!(x.shape, vec![2, 3, 32, 32]);
    check_input_shape(&x, &[3, 32, 32], "cifar_resnet20.input.npy").unwrap();
    let e = check_input_shape(&x, &[3, 64, 64], "cifar_resnet20.input.npy")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("[2, 3, 32, 32]") && e.contains("[N, 3, 64, 64]"),
        "{e}"
    );
}

#[test]
fn every_case_matches_cases_json() {
    for case in cases() {
        let name = case["name"].as_str().unwrap();
        let w = load_safetensors(&fixture(case["weights"].as_str().unwrap())).unwrap();
        assert_eq!(
            w.len() as u64,
            case["weight_tensors"].as_u64().unwrap(),
            "{name}"
        );
        // `params` counts learnable parameters: BN running stats are buffers.
        let params: usize = w
            .iter()
            .filter(|(k, _)| !k.contains("running_"))
            .map(|(_, t)| t.len())
            .sum();
        assert_eq!(params as u64, case["params"].as_u64().unwrap(), "{name}");

        let x = read_npy(&fixture(case["input"].as_str().unwrap())).unwrap();
        assert_eq!(x.shape, dims(&case["input_shape"]), "{name}");
        let y = read_npy(&fixture(case["output"].as_str().unwrap())).unwrap();
        assert_eq!(y.shape, dims(&case["output_shape"]), "{name}");

        // Binding a file against its own layout succeeds and keeps everything.
        let bound = bind(&specs_of(&w), w.clone(), name).unwrap();
        assert_eq!(bound, w, "{name}");
    }
}

#[test]
fn values_agree_with_the_reference_parser() {
    let bytes = std::fs::read(fixture("cifar_resnet20.safetensors")).unwrap();
    let ours = resnetc::weights::parse_safetensors(&bytes, "cifar_resnet20").unwrap();
    let theirs = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(theirs.len(), ours.len());
    for (name, view) in theirs.tensors() {
        let t = &ours[&name];
        assert_eq!(t.shape, view.shape(), "{name}");
        let raw: Vec<u8> = t.data.iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(raw, view.data(), "{name}");
    }
}

#[test]
fn round_trips_are_exact() {
    let dir = tempfile::tempdir().unwrap();
    let w = load_safetensors(&fixture("cifar_plain20.safetensors")).unwrap();
    let p = dir.path().join("copy.safetensors");
    save_safetensors(&p, &w).unwrap();
    assert_eq!(load_safetensors(&p).unwrap(), w);

    // write_npy reproduces numpy's bytes exactly.
    for file in ["unet_small.input.npy", "densenet_bc_small.output.npy"] {
        let original = std::fs::read(fixture(file)).unwrap();
        let t: Tensor = parse_npy(&original, file).unwrap();
        let p = dir.path().join(file);
        write_npy(&p, &t).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), original, "{file}");
    }
}

#[test]
fn binding_reports_a_renamed_layer() {
    let mut w = load_safetensors(&fixture("cifar_resnet20.safetensors")).unwrap();
    let specs = specs_of(&w);
    let t = w.remove("layer1.0.conv1.weight").unwrap();
    w.insert("layer1.0.conv_1.weight".into(), t);
    let e = bind(&specs, w, "cifar_resnet20.safetensors")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("layer1.0.conv1.weight is missing (did you mean `layer1.0.conv_1.weight`?)"),
        "{e}"
    );
    assert!(
        e.contains("1 missing, 1 unexpected, 0 mis-shaped, of 107"),
        "{e}"
    );
}

#[test]
fn wrong_file_kinds_are_explained() {
    let e = load_safetensors(&fixture("cifar_resnet20.input.npy"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cifar_resnet20.input.npy` is not a safetensors file"),
        "{e}"
    );
    let e = read_npy(&fixture("cifar_resnet20.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("is not a .npy file"), "{e}");
}

/// torchvision's pre-0.3 DenseNet keys (`denselayer1.norm.1.weight`,
/// `conv.2`): the densenet_bc_small fixture with its keys renamed back to
/// them, written and read as a file, binds to the same weights (the rule of
/// torchvision's `_load_state_dict`) and gives PyTorch's output; a key that
/// rule does not cover (`norm.3`) is still reported missing.
#[test]
fn old_densenet_keys_load_and_match_pytorch() {
    let old_name = |k: &str| {
        let mut parts: Vec<String> = k.split('.').map(str::to_string).collect();
        let n = parts.len();
        let m = &parts[n - 2];
        if parts.iter().any(|p| p.starts_with("denselayer"))
            && ["norm1", "norm2", "conv1", "conv2"].contains(&m.as_str())
        {
            let (module, index) = m.split_at(m.len() - 1);
            parts[n - 2] = format!("{module}.{index}");
        }
        parts.join(".")
    };
    let file = load_safetensors(&fixture("densenet_bc_small.safetensors")).unwrap();
    let old: Weights = file.iter().map(|(k, t)| (old_name(k), t.clone())).collect();
    let renamed = old.keys().filter(|k| !file.contains_key(*k)).count();
    // 12 dense layers of norm1 (4 tensors), conv1, norm2 (4), conv2.
    assert_eq!(renamed, 120);
    assert!(old.contains_key("features.denseblock1.denselayer1.norm.1.weight"));

    let path = std::env::temp_dir().join(format!(
        "resnetc-old-densenet-{}.safetensors",
        std::process::id()
    ));
    save_safetensors(&path, &old).unwrap();
    let reread = load_safetensors(&path).unwrap();
    std::fs::remove_file(&path).ok();

    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/densenet_bc_small.res");
    let c = resnetc::front::compile_file(&example).unwrap();
    let specs = resnetc::weights::specs_of(&c.graph);
    let w = bind(&specs, reread.clone(), "densenet121-a639ec97.safetensors").expect("renamed");
    let x = read_npy(&fixture("densenet_bc_small.input.npy")).unwrap();
    let want = read_npy(&fixture("densenet_bc_small.output.npy")).unwrap();
    let y = resnetc::interp::run(&c.graph, &w, &x).unwrap();
    let scale = want.data.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = y
        .data
        .iter()
        .zip(&want.data)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst <= 1e-4 * scale, "max error {worst} of {scale}");

    let mut wrong = reread;
    let t = wrong
        .remove("features.denseblock1.denselayer1.norm.1.weight")
        .unwrap();
    wrong.insert("features.denseblock1.denselayer1.norm.3.weight".into(), t);
    let e = bind(&specs, wrong, "old.safetensors").expect_err("norm.3 is no old key");
    let resnetc::weights::WeightsError::Mismatch(m) = e else {
        panic!("not a mismatch: {e}")
    };
    assert_eq!(
        (m.missing.as_slice(), m.unexpected.as_slice()),
        (
            &["features.denseblock1.denselayer1.norm1.weight".to_string()][..],
            &["features.denseblock1.denselayer1.norm.3.weight".to_string()][..]
        )
    );
}
