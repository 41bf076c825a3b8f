//! Strict matching of a checkpoint's tensors to what a model expects.
//!
//! Strict because a silently ignored or zero-filled parameter gives a model
//! that runs and produces wrong numbers. All problems are reported in one
//! error, since a renamed layer usually shows up as several at once.

use std::collections::BTreeMap;

use super::{BindMismatch, WeightSpec, Weights, WeightsError};

/// Problems of each kind listed by name; the rest are counted.
pub const SHOWN: usize = 5;

/// "  ... and 12 more missing".
fn more(lines: &mut Vec<String>, count: usize, kind: &str) {
    if count > SHOWN {
        lines.push(format!("  ... and {} more {kind}", count - SHOWN));
    }
}

/// Takes exactly the tensors `specs` names from `file`, checking that none
/// is missing or mis-shaped and that the file holds nothing else.
pub fn bind(
    specs: &[WeightSpec],
    file: Weights,
    source_name: &str,
) -> Result<Weights, WeightsError> {
    bind_with(specs, file, source_name, &BindOptions::default()).map(|(w, _)| w)
}

/// How strict a load is. Both off (the default) is `bind`.
#[derive(Clone, Copy, Debug, Default)]
pub struct BindOptions {
    /// A tensor the model declares and the file lacks gets seeded random
    /// values (as `--random-weights 0` draws them, for the missing ones):
    /// a backbone's checkpoint for a model with a new head.
    pub allow_missing: bool,
    /// A tensor the file holds and the model does not declare is left out.
    pub ignore_unused: bool,
}

/// What a non-strict load left out or filled in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Skipped {
    /// Declared by the model, absent from the file: random values.
    pub filled: Vec<String>,
    /// In the file, not in the model: ignored.
    pub ignored: Vec<String>,
}

/// `bind`, as `opts` relaxes it; says what was filled in or ignored.
pub fn bind_with(
    specs: &[WeightSpec],
    file: Weights,
    source_name: &str,
    opts: &BindOptions,
) -> Result<(Weights, Skipped), WeightsError> {
    let expected: BTreeMap<&str, &WeightSpec> =
        specs.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut file = rename_old_densenet_keys(file, &expected);

    let mut bound = Weights::new();
    let mut missing = Vec::new();
    let mut misshaped = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for spec in specs {
        if !seen.insert(spec.name.as_str()) {
            continue; // listed twice in the spec: judged once
        }
        match file.remove(&spec.name) {
            None => missing.push(spec.name.clone()),
            Some(t) if t.shape != spec.shape => {
                misshaped.push((spec.name.clone(), spec.shape.clone(), t.shape.clone()));
            }
            Some(t) => {
                bound.insert(spec.name.clone(), t);
            }
        }
    }
    // What is left in `file` is unexpected (expected names were removed).
    let unexpected: Vec<String> = file
        .into_keys()
        .filter(|k| !expected.contains_key(k.as_str()))
        .collect();

    let mut skipped = Skipped::default();
    let unexpected = if opts.ignore_unused {
        skipped.ignored = unexpected;
        Vec::new()
    } else {
        unexpected
    };
    if opts.allow_missing && !missing.is_empty() && misshaped.is_empty() && unexpected.is_empty() {
        let want: Vec<WeightSpec> = specs
            .iter()
            .filter(|s| missing.contains(&s.name))
            .cloned()
            .collect();
        bound.extend(super::try_random_weights(&want, 0)?);
        skipped.filled = missing;
        return Ok((bound, skipped));
    }
    if missing.is_empty() && unexpected.is_empty() && misshaped.is_empty() {
        return Ok((bound, skipped));
    }

    // A few of each kind, each missing or unexpected name with the
    // nearest of the other kind; the counts say how many more there are.
    let mut lines = Vec::new();
    for name in missing.iter().take(SHOWN) {
        match closest(name, &unexpected) {
            Some(s) => lines.push(format!("  - {name} is missing (did you mean `{s}`?)")),
            None => lines.push(format!("  - {name} is missing")),
        }
    }
    more(&mut lines, missing.len(), "missing");
    for name in unexpected.iter().take(SHOWN) {
        match closest(name, &missing) {
            Some(s) => lines.push(format!(
                "  - {name} is unexpected (closest expected name: `{s}`)"
            )),
            None => lines.push(format!("  - {name} is unexpected")),
        }
    }
    more(&mut lines, unexpected.len(), "unexpected");
    for (name, want, found) in misshaped.iter().take(SHOWN) {
        lines.push(format!(
            "  - {name} has the wrong shape: expected {want:?}, found {found:?}"
        ));
    }
    more(&mut lines, misshaped.len(), "mis-shaped");

    let summary = format!(
        "{} missing, {} unexpected, {} mis-shaped, of {} expected tensors",
        missing.len(),
        unexpected.len(),
        misshaped.len(),
        expected.len()
    );
    Err(WeightsError::Mismatch(Box::new(BindMismatch {
        path: source_name.to_string(),
        summary,
        details: lines.join("\n"),
        hint: hint(&missing, &unexpected, &misshaped, &expected, bound.len()),
        missing,
        unexpected,
        misshaped,
    })))
}

