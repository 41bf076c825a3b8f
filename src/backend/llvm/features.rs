//! Whether this machine runs the code LLVM generates for a named x86-64
//! CPU: a JIT run of `--cpu x86-64-v4` on a CPU without AVX-512 would die
//! of SIGILL at its first 512-bit instruction, with no message.

use super::{LlvmError, KNOWN_CPUS};
use inkwell::targets::TargetMachine;

/// LLVM's own list of a named CPU's features (`avx512f`, `fma`, ...): the
/// table clang expands `-march` with, in LLVM's X86 target parser. LLVM's
/// C API has no call for it, so the two C++ functions are declared here by
/// their mangled names, which inkwell's `llvm19-1` feature pins (the
/// tests check the answers against known CPUs). `None` for a name the
/// parser does not know.
fn llvm_cpu_features(cpu: &str) -> Option<Vec<String>> {
    /// `llvm::StringRef`: pointer and length, passed by value in two
    /// registers like this `repr(C)` pair.
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct StringRef {
        data: *const u8,
        len: usize,
    }
    /// `llvm::SmallVector<StringRef, 256>`: the `SmallVectorImpl` header
    /// (begin, 32-bit size and capacity), then the inline storage that
    /// `begin` points at while the vector is small. An x86 CPU has about
    /// 100 features, so it never grows (which would malloc; see below).
    #[repr(C)]
    struct SmallVec {
        begin: *mut StringRef,
        size: u32,
        capacity: u32,
        inline: [StringRef; 256],
    }
    extern "C" {
        // llvm::X86::parseArchX86(StringRef CPU, bool Only64Bit) -> CPUKind
        // (0: CK_None, an unknown name).
        #[link_name = "_ZN4llvm3X8612parseArchX86ENS_9StringRefEb"]
        fn parse_arch_x86(cpu: StringRef, only_64bit: bool) -> i32;
        // llvm::X86::getFeaturesForCPU(StringRef CPU,
        //     SmallVectorImpl<StringRef> &Features, bool NeedPlus)
        #[link_name = "_ZN4llvm3X8617getFeaturesForCPUENS_9StringRefERNS_15SmallVectorImplIS1_EEb"]
        fn get_features_for_cpu(cpu: StringRef, features: *mut SmallVec, need_plus: bool);
        fn free(p: *mut std::ffi::c_void);
    }
    let name = StringRef {
        data: cpu.as_ptr(),
        len: cpu.len(),
    };
    // SAFETY: `name` borrows `cpu` for the call only; the parser reads it.
    if unsafe { parse_arch_x86(name, true) } == 0 {
        // getFeaturesForCPU asserts on (and, in release LLVM, reads past
        // its table for) an unknown name.
        return None;
    }
    let empty = StringRef {
        data: std::ptr::null(),
        len: 0,
    };
    let mut v = Box::new(SmallVec {
        begin: std::ptr::null_mut(),
        size: 0,
        capacity: 256,
        inline: [empty; 256],
    });
    v.begin = v.inline.as_mut_ptr();
    let inline = v.begin;
    // SAFETY: `v` is laid out as LLVM's SmallVector<StringRef, 256> (header,
    // then the storage `begin` points at) and lives across the call; the
    // names pushed point into LLVM's static feature table.
    unsafe { get_features_for_cpu(name, &mut *v, false) };
    let features = (0..v.size as usize)
        .map(|i| {
            // SAFETY: the first `size` elements were written by the call;
            // each names `len` bytes of a static string.
            let s = unsafe { *v.begin.add(i) };
            let bytes = unsafe { std::slice::from_raw_parts(s.data, s.len) };
            String::from_utf8_lossy(bytes).into_owned()
        })
        .collect();
    if v.begin != inline {
        // SAFETY: a grown SmallVector's storage comes from malloc.
        unsafe { free(v.begin.cast()) };
    }
    Some(features)
}

