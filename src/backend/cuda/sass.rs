//! SASS beside the PTX: where NVIDIA's ptxas is installed, the PTX is
//! assembled ahead of time for the architecture it was built for, so that
//! the driver loads machine code instead of JIT-compiling every kernel on
//! the first run (densenet201: 13 MB of PTX, about 20 s). A cubin runs only
//! on a GPU of exactly its architecture; the runtimes load it there and the
//! PTX everywhere else (and wherever the cubin fails to load), so SASS is
//! an optimization that can never make a model unrunnable.

use std::path::{Path, PathBuf};
use std::process::Command;

/// ptxas: `RESNETC_PTXAS` (a path; empty turns SASS off), else `ptxas` on
/// `PATH`, else `$CUDA_HOME/bin/ptxas`, else `/usr/local/cuda/bin/ptxas`.
pub fn ptxas() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RESNETC_PTXAS") {
        return (!p.is_empty()).then(|| PathBuf::from(p));
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("ptxas"));
    let cuda_home = std::env::var_os("CUDA_HOME").map(|h| Path::new(&h).join("bin/ptxas"));
    on_path
        .chain(cuda_home)
        .chain([PathBuf::from("/usr/local/cuda/bin/ptxas")])
        .find(|p| p.is_file())
}

/// `ptx` assembled by `ptxas` for `gpu` (`sm_90`): the cubin, or why not.
pub fn assemble(ptxas: &Path, ptx: &str, gpu: &str) -> Result<Vec<u8>, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("a temporary directory: {e}"))?;
    let (src, out) = (dir.path().join("m.ptx"), dir.path().join("m.cubin"));
    std::fs::write(&src, ptx).map_err(|e| format!("writing the PTX: {e}"))?;
    // --split-compile 0: one thread per core (a large model's kernels
    // take a single thread tens of seconds, as long as the driver's JIT).
    let run = Command::new(ptxas)
        .args(["-arch", gpu, "--split-compile", "0", "-o"])
        .arg(&out)
        .arg(&src)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", ptxas.display()))?;
    if !run.status.success() {
        let said = String::from_utf8_lossy(&run.stderr);
        return Err(format!(
            "{} failed: {}",
            ptxas.display(),
            said.trim().chars().take(2000).collect::<String>()
        ));
    }
    std::fs::read(&out).map_err(|e| format!("reading the cubin: {e}"))
}

/// Adds SASS to `p` (for `p.plan.gpu`) where ptxas is found; what was
/// done, for the user: `None` without ptxas, else a line saying which
/// ptxas made the SASS or why it did not (the PTX then runs alone).
pub fn add(p: &mut super::CudaProgram) -> Option<String> {
    let ptxas = ptxas()?;
    Some(match assemble(&ptxas, &p.ptx, &p.plan.gpu) {
        Ok(cubin) => {
            let line = format!(
                "SASS for {} ({} KiB) by {}",
                p.plan.gpu,
                cubin.len() / 1024,
                ptxas.display()
            );
            p.sass = Some(cubin);
            line
        }
        Err(e) => format!("no SASS, PTX only: {e}"),
    })
}
