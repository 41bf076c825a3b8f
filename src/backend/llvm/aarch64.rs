//! AArch64 (`--triple aarch64-linux-gnu`): the CPU names accepted and the
//! target machine. Code for it is only built, never run here: NEON (4 f32
//! lanes, 32 registers, FMA) is part of every AArch64 core, so `generic`
//! code runs on all of them.

use super::LlvmError;
use inkwell::targets::{
    CodeModel, InitializationConfig, RelocMode, Target, TargetMachine, TargetTriple,
};
use inkwell::OptimizationLevel;

/// The triple of AArch64 builds.
pub const TRIPLE: &str = "aarch64-unknown-linux-gnu";

/// CPU names accepted for AArch64 (LLVM's; `apple-m*` and `grace` are its
/// aliases). LLVM accepts any name and silently generates generic code for
/// one it does not know, so only these are passed through; a unit test
/// checks that LLVM knows each.
pub const KNOWN_CPUS: &[&str] = &[
    "generic",
    "cortex-a53",
    "cortex-a55",
    "cortex-a57",
    "cortex-a72",
    "cortex-a73",
    "cortex-a75",
    "cortex-a76",
    "cortex-a77",
    "cortex-a78",
    "cortex-a510",
    "cortex-a710",
    "cortex-a715",
    "cortex-a720",
    "cortex-x1",
    "cortex-x2",
    "cortex-x3",
    "cortex-x4",
    "neoverse-e1",
    "neoverse-n1",
    "neoverse-n2",
    "neoverse-n3",
    "neoverse-v1",
    "neoverse-v2",
    "neoverse-v3",
    "grace",
    "ampere1",
    "ampere1a",
    "ampere1b",
    "a64fx",
    "thunderx2t99",
    "thunderx3t110",
    "tsv110",
    "carmel",
    "oryon-1",
    "apple-m1",
    "apple-m2",
    "apple-m3",
    "apple-m4",
];

/// The AArch64 target machine for `cpu`, one of `KNOWN_CPUS`.
pub fn machine(cpu: &str) -> Result<TargetMachine, LlvmError> {
    if !KNOWN_CPUS.contains(&cpu) {
        return Err(LlvmError::UnknownArmCpu {
            cpu: cpu.to_string(),
            known: KNOWN_CPUS.join(", "),
        });
    }
    Target::initialize_aarch64(&InitializationConfig::default());
    let triple = TargetTriple::create(TRIPLE);
    let target = Target::from_triple(&triple).map_err(|e| LlvmError::Internal(e.to_string()))?;
    target
        .create_target_machine(
            &triple,
            cpu,
            "",
            OptimizationLevel::Aggressive,
            // Position independent: the objects go into static libraries.
            RelocMode::PIC,
            CodeModel::Default,
        )
        .ok_or_else(|| LlvmError::Internal(format!("cannot create a target machine for `{cpu}`")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// LLVM warns about, and ignores, a CPU name it does not know; its `llc`
    /// (installed with LLVM 19) says so for any name of our list it lacks.
    #[test]
    fn llvm_knows_every_aarch64_cpu() {
        let llc = std::path::Path::new("/usr/lib/llvm-19/bin/llc");
        if !llc.exists() {
            eprintln!("skipped: no {}", llc.display());
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let ir = dir.path().join("f.ll");
        std::fs::write(&ir, "define float @f(float %a) {\n  ret float %a\n}\n").expect("write");
        for cpu in KNOWN_CPUS {
            let o = std::process::Command::new(llc)
                .args(["-mtriple", TRIPLE, "-mcpu", cpu, "-o", "/dev/null"])
                .arg(&ir)
                .output()
                .expect("llc runs");
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(o.status.success() && err.is_empty(), "{cpu}: {err}");
        }
        // The check itself: an unknown name is reported.
        let o = std::process::Command::new(llc)
            .args([
                "-mtriple",
                TRIPLE,
                "-mcpu",
                "cortex-a999",
                "-o",
                "/dev/null",
            ])
            .arg(&ir)
            .output()
            .expect("llc runs");
        assert!(String::from_utf8_lossy(&o.stderr).contains("not a recognized processor"));
    }

    #[test]
    fn an_unknown_aarch64_cpu_is_refused_with_the_known_names() {
        let err = machine("cortex-a999").expect_err("refused");
        assert!(matches!(err, LlvmError::UnknownArmCpu { .. }), "{err:?}");
        let LlvmError::UnknownArmCpu { known, .. } = &err else {
            unreachable!()
        };
        assert!(known.contains("neoverse-n1") && known.contains("generic"));
        assert!(
            machine("native").is_err(),
            "native is the host, not AArch64"
        );
        assert!(machine("neoverse-v1").is_ok());
    }
}