/// What the parser's list leaves implied and people look for: every
/// AVX-512 subset needs AVX-512F (x86-64-v4 lists `avx512vl`, not
/// `avx512f`), AVX-512F needs AVX2 and FMA, AVX2, FMA and F16C need AVX,
/// each SSE level the one before.
const IMPLIED: &[(&str, &str)] = &[
    ("avx512", "avx512f"),
    ("avx512f", "avx2"),
    ("avx512f", "fma"),
    ("avx2", "avx"),
    ("fma", "avx"),
    ("f16c", "avx"),
    ("avx", "sse4.2"),
    ("sse4.2", "sse4.1"),
    ("sse4.1", "ssse3"),
    ("ssse3", "sse3"),
];

/// Features LLVM's code generation uses by itself (vector, FMA and
/// bit-manipulation instructions), by name prefix. The others (SGX, PKU,
/// shadow stacks, WAITPKG, ...) appear only through intrinsics, which
/// resnetc never emits, and virtual machines often hide them: an Ice Lake
/// VM without SGX runs `--cpu icelake-server` code.
const GENERATED: &[&str] = &[
    "sse",
    "ssse3",
    "avx",
    "fma",
    "f16c",
    "xop",
    "popcnt",
    "lzcnt",
    "bmi",
    "movbe",
    "tbm",
    "adx",
    "gfni",
    "vaes",
    "vpclmulqdq",
    "pclmul",
    "cmov",
    "cx16",
    "evex512",
];

/// The features of `cpu_features` (LLVM names, as the parser lists them)
/// and those they imply that `host` (LLVM's host feature string,
/// `+avx2,-avx512f,...`) says the host lacks, an implied one before the
/// first that implies it. A name the host string does not mention is not
/// counted as missing: the host string names every instruction-set
/// extension, and the parser has a few names of its own besides.
/// Only features in `GENERATED` count. `evex512` (LLVM's name for 512-bit
/// AVX-512) is left out beside `avx512f`, which says the same to a reader.
pub fn missing(cpu_features: &[&str], host: &str) -> Vec<String> {
    let lacks: Vec<&str> = host
        .split(',')
        .filter_map(|f| f.strip_prefix('-'))
        .collect();
    let mut out: Vec<String> = generated(cpu_features)
        .into_iter()
        .filter(|f| lacks.contains(f))
        .map(String::from)
        .collect();
    if out.iter().any(|f| f == "avx512f") {
        out.retain(|f| f != "evex512");
    }
    out
}

/// The features of `cpu_features` and those they imply, an implied one
/// before the first that implies it, that code generation uses by itself
/// (`GENERATED`).
fn generated<'a>(cpu_features: &[&'a str]) -> Vec<&'a str> {
    let mut all: Vec<&str> = Vec::new();
    fn add<'a>(all: &mut Vec<&'a str>, f: &'a str) {
        if all.contains(&f) {
            return;
        }
        for (by, implied) in IMPLIED {
            if f != *implied && (f == *by || (by.ends_with("512") && f.starts_with(by))) {
                add(all, implied);
            }
        }
        all.push(f);
    }
    for f in cpu_features {
        add(&mut all, f);
    }
    all.retain(|f| GENERATED.iter().any(|g| f.starts_with(g)));
    all
}

/// The features the run-time check of a multi-level library knows
/// (`runtime/parallel.c`'s CPUID table, by LLVM's names).
pub const RUNTIME_CHECKED: &[&str] = &[
    "cmov",
    "sse",
    "sse2",
    "sse3",
    "pclmul",
    "ssse3",
    "fma",
    "cx16",
    "sse4.1",
    "sse4.2",
    "movbe",
    "popcnt",
    "avx",
    "f16c",
    "bmi",
    "avx2",
    "bmi2",
    "avx512f",
    "evex512",
    "avx512dq",
    "adx",
    "avx512ifma",
    "avx512cd",
    "avx512bw",
    "avx512vl",
    "avx512vbmi",
    "avx512vbmi2",
    "gfni",
    "vaes",
    "vpclmulqdq",
    "avx512vnni",
    "avx512bitalg",
    "avx512vpopcntdq",
    "avx512vp2intersect",
    "amx-bf16",
    "avx512fp16",
    "amx-tile",
    "amx-int8",
    "avxvnni",
    "avx512bf16",
    "avxifma",
    "sahf",
    "lzcnt",
    "sse4a",
    "xop",
    "fma4",
    "tbm",
    "intel",
];

