//! The GPU architectures the CUDA back end targets: what each one's code
//! may use and what the cost model plans for. Plain data, shared by the
//! lowering (through LLVM) and the runtime (which has no LLVM).

/// A GPU architecture the CUDA back end targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gpu {
    /// `sm_80`: the compute capability, as ptxas and LLVM spell it.
    pub name: &'static str,
    /// The PTX ISA version the PTX declares (the driver must know it).
    pub ptx: &'static str,
    /// The oldest driver that knows that PTX version, as
    /// `cuDriverGetVersion` reports it (11050: CUDA 11.5).
    pub driver: u32,
    /// `cp.async` (global → shared memory without registers): sm_80 on.
    pub async_copies: bool,
    /// Multiprocessors the cost model plans for: those of `part`.
    pub sms: u64,
    /// The data-centre part the plan assumes.
    pub part: &'static str,
}

/// The GPU architectures the CUDA back end targets. PTX for one runs on
/// every later one through the driver's JIT (sm_80 PTX on an H100), so
/// the choice fixes the oldest GPU an artifact runs on and what the cost
/// model plans for. Every entry declares PTX ISA 7.5 at least (CUDA 11.5
/// drivers); sm_89 and sm_90 need 7.8 and 8.0.
pub const GPUS: &[Gpu] = &[
    Gpu {
        name: "sm_70",
        ptx: "+ptx75",
        driver: 11050,
        async_copies: false,
        sms: 80,
        part: "V100",
    },
    Gpu {
        name: "sm_75",
        ptx: "+ptx75",
        driver: 11050,
        async_copies: false,
        sms: 40,
        part: "T4",
    },
    Gpu {
        name: "sm_80",
        ptx: "+ptx75",
        driver: 11050,
        async_copies: true,
        sms: 108,
        part: "A100",
    },
    Gpu {
        name: "sm_86",
        ptx: "+ptx75",
        driver: 11050,
        async_copies: true,
        sms: 72,
        part: "A10",
    },
    Gpu {
        name: "sm_89",
        ptx: "+ptx78",
        driver: 11080,
        async_copies: true,
        sms: 58,
        part: "L4",
    },
    Gpu {
        name: "sm_90",
        ptx: "+ptx80",
        driver: 12000,
        async_copies: true,
        sms: 132,
        part: "H100",
    },
];

/// The architecture named `name`.
pub fn find(name: &str) -> Option<&'static Gpu> {
    GPUS.iter().find(|g| g.name == name)
}

/// The compute capability of `gpu`, as a number (`sm_86`: 86).
pub fn capability(gpu: &Gpu) -> u32 {
    gpu.name
        .strip_prefix("sm_")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The newest architecture whose PTX runs on a GPU of compute capability
/// `cc` (PTX runs on the GPU it was built for and every later one), with
/// any driver.
pub fn newest_for(cc: u32) -> Option<&'static Gpu> {
    newest_runnable(cc, u32::MAX)
}

/// `newest_for(cc)` among the architectures whose PTX version a driver of
/// version `driver` knows (an H100 with a CUDA 11.8 driver runs sm_89's
/// PTX 7.8, not sm_90's 8.0).
pub fn newest_runnable(cc: u32, driver: u32) -> Option<&'static Gpu> {
    GPUS.iter()
        .rev()
        .find(|g| capability(g) <= cc && g.driver <= driver)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_gpu_has_a_capability_and_the_newest_that_runs_is_found() {
        let caps: Vec<u32> = GPUS.iter().map(capability).collect();
        assert_eq!(caps, [70, 75, 80, 86, 89, 90]);
        assert!(GPUS.iter().all(|g| g.async_copies == (capability(g) >= 80)));
        assert_eq!(newest_for(87).map(|g| g.name), Some("sm_86"));
        assert_eq!(newest_for(75).map(|g| g.name), Some("sm_75"));
        assert_eq!(newest_for(100).map(|g| g.name), Some("sm_90"));
        assert_eq!(newest_for(61), None);
        assert_eq!(newest_runnable(90, 12080).map(|g| g.name), Some("sm_90"));
        assert_eq!(newest_runnable(90, 11080).map(|g| g.name), Some("sm_89"));
        assert_eq!(newest_runnable(89, 11070).map(|g| g.name), Some("sm_86"));
        assert_eq!(newest_runnable(75, 11040), None);
    }

    /// The C runtime of CUDA static libraries (runtime/cuda_rt.c) has no
    /// Rust to call: its list of architectures to advise must be this one.
    #[test]
    fn the_c_runtime_knows_the_same_architectures() {
        let c = include_str!("../../../runtime/cuda_rt.c");
        let list = c
            .lines()
            .find_map(|l| l.trim().strip_prefix("static const int known[] = {"))
            .and_then(|l| l.strip_suffix("};"))
            .expect("cuda_rt.c's `known` list");
        let known: Vec<u32> = list
            .split(',')
            .map(|n| n.trim().parse().unwrap_or(0))
            .collect();
        let ours: Vec<u32> = GPUS.iter().rev().map(capability).collect();
        assert_eq!(known, ours);
    }
}