/// torchvision's DenseNet checkpoints published before 0.3 name a dense
/// layer's modules `norm.1`, `relu.1`, `conv.1`, `norm.2`, ... where
/// today's are `norm1`, `conv1`, `norm2`; torchvision renames them when it
/// loads one (`_load_state_dict` in torchvision/models/densenet.py), and
/// so does this: a key under a `denselayerN` whose new name the model
/// expects, and whose old name it does not, is renamed.
pub fn rename_old_densenet_keys(file: Weights, expected: &BTreeMap<&str, &WeightSpec>) -> Weights {
    file.into_iter()
        .map(|(k, t)| match new_densenet_key(&k) {
            Some(new)
                if !expected.contains_key(k.as_str()) && expected.contains_key(new.as_str()) =>
            {
                (new, t)
            }
            _ => (k, t),
        })
        .collect()
}

/// `features.denseblock1.denselayer1.norm.1.weight` →
/// `features.denseblock1.denselayer1.norm1.weight`.
fn new_densenet_key(key: &str) -> Option<String> {
    let parts: Vec<&str> = key.split('.').collect();
    let n = parts.len();
    if n < 4 {
        return None;
    }
    let (module, index) = (parts[n - 3], parts[n - 2]);
    let under_layer = parts[..n - 3].iter().any(|p| p.starts_with("denselayer"));
    if !under_layer || !["norm", "relu", "conv"].contains(&module) || !["1", "2"].contains(&index) {
        return None;
    }
    let mut out: Vec<String> = parts[..n - 3].iter().map(|p| p.to_string()).collect();
    out.push(format!("{module}{index}"));
    out.push(parts[n - 1].to_string());
    Some(out.join("."))
}

