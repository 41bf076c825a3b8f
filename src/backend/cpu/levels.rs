//! Multi-level libraries: a static library that holds the model's code for
//! several x86-64 CPU levels and runs the best one the user's CPU and OS
//! run, picked at the first call (CPUID and XGETBV, `runtime/parallel.c`).
//! A library built on an AVX-512 machine then runs, rather than dying of
//! SIGILL, on a CPU with only AVX2 or SSE4.2.
//!
//! The weights are stored once: the top (widest) level packs them, and
//! each lower level plans its kernels over that packing
//! (`ConstPool::narrowed`): the same algorithm per conv, register tiles
//! that divide the top level's panels. Only AMX tiles (bf16) cannot be
//! read by vector code, so a bf16 library with an AMX level carries a
//! second copy, fp32-rounded, for its other levels.

use super::consts::ConstPool;
use super::deferred::{self, Deferred};
use super::CpuOptions;
use crate::backend::llvm::{features, Arch, LlvmError};
use crate::ir::Graph;
use crate::precision::Precision;
use crate::weights::Weights;

/// What `build --target cpu` compiles for when `--cpu` is not given: the
/// x86-64 psABI's levels v4 (AVX-512), v3 (AVX2, FMA) and v2 (SSE4.2), and
/// before them AVX-512 tuned for Intel cores (`skylake-avx512`: LLVM's
/// Intel scheduling and the cost model's Intel constants; Intel CPUs only).
/// On an Intel Xeon, x86-64-v4's code ran resnet50 15% slower than
/// `native`, `skylake-avx512`'s within a few % (docs/performance.md).
pub const DEFAULT_LEVELS: [&str; 4] = ["skylake-avx512", "x86-64-v4", "x86-64-v3", "x86-64-v2"];

/// The same for `--precision bf16`: AMX tiles (Sapphire Rapids and later
/// Xeons) first, then AVX512-BF16's `vdpbf16ps` (Zen 4 and 5), then the
/// emulated path.
pub const DEFAULT_BF16_LEVELS: [&str; 5] = [
    "sapphirerapids",
    "znver4",
    "x86-64-v4",
    "x86-64-v3",
    "x86-64-v2",
];

/// The environment variable that makes a library run a lower level.
pub const FORCE_VAR: &str = "RESNETC_CPU_LEVEL";

/// One level of a library.
pub struct Level {
    /// The CPU name its code is generated for.
    pub cpu: String,
    /// Its kernels' plans; its constants are `pools[weights]`'s data.
    pub pool: ConstPool,
    pub weights: usize,
    /// The owner of its weights (`pool.data` not empty): the Winograd
    /// filters its library transforms at the first call.
    pub deferred: Vec<Deferred>,
    /// The CPU features its code needs, checked at run time (LLVM names,
    /// comma-separated).
    pub needs: String,
}

/// The levels of a build, best first, sharing weights where they can.
/// One level (`--cpu native`, or one name) is a plain single-level build.
pub fn plan(
    graph: &Graph,
    weights: &Weights,
    derived: &Weights,
    opts: &CpuOptions,
) -> Result<Vec<Level>, LlvmError> {
    let mut names: Vec<String> = std::iter::once(opts.cpu.clone())
        .chain(opts.lower.iter().cloned())
        .collect();
    let mut seen = Vec::new();
    names.retain(|n| {
        let new = !seen.contains(n);
        seen.push(n.clone());
        new
    });
    if names.len() == 1 {
        // One level: the plain build, no run-time check.
        let pool = ConstPool::for_options(graph, weights, derived, opts)?;
        return Ok(vec![Level {
            cpu: opts.cpu.clone(),
            deferred: deferred::plan(graph, &pool, weights, derived),
            pool,
            weights: 0,
            needs: String::new(),
        }]);
    }
    if opts.arch != Arch::X86_64 {
        return Err(LlvmError::Levels(
            "several levels are an x86-64 library's: every AArch64 CPU has NEON".into(),
        ));
    }
    if names.iter().any(|n| n == "native") {
        return Err(LlvmError::Levels(
            "`native` cannot be one of several levels: it names this machine's CPU".into(),
        ));
    }
    // Best first: a level that needs more runs on fewer CPUs.
    let mut needs: Vec<(String, Vec<String>)> = names
        .into_iter()
        .map(|n| {
            let f = features::runtime_needs(&n)?;
            Ok((n, f))
        })
        .collect::<Result<_, LlvmError>>()?;
    // The packing is made by the first level planned: the widest, and of
    // those a vendor-neutral one (an Intel-tuned level's choices, pixel
    // tiles for 1×1 convs, would bind the others' panels, where its own
    // tiles divide a neutral level's; a Zen-tuned one's Winograd choices
    // would bind every level's).
    needs.sort_by_key(|(n, f)| {
        let isa = super::super::llvm::VectorIsa::of(n);
        (
            std::cmp::Reverse(isa.lanes),
            isa.intel || isa.amd,
            std::cmp::Reverse(f.len()),
        )
    });
    let mut levels: Vec<Level> = Vec::new();
    for (cpu, need) in needs {
        let level_opts = CpuOptions {
            cpu: cpu.clone(),
            lower: Vec::new(),
            ..opts.clone()
        };
        let isa = level_opts.isa();
        // AMX code reads its own tiles; others the widest pool already
        // built whose packing they can read.
        let amx = opts.precision == Precision::Bf16 && isa.amx_bf16;
        let shared = levels
            .iter()
            .filter(|l| !amx && !l.pool.data.is_empty() && l.pool.isa.lanes >= isa.lanes)
            .find_map(|l| {
                l.pool
                    .narrowed(graph, isa, &level_opts)
                    .map(|p| (p, l.weights))
            });
        let (pool, at, deferred) = match shared {
            Some((p, at)) => (p, at, Vec::new()),
            None => {
                let p = ConstPool::build(graph, weights, derived, &level_opts);
                let at = levels.iter().map(|l| l.weights + 1).max().unwrap_or(0);
                let d = deferred::plan(graph, &p, weights, derived);
                (p, at, d)
            }
        };
        let mut need = need;
        if !pool.bf.is_empty() {
            need.extend(["amx-tile".to_string(), "amx-bf16".to_string()]);
        }
        levels.push(Level {
            cpu,
            pool,
            weights: at,
            deferred,
            needs: need.join(","),
        });
    }
    // Best first, the order the run-time pick tries them in: a level that
    // needs more runs on fewer CPUs.
    levels.sort_by_key(|l| std::cmp::Reverse(l.needs.split(',').count()));
    Ok(levels)
}

