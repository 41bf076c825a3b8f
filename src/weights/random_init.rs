//! Seeded random parameters, for compiling and running a model without a
//! checkpoint (tests, benchmarks) with the same statistics as PyTorch's
//! fixtures, so activations neither vanish nor explode.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{StandardNormal, Uniform};

use super::{Role, Tensor, WeightSpec, Weights, WeightsError};

/// How one tensor's values are drawn.
enum Init {
    Normal { mean: f32, std: f32 },
    Uniform { low: f32, high: f32 },
}

impl Init {
    fn for_spec(spec: &WeightSpec) -> Init {
        // Product of the kernel dimensions; 1 for 2-D weights.
        let receptive: usize = spec.shape.iter().skip(2).product();
        let dim = |i: usize| spec.shape.get(i).copied().unwrap_or(1);
        let bound = |fan: usize| {
            let b = 1.0 / (fan.max(1) as f32).sqrt();
            Init::Uniform { low: -b, high: b }
        };
        match spec.role {
            // torchvision ResNet: kaiming_normal_(mode="fan_out", nonlinearity="relu").
            Role::ConvWeight => Init::Normal {
                mean: 0.0,
                std: (2.0 / (dim(0) * receptive).max(1) as f32).sqrt(),
            },
            // PyTorch's default kaiming_uniform_(a=sqrt(5)) reduces to ±1/sqrt(fan_in);
            // for [Cin, Cout/g, k, k] PyTorch computes fan_in from dim 1.
            Role::ConvTransposeWeight => bound(dim(1) * receptive),
            Role::LinearWeight => bound(dim(1)),
            Role::Bias { fan_in } => bound(fan_in),
            // Non-trivial BatchNorm as in the fixtures (make_refs.py), so that
            // folding mistakes change the output.
            Role::BnMean | Role::BnBias => Init::Normal {
                mean: 0.0,
                std: 0.1,
            },
            Role::BnVar | Role::BnWeight => Init::Uniform {
                low: 0.5,
                high: 1.5,
            },
        }
    }
}

/// `random_weights`, or an error where their memory cannot be allocated
/// (a valid model may still declare more weights than the machine holds).
pub fn try_random_weights(specs: &[WeightSpec], seed: u64) -> Result<Weights, WeightsError> {
    let bytes: u128 = specs
        .iter()
        .map(|s| s.shape.iter().map(|&d| d as u128).product::<u128>() * 4)
        .sum();
    if !crate::tensor::can_allocate(bytes) {
        let gib = bytes as f64 / (1u64 << 30) as f64;
        return Err(WeightsError::Memory { gib });
    }
    Ok(random_weights(specs, seed))
}