/// What a library's run-time check asks of the CPU before it runs code
/// generated for `cpu`: every feature code generation may use (`native`:
/// nothing, its build has one level and no check).
pub fn runtime_needs(cpu: &str) -> Result<Vec<String>, LlvmError> {
    if cpu == "native" {
        return Ok(Vec::new());
    }
    if !KNOWN_CPUS.contains(&cpu) {
        return Err(LlvmError::UnknownCpu(cpu.to_string()));
    }
    let features = llvm_cpu_features(cpu)
        .ok_or_else(|| LlvmError::Internal(format!("LLVM's X86 parser has no CPU `{cpu}`")))?;
    let names: Vec<&str> = features.iter().map(String::as_str).collect();
    let mut needs: Vec<String> = generated(&names)
        .into_iter()
        .map(|f| match RUNTIME_CHECKED.contains(&f) {
            true => Ok(f.to_string()),
            false => Err(LlvmError::Levels(format!(
                "code for `{cpu}` may use {}, which a library cannot check for at run time",
                friendly(f)
            ))),
        })
        .collect::<Result<_, _>>()?;
    // A level named after an Intel core is tuned for Intel's (LLVM's
    // scheduling, the cost model's constants): it runs on Intel CPUs, the
    // vendor a pseudo-feature of the check.
    if super::is_intel(cpu) {
        needs.push("intel".into());
    }
    Ok(needs)
}

/// A feature as Intel and AMD write it: `avx512f` → `AVX-512F`, `fma` →
/// `FMA`, `sse4.2` → `SSE4.2`.
pub fn friendly(feature: &str) -> String {
    match feature.strip_prefix("avx512") {
        Some(rest) => format!("AVX-512{}", rest.to_uppercase()),
        None => feature.to_uppercase(),
    }
}