/// The levels `build` compiles for: `--cpu` as given (one name or a comma
/// list), else every default level.
pub fn requested(cpu: Option<&str>, precision: Precision) -> (String, Vec<String>) {
    let names: Vec<String> = match cpu {
        Some(c) => c.split(',').map(|s| s.trim().to_string()).collect(),
        None if precision == Precision::Bf16 => {
            DEFAULT_BF16_LEVELS.iter().map(|s| s.to_string()).collect()
        }
        None => DEFAULT_LEVELS.iter().map(|s| s.to_string()).collect(),
    };
    let mut it = names.into_iter();
    let top = it.next().unwrap_or_else(|| "native".into());
    (top, it.collect())
}

impl Level {
    /// Bytes of arena per image this level's code needs.
    pub fn arena_bytes(&self, graph: &Graph) -> usize {
        self.pool.arena_bytes(graph)
    }
}

/// Bytes of arena per image a call needs whichever level runs.
pub fn arena_bytes(graph: &Graph, levels: &[Level]) -> usize {
    levels
        .iter()
        .map(|l| l.arena_bytes(graph))
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::llvm::{features::RUNTIME_CHECKED, KNOWN_CPUS};
    use inkwell::targets::TargetMachine;

    /// The run-time check (CPUID, XGETBV) against LLVM's own reading of
    /// this machine, feature by feature, and level by level against the
    /// JIT's check (`check_host_runs`).
    #[test]
    fn the_runtime_check_agrees_with_llvm_about_this_machine() {
        let host = TargetMachine::get_host_cpu_features().to_string();
        for f in RUNTIME_CHECKED {
            assert!(super::super::cpu_feature_known(f), "the runtime lacks {f}");
            // `evex512` is LLVM's name for 512-bit AVX-512 (AVX-512F here).
            let llvm_name = if *f == "evex512" { "avx512f" } else { f };
            let mut has = host.split(',').any(|h| h == format!("+{llvm_name}"));
            if *f == "intel" {
                has = host_is_intel();
            }
            if f.starts_with("amx") {
                // Linux grants the tile state on request only.
                has &= super::super::amx_permitted();
            }
            assert_eq!(super::super::cpu_runs(f), has, "{f}: {host}");
        }
        assert!(super::super::cpu_runs(""));
        assert!(!super::super::cpu_runs("sse2,no-such-feature"));
        for cpu in KNOWN_CPUS {
            let needs = features::runtime_needs(cpu).expect("checkable").join(",");
            // Levels named after Intel cores run on Intel's alone.
            let vendor = !crate::backend::llvm::is_intel(cpu) || host_is_intel();
            assert_eq!(
                super::super::cpu_runs(&needs),
                features::check_host_runs(cpu).is_ok() && vendor,
                "{cpu}: {needs}"
            );
        }
    }

    /// The vendor string, read here independently of the runtime.
    fn host_is_intel() -> bool {
        // (Leaf 0 exists on every x86-64 CPU.)
        let r = std::arch::x86_64::__cpuid(0);
        let bytes: Vec<u8> = [r.ebx, r.edx, r.ecx]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        bytes == b"GenuineIntel"
    }

    /// Each default level needs what the one below it needs, and more.
    #[test]
    fn default_levels_nest() {
        let needs: Vec<Vec<String>> = DEFAULT_LEVELS
            .iter()
            .map(|c| features::runtime_needs(c).expect("checkable"))
            .collect();
        for pair in needs.windows(2) {
            assert!(pair[1].iter().all(|f| pair[0].contains(f)), "{pair:?}");
            assert!(pair[0].len() > pair[1].len());
        }
        assert!(needs[0].contains(&"intel".to_string()));
        assert!(needs[1].contains(&"avx512f".to_string()));
        assert!(needs[2].contains(&"fma".to_string()));
        assert!(needs[3].contains(&"sse4.2".to_string()));
    }

    #[test]
    fn requested_levels() {
        assert_eq!(
            requested(None, Precision::F32),
            (
                "skylake-avx512".into(),
                vec!["x86-64-v4".into(), "x86-64-v3".into(), "x86-64-v2".into()]
            )
        );
        assert_eq!(
            requested(Some("native"), Precision::F32),
            ("native".into(), vec![])
        );
        assert_eq!(
            requested(Some("znver4, x86-64-v2"), Precision::Bf16),
            ("znver4".into(), vec!["x86-64-v2".into()])
        );
        assert_eq!(requested(None, Precision::Bf16).0, "sapphirerapids");
    }
}