/// Draws every tensor of `specs` in order from one ChaCha8 stream seeded by
/// `seed`, so the same specs and seed give bit-identical weights on every
/// platform. Shapes come from a validated model, so their sizes fit memory.
pub fn random_weights(specs: &[WeightSpec], seed: u64) -> Weights {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut weights = Weights::new();
    for spec in specs {
        let count: usize = spec.shape.iter().product();
        let data: Vec<f32> = match Init::for_spec(spec) {
            Init::Normal { mean, std } => (0..count)
                .map(|_| mean + std * rng.sample::<f32, _>(StandardNormal))
                .collect(),
            Init::Uniform { low, high } => {
                let dist = Uniform::new(low, high);
                (0..count).map(|_| rng.sample(dist)).collect()
            }
        };
        weights.insert(
            spec.name.clone(),
            Tensor {
                shape: spec.shape.clone(),
                data,
            },
        );
    }
    weights
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, shape: &[usize], role: Role) -> WeightSpec {
        WeightSpec {
            name: name.into(),
            shape: shape.to_vec(),
            role,
        }
    }

    fn mean_std(v: &[f32]) -> (f64, f64) {
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let var = v
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / n;
        (mean, var.sqrt())
    }

    fn specs() -> Vec<WeightSpec> {
        vec![
            spec("conv1.weight", &[64, 32, 3, 3], Role::ConvWeight),
            spec("up.weight", &[32, 16, 2, 2], Role::ConvTransposeWeight),
            spec("up.bias", &[16], Role::Bias { fan_in: 16 * 4 }),
            spec("fc.weight", &[10, 400], Role::LinearWeight),
            spec("fc.bias", &[10], Role::Bias { fan_in: 400 }),
            spec("bn.weight", &[5000], Role::BnWeight),
            spec("bn.bias", &[5000], Role::BnBias),
            spec("bn.running_mean", &[5000], Role::BnMean),
            spec("bn.running_var", &[5000], Role::BnVar),
        ]
    }

    #[test]
    fn deterministic_and_seed_dependent() {
        let a = random_weights(&specs(), 7);
        let b = random_weights(&specs(), 7);
        let c = random_weights(&specs(), 8);
        for (k, t) in &a {
            let bits = |t: &Tensor| t.data.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(t), bits(&b[k]), "{k}");
            assert_ne!(t.data, c[k].data, "{k}");
            assert_eq!(
                t.shape,
                specs().iter().find(|s| &s.name == k).unwrap().shape
            );
        }
    }

    #[test]
    fn drawn_in_spec_order() {
        // A prefix of the specs gets the same values: one stream, in order.
        let all = random_weights(&specs(), 3);
        let first = random_weights(&specs()[..2], 3);
        assert_eq!(all["conv1.weight"], first["conv1.weight"]);
        assert_eq!(all["up.weight"], first["up.weight"]);
        // Swapping the order changes what each tensor gets.
        let mut swapped = specs();
        swapped.swap(0, 1);
        assert_ne!(
            random_weights(&swapped, 3)["conv1.weight"],
            all["conv1.weight"]
        );
    }

    #[test]
    fn statistics_follow_the_roles() {
        let w = random_weights(&specs(), 11);
        let (m, s) = mean_std(&w["conv1.weight"].data);
        let want = (2.0f64 / (64.0 * 9.0)).sqrt();
        assert!(
            m.abs() < 0.01 && (s / want - 1.0).abs() < 0.05,
            "{m} {s} {want}"
        );

        let in_bound = |name: &str, b: f32| {
            let d = &w[name].data;
            assert!(d.iter().all(|x| x.abs() <= b), "{name} exceeds ±{b}");
            let max = d.iter().fold(0f32, |a, x| a.max(x.abs()));
            assert!(max > 0.8 * b, "{name} does not fill ±{b}: max {max}");
        };
        in_bound("up.weight", 1.0 / (16.0f32 * 4.0).sqrt());
        in_bound("up.bias", 1.0 / 64f32.sqrt());
        in_bound("fc.weight", 1.0 / 400f32.sqrt());
        in_bound("fc.bias", 1.0 / 400f32.sqrt());

        for name in ["bn.weight", "bn.running_var"] {
            let d = &w[name].data;
            assert!(d.iter().all(|&x| (0.5..1.5).contains(&x)), "{name}");
            let (m, _) = mean_std(d);
            assert!((m - 1.0).abs() < 0.02, "{name} mean {m}");
        }
        for name in ["bn.bias", "bn.running_mean"] {
            let (m, s) = mean_std(&w[name].data);
            assert!(m.abs() < 0.01 && (s - 0.1).abs() < 0.01, "{name} {m} {s}");
        }
    }

    #[test]
    fn degenerate_shapes_do_not_panic() {
        let w = random_weights(
            &[
                spec("a", &[0, 3, 3, 3], Role::ConvWeight),
                spec("b", &[], Role::Bias { fan_in: 0 }),
                spec("c", &[4], Role::LinearWeight),
                spec("d", &[2, 0], Role::LinearWeight),
            ],
            0,
        );
        assert!(w["a"].is_empty());
        assert_eq!(w["b"].len(), 1);
        assert!(w["b"].data[0].abs() <= 1.0);
        assert_eq!(w["c"].len(), 4);
        assert!(w["d"].is_empty());
    }
}