/// `HostLacks` unless this machine runs code generated for `cpu`
/// (`native` always runs; an unknown name is `UnknownCpu`).
pub fn check_host_runs(cpu: &str) -> Result<(), LlvmError> {
    if cpu == "native" {
        return Ok(());
    }
    if !KNOWN_CPUS.contains(&cpu) {
        return Err(LlvmError::UnknownCpu(cpu.to_string()));
    }
    let host = TargetMachine::get_host_cpu_features().to_string();
    let lacking = |cpu: &str| -> Result<Vec<String>, LlvmError> {
        let features = llvm_cpu_features(cpu)
            .ok_or_else(|| LlvmError::Internal(format!("LLVM's X86 parser has no CPU `{cpu}`")))?;
        let names: Vec<&str> = features.iter().map(String::as_str).collect();
        Ok(missing(&names, &host))
    };
    let lacks = lacking(cpu)?;
    if lacks.is_empty() {
        return Ok(());
    }
    // The newest x86-64 level this machine runs, for the hint.
    let mut level = None;
    for l in ["x86-64-v4", "x86-64-v3", "x86-64-v2"] {
        if lacking(l)?.is_empty() {
            level = Some(l);
            break;
        }
    }
    let hint = match level {
        Some(l) => format!("use `--cpu native` (this machine's CPU) or `--cpu {l}`, the newest x86-64 level it runs; `build` writes code for any CPU"),
        None => "use `--cpu native` (this machine's CPU); `build` writes code for any CPU".into(),
    };
    Err(LlvmError::HostLacks {
        cpu: cpu.to_string(),
        missing: lacks
            .iter()
            .map(|f| friendly(f))
            .collect::<Vec<_>>()
            .join(", "),
        hint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_knows_every_cpu_and_which_have_avx512() {
        for cpu in KNOWN_CPUS {
            let f = llvm_cpu_features(cpu).unwrap_or_else(|| panic!("{cpu} unknown to LLVM"));
            // What the CPU needs, implications included: nothing is missing
            // on a host that has everything but `x`.
            let names: Vec<&str> = f.iter().map(String::as_str).collect();
            let has = |x: &str| missing(&names, &format!("-{x}")) == [x];
            // The oracle: the table the back end tiles its kernels by.
            assert_eq!(
                has("avx512f"),
                super::super::AVX512_CPUS.contains(cpu),
                "{cpu}: {f:?}"
            );
            // Every level above the baseline has SSE4.2; v3 and later AVX2
            // and FMA (the x86-64 psABI's levels).
            assert_eq!(has("sse4.2"), *cpu != "x86-64", "{cpu}");
            let v3 = !["x86-64", "x86-64-v2"].contains(cpu);
            assert_eq!(has("avx2") && has("fma"), v3, "{cpu}");
        }
        assert_eq!(llvm_cpu_features("pentium-9000"), None);
    }

    #[test]
    fn missing_features_are_those_the_host_disables() {
        let v4 = llvm_cpu_features("x86-64-v4").expect("v4");
        let v4: Vec<&str> = v4.iter().map(String::as_str).collect();
        // A Haswell: AVX2 and FMA, no AVX-512 (part of LLVM's host string).
        let haswell = "+sse4.2,+avx,+avx2,+fma,+bmi2,-avx512f,-avx512bw,-avx512cd,-avx512dq,-avx512vl,-amx-tile,-avx512fp16";
        // AVX-512F (which the parser leaves implied) first, no AMX or FP16
        // (Sapphire Rapids', not v4's), nothing a Haswell has.
        let mut m = missing(&v4, haswell);
        m.sort();
        assert_eq!(
            m,
            ["avx512bw", "avx512cd", "avx512dq", "avx512f", "avx512vl"]
        );
        assert_eq!(missing(&v4, haswell)[0], "avx512f");
        // An AVX-512 host lacks nothing v4 needs.
        let zen5 = haswell.replace("-avx512", "+avx512");
        assert_eq!(missing(&v4, &zen5), Vec::<String>::new());
        let v3 = llvm_cpu_features("x86-64-v3").expect("v3");
        let v3: Vec<&str> = v3.iter().map(String::as_str).collect();
        assert_eq!(missing(&v3, haswell), Vec::<String>::new());
        // A Sandy Bridge: AVX without AVX2 or FMA.
        assert_eq!(missing(&v3, "+avx,-avx2,-fma"), ["avx2", "fma"]);
        // A Core 2: not even AVX, which v3's AVX2 implies.
        assert_eq!(
            missing(&v3, "+ssse3,-sse4.1,-sse4.2,-avx,-avx2,-fma"),
            ["sse4.1", "sse4.2", "avx", "avx2", "fma"]
        );
        // A VM that hides what only intrinsics use runs the code.
        let icelake = llvm_cpu_features("icelake-server").expect("icelake");
        let icelake: Vec<&str> = icelake.iter().map(String::as_str).collect();
        assert!(icelake.contains(&"sgx") && icelake.contains(&"pku"));
        assert_eq!(
            missing(&icelake, "+avx512f,+avx512vl,-sgx,-pku,-pconfig"),
            Vec::<String>::new()
        );
        // evex512 says nothing beside avx512f; alone it is named.
        assert_eq!(
            missing(&["avx512f", "evex512"], "-avx512f,-evex512"),
            ["avx512f"]
        );
        assert_eq!(
            missing(&["avx512f", "evex512"], "+avx512f,-evex512"),
            ["evex512"]
        );
    }

    #[test]
    fn features_are_named_as_vendors_do() {
        assert_eq!(friendly("avx512f"), "AVX-512F");
        assert_eq!(friendly("avx512vl"), "AVX-512VL");
        assert_eq!(friendly("fma"), "FMA");
        assert_eq!(friendly("avx2"), "AVX2");
        assert_eq!(friendly("sse4.2"), "SSE4.2");
    }

    #[test]
    fn this_host_runs_native_and_its_own_level() {
        assert!(check_host_runs("native").is_ok());
        assert!(matches!(
            check_host_runs("pentium-9000"),
            Err(LlvmError::UnknownCpu(_))
        ));
        // The baseline runs everywhere x86-64 does.
        assert!(check_host_runs("x86-64").is_ok());
        let host = TargetMachine::get_host_cpu_features().to_string();
        let v4 = check_host_runs("x86-64-v4");
        if host.split(',').any(|f| f == "+avx512f") {
            assert!(v4.is_ok(), "{v4:?}");
        } else {
            let e = v4.expect_err("no AVX-512 here").to_string();
            assert!(e.contains("AVX-512F"), "{e}");
        }
    }
}