/// Picks the most useful advice for the pattern of problems.
fn hint(
    missing: &[String],
    unexpected: &[String],
    misshaped: &[(String, Vec<usize>, Vec<usize>)],
    expected: &BTreeMap<&str, &WeightSpec>,
    matched: usize,
) -> String {
    // A bias the file has for a layer the model declares without one.
    let biases: Vec<&str> = unexpected
        .iter()
        .filter_map(|u| u.strip_suffix(".bias"))
        .filter(|layer| expected.contains_key(format!("{layer}.weight").as_str()))
        .collect();
    if !biases.is_empty() && biases.len() == unexpected.len() && missing.is_empty() {
        return format!(
            "the file has a bias for {} that the model declares without one:              add `bias: true` to that layer's `conv` or `conv_transpose` (convs default to no bias)",
            biases
                .iter()
                .take(SHOWN)
                .map(|b| format!("`{b}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if matched == 0 && misshaped.is_empty() && !unexpected.is_empty() && !missing.is_empty() {
        return format!(
            "none of the file's {} tensors has a name this model declares: the file is              for another network (it holds e.g. `{}`; the model expects e.g. `{}`);              `resnetc summary FILE --format json` lists every name a model expects",
            unexpected.len(),
            unexpected[0],
            missing[0]
        );
    }
    let prefixed = !unexpected.is_empty()
        && unexpected.iter().all(|u| u.starts_with("module."))
        && !missing.iter().any(|m| m.starts_with("module."));
    if prefixed {
        return "the file's names start with `module.` (saved from DataParallel); \
                save `model.module.state_dict()` instead, or strip the prefix"
            .into();
    }
    if missing.is_empty() && unexpected.is_empty() && !misshaped.is_empty() {
        return "the names match but some shapes differ: the checkpoint is for a \
                different configuration (width, classes, kernel size) of this model"
            .into();
    }
    "the file must hold exactly the model's parameters, named as in PyTorch's \
     `state_dict()` (BatchNorm `num_batches_tracked` entries are ignored); \
     check that the model description and the checkpoint are for the same network"
        .into()
}

/// The candidate nearest to `name`, if near enough to be a plausible typo
/// or a prefix difference such as `module.`.
fn closest<'a>(name: &str, candidates: &'a [String]) -> Option<&'a str> {
    if let Some(c) = candidates.iter().find(|c| is_dotted_suffix(name, c)) {
        return Some(c);
    }
    let name_len = name.chars().count();
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        let limit = (name_len.min(c.chars().count()) / 3).max(2);
        let limit = best.map_or(limit, |(d, _)| limit.min(d.saturating_sub(1)));
        if let Some(d) = bounded_levenshtein(name, c, limit) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

/// `a` is `b` with a leading `prefix.` or the other way round.
fn is_dotted_suffix(a: &str, b: &str) -> bool {
    let check = |long: &str, short: &str| {
        long.len() > short.len()
            && long.ends_with(short)
            && long.as_bytes().get(long.len() - short.len() - 1) == Some(&b'.')
    };
    check(a, b) || check(b, a)
}

/// Edit distance between `a` and `b` if it is at most `limit`; stops early
/// once every path exceeds `limit`, which keeps comparing many unrelated
/// names cheap.
fn bounded_levenshtein(a: &str, b: &str, limit: usize) -> Option<usize> {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    if a.len().abs_diff(b.len()) > limit {
        return None;
    }
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        let mut row_min = cur[0];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
            row_min = row_min.min(cur[j + 1]);
        }
        if row_min > limit {
            return None;
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    let d = prev[b.len()];
    (d <= limit).then_some(d)
}

#[cfg(test)]
mod tests {
    use super::super::{Role, Tensor};
    use super::*;

    fn spec(name: &str, shape: &[usize]) -> WeightSpec {
        WeightSpec {
            name: name.into(),
            shape: shape.to_vec(),
            role: Role::ConvWeight,
        }
    }

    fn file(entries: &[(&str, &[usize])]) -> Weights {
        entries
            .iter()
            .map(|(n, s)| (n.to_string(), Tensor::zeros(s)))
            .collect()
    }

    #[test]
    fn exact_match_binds_everything() {
        let specs = [spec("conv1.weight", &[4, 3, 3, 3]), spec("fc.bias", &[10])];
        let w = bind(
            &specs,
            file(&[("conv1.weight", &[4, 3, 3, 3]), ("fc.bias", &[10])]),
            "w.safetensors",
        )
        .unwrap();
        assert_eq!(w.len(), 2);
        assert_eq!(w["fc.bias"].shape, vec![10]);
    }

    #[test]
    fn reports_all_problems_at_once_with_suggestions() {
        let specs = [
            spec("conv1.weight", &[64, 3, 7, 7]),
            spec("layer1.0.conv1.weight", &[64, 64, 3, 3]),
            spec("fc.weight", &[10, 64]),
            spec("fc.bias", &[10]),
        ];
        let f = file(&[
            ("conv1.weight", &[64, 3, 3, 3]),
            ("layer1.0.conv_1.weight", &[64, 64, 3, 3]),
            ("fc.weight", &[10, 64]),
            ("totally.unrelated.thing", &[1]),
        ]);
        let e = bind(&specs, f, "model.safetensors").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("`model.safetensors`"), "{msg}");
        assert!(
            msg.contains(
                "layer1.0.conv1.weight is missing (did you mean `layer1.0.conv_1.weight`?)"
            ),
            "{msg}"
        );
        assert!(msg.contains("  - fc.bias is missing\n"), "{msg}");
        assert!(
            msg.contains(
                "layer1.0.conv_1.weight is unexpected (closest expected name: `layer1.0.conv1.weight`)"
            ),
            "{msg}"
        );
        assert!(
            msg.contains("  - totally.unrelated.thing is unexpected\n"),
            "{msg}"
        );
        assert!(
            msg.contains(
                "conv1.weight has the wrong shape: expected [64, 3, 7, 7], found [64, 3, 3, 3]"
            ),
            "{msg}"
        );
        assert!(
            msg.contains("2 missing, 2 unexpected, 1 mis-shaped, of 4 expected tensors"),
            "{msg}"
        );
        match e {
            WeightsError::Mismatch(m) => {
                let BindMismatch {
                    missing,
                    unexpected,
                    misshaped,
                    ..
                } = *m;
                assert_eq!(missing, vec!["layer1.0.conv1.weight", "fc.bias"]);
                assert_eq!(
                    unexpected,
                    vec!["layer1.0.conv_1.weight", "totally.unrelated.thing"]
                );
                assert_eq!(misshaped.len(), 1);
            }
            other => panic!("wrong variant {other:?}"),
        }
    }

    #[test]
    fn suggestion_is_never_an_expected_name() {
        // `fc.bias` is present and expected; it must not be offered for `fc.bia`.
        let specs = [spec("fc.bias", &[1]), spec("fc.bia", &[1])];
        let e = bind(&specs, file(&[("fc.bias", &[1])]), "w")
            .unwrap_err()
            .to_string();
        assert!(e.contains("  - fc.bia is missing"), "{e}");
        assert!(!e.contains("did you mean"), "{e}");
    }

    #[test]
    fn data_parallel_prefix_is_recognised() {
        let specs = [spec("conv1.weight", &[1]), spec("fc.weight", &[1])];
        let f = file(&[("module.conv1.weight", &[1]), ("module.fc.weight", &[1])]);
        let e = bind(&specs, f, "w").unwrap_err();
        assert!(e
            .to_string()
            .contains("conv1.weight is missing (did you mean `module.conv1.weight`?)"));
        let help = miette::Diagnostic::help(&e).unwrap().to_string();
        assert!(help.contains("module."), "{help}");
    }

    #[test]
    fn only_expected_tensors_are_returned_and_duplicates_tolerated() {
        let specs = [spec("a", &[2]), spec("a", &[2])];
        let w = bind(&specs, file(&[("a", &[2])]), "w").unwrap();
        assert_eq!(w.keys().collect::<Vec<_>>(), vec!["a"]);
    }

    #[test]
    fn levenshtein() {
        assert_eq!(bounded_levenshtein("kitten", "sitting", 5), Some(3));
        assert_eq!(bounded_levenshtein("kitten", "sitting", 2), None);
        assert_eq!(bounded_levenshtein("", "abc", 3), Some(3));
        assert_eq!(bounded_levenshtein("same", "same", 0), Some(0));
        assert!(is_dotted_suffix("module.fc.weight", "fc.weight"));
        assert!(!is_dotted_suffix("xfc.weight", "fc.weight"));
    }

    #[test]
    fn many_unrelated_names_stay_fast() {
        let specs: Vec<_> = (0..600)
            .map(|i| spec(&format!("features.denseblock{i}.conv.weight"), &[1]))
            .collect();
        let f: Weights = (0..600)
            .map(|i| {
                (
                    format!("other_model.block_{i}.layer.bias"),
                    Tensor::zeros(&[1]),
                )
            })
            .collect();
        let start = std::time::Instant::now();
        let e = bind(&specs, f, "w").unwrap_err().to_string();
        assert!(e.contains("600 missing, 600 unexpected"), "{e}");
        assert!(start.elapsed().as_secs() < 10);
    }

    #[test]
    fn a_wrong_file_is_summarized_with_its_hints_and_likely_cause() {
        // Another network's 40 tensors: none matches.
        let specs: Vec<_> = (0..30)
            .map(|i| spec(&format!("features.block{i}.conv.weight"), &[1]))
            .collect();
        let mut f: Weights = (0..40)
            .map(|i| (format!("layer{i}.conv1.weight"), Tensor::zeros(&[1])))
            .collect();
        // One near miss, which keeps its did-you-mean.
        f.insert("features.block0.conv.weigth".into(), Tensor::zeros(&[1]));
        let e = bind(&specs, f, "w").unwrap_err();
        let text = e.to_string();
        assert!(text.contains("30 missing, 41 unexpected"), "{text}");
        assert!(text.contains("... and 25 more missing"), "{text}");
        assert!(text.contains("... and 36 more unexpected"), "{text}");
        assert_eq!(text.lines().filter(|l| l.starts_with("  - ")).count(), 10);
        assert!(
            text.contains("features.block0.conv.weight is missing (did you mean `features.block0.conv.weigth`?)"),
            "{text}"
        );
        let WeightsError::Mismatch(m) = e else {
            panic!("a mismatch")
        };
        assert!(
            m.hint.contains("none of the file's 41 tensors"),
            "{}",
            m.hint
        );
        // Every problem is still in the error's fields.
        assert_eq!((m.missing.len(), m.unexpected.len()), (30, 41));
    }

    #[test]
    fn a_bias_the_model_lacks_says_which_argument_adds_it() {
        let specs = [spec("conv1.weight", &[4, 3, 3, 3])];
        let e = bind(
            &specs,
            file(&[("conv1.weight", &[4, 3, 3, 3]), ("conv1.bias", &[4])]),
            "w",
        )
        .unwrap_err();
        let WeightsError::Mismatch(m) = e else {
            panic!("a mismatch")
        };
        assert!(
            m.hint.contains("`conv1`") && m.hint.contains("bias: true"),
            "{}",
            m.hint
        );
    }

    #[test]
    fn torchvisions_old_densenet_keys_are_renamed() {
        let specs = [
            spec("features.denseblock1.denselayer1.norm1.weight", &[2]),
            spec("features.denseblock1.denselayer1.conv2.weight", &[2]),
            spec("features.norm5.weight", &[2]),
        ];
        let w = bind(
            &specs,
            file(&[
                ("features.denseblock1.denselayer1.norm.1.weight", &[2]),
                ("features.denseblock1.denselayer1.conv.2.weight", &[2]),
                ("features.norm5.weight", &[2]),
            ]),
            "densenet121-a639ec97.safetensors",
        )
        .expect("renamed as torchvision renames");
        assert!(w.contains_key("features.denseblock1.denselayer1.norm1.weight"));
        assert_eq!(new_densenet_key("features.norm.1.weight"), None);
        assert_eq!(new_densenet_key("denselayer2.relu.3.weight"), None);
    }

    #[test]
    fn non_strict_loads_fill_or_ignore_and_say_which() {
        let specs = [spec("backbone.weight", &[2]), spec("head.weight", &[3])];
        let f = || file(&[("backbone.weight", &[2]), ("fc.weight", &[1000])]);
        assert!(bind(&specs, f(), "w").is_err());
        // Either alone still fails: the other problem remains.
        let missing_only = BindOptions {
            allow_missing: true,
            ..Default::default()
        };
        assert!(bind_with(&specs, f(), "w", &missing_only).is_err());
        let both = BindOptions {
            allow_missing: true,
            ignore_unused: true,
        };
        let (w, skipped) = bind_with(&specs, f(), "w", &both).expect("non-strict");
        assert_eq!(skipped.filled, vec!["head.weight".to_string()]);
        assert_eq!(skipped.ignored, vec!["fc.weight".to_string()]);
        assert_eq!(w["head.weight"].shape, vec![3]);
        assert!(w["head.weight"].data.iter().any(|&v| v != 0.0));
        assert!(!w.contains_key("fc.weight"));
        // A mis-shaped tensor is never skipped.
        let bad = file(&[("backbone.weight", &[5])]);
        assert!(bind_with(&specs, bad, "w", &both).is_err());
    }
}
