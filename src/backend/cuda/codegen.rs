//! PTX from the lowered module, optimized and emitted on several threads.
//!
//! LLVM's optimization and NVPTX code generation run one function at a
//! time and took 95% of a CUDA build (densenet201: 22 s of 22.7 s on one
//! core), while the kernels share nothing: no callees, no module-level
//! data (their shared arrays are their own). So the module is written
//! once as bitcode; each thread parses its own copy in its own LLVM
//! context, keeps a contiguous run of kernels (the others made internal,
//! then deleted as dead), optimizes and emits it; the PTX texts are then
//! joined in kernel order under one header. A run is as long as its
//! kernels' pre-optimization instruction counts, so the threads finish
//! together. The result is the text a single-threaded build writes
//! (`tests/cuda_backend.rs` compares them). A module with anything besides
//! kernels, intrinsics and the kernels' shared arrays (which no lowering
//! makes today) is emitted on one thread, as the runs would each need it.

use super::simt::PTX_KERNEL;
use crate::backend::llvm::{self, LlvmError};
use inkwell::context::Context;
use inkwell::memory_buffer::MemoryBuffer;
use inkwell::module::{Linkage, Module};
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{FileType, TargetMachine};
use inkwell::values::FunctionValue;
use inkwell::AddressSpace;

/// At most this many threads: each holds a whole copy of the module until
/// it has dropped the kernels it does not emit.
const MAX_THREADS: usize = 8;

/// Whether `module` is what the runs assume: every definition a kernel,
/// every declaration an LLVM intrinsic, every global a kernel's own
/// shared array. (A helper function, a device-side constant table or a
/// `vprintf` would need to be declared in every run; such a module is
/// emitted on one thread.)
fn independent(module: &Module) -> bool {
    let functions = module.get_functions().all(|f| {
        if f.count_basic_blocks() > 0 {
            f.get_call_conventions() == PTX_KERNEL
        } else {
            f.get_name().to_bytes().starts_with(b"llvm.")
        }
    });
    let globals = module.get_globals().all(|g| {
        matches!(g.get_linkage(), Linkage::Internal | Linkage::Private)
            && g.as_pointer_value().get_type().get_address_space() == AddressSpace::from(3u16)
    });
    functions && globals
}

/// Kernels (function definitions) of `module`, in order, with their sizes.
fn kernels(module: &Module) -> Vec<(String, usize)> {
    module
        .get_functions()
        .filter(|f| f.count_basic_blocks() > 0)
        .map(|f| (f.get_name().to_string_lossy().into_owned(), size(f)))
        .collect()
}

/// Instructions in `f`: how long it takes to optimize and emit, roughly.
fn size(f: FunctionValue) -> usize {
    f.get_basic_block_iter()
        .map(|b| b.get_instructions().count())
        .sum()
}

/// Cuts `sizes` into at most `n` contiguous runs of similar total size;
/// the index ranges, in order.
fn runs(sizes: &[usize], n: usize) -> Vec<std::ops::Range<usize>> {
    let total: usize = sizes.iter().sum();
    let mut out = Vec::new();
    let (mut start, mut acc) = (0, 0);
    for (i, s) in sizes.iter().enumerate() {
        acc += s;
        // Close a run once it reaches its share of the total so far.
        if acc * n >= total * (out.len() + 1) && out.len() + 1 < n {
            out.push(start..i + 1);
            start = i + 1;
        }
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    out
}

/// Optimizes `module` for `machine` and writes it as PTX text.
fn emit(module: &Module, machine: &TargetMachine) -> Result<String, LlvmError> {
    llvm::target(module, machine);
    llvm::optimize(module, machine)?;
    let buf = llvm::write(module, machine, FileType::Assembly)?;
    Ok(String::from_utf8_lossy(&buf)
        .trim_end_matches('\0')
        .to_string())
}

/// Keeps only the kernels named in `keep`, then emits them.
fn emit_run(bitcode: &[u8], keep: &[String], gpu: &str) -> Result<String, LlvmError> {
    let ctx = Context::create();
    let buf = MemoryBuffer::create_from_memory_range_copy(bitcode, "kernels");
    let module = Module::parse_bitcode_from_buffer(&buf, &ctx)
        .map_err(|e| LlvmError::Internal(e.to_string()))?;
    for f in module.get_functions() {
        if f.count_basic_blocks() > 0
            && !keep.iter().any(|k| f.get_name().to_bytes() == k.as_bytes())
        {
            f.set_linkage(Linkage::Internal);
        }
    }
    let machine = super::nvptx_machine(gpu)?;
    module
        .run_passes("globaldce", &machine, PassBuilderOptions::create())
        .map_err(|e| LlvmError::Internal(e.to_string()))?;
    emit(&module, &machine)
}

/// One run's PTX cut into what the joined text needs: the header's
/// list of demoted shared arrays (comments) and the kernels themselves,
/// from the first kernel's `// .globl` line on.
struct Part<'a> {
    head: &'a str,
    demoted: Vec<&'a str>,
    kernels: String,
}

fn part(ptx: &str, first: usize) -> Result<Part<'_>, LlvmError> {
    let bad = || LlvmError::Internal("PTX of an unexpected layout".into());
    let globl = ptx.find("\t// .globl\t").ok_or_else(bad)?;
    let line_end = globl + ptx[globl..].find('\n').ok_or_else(bad)? + 1;
    let entry = line_end + ptx[line_end..].find("\n.visible .entry").ok_or_else(bad)? + 1;
    // Only comments on demoted shared arrays may stand before the first
    // kernel: anything else would be a module-scope declaration to keep.
    let mut demoted = Vec::new();
    for l in ptx[line_end..entry].lines() {
        if l.ends_with(" has been demoted") {
            demoted.push(l);
        } else if !l.trim().is_empty() {
            return Err(LlvmError::Internal(format!(
                "PTX of an unexpected layout: `{l}` before the first kernel"
            )));
        }
    }
    let kernels = renumber(
        &format!("{}{}", &ptx[globl..line_end], &ptx[entry..]),
        first,
    );
    Ok(Part {
        head: &ptx[..globl],
        demoted,
        kernels,
    })
}

/// Labels carry the number of their function in the module
/// (`$L__BB<f>_<block>`); a run's first kernel is its function 0, the
/// `first`-th of the whole module.
fn renumber(text: &str, first: usize) -> String {
    const LABEL: &str = "$L__BB";
    let mut out = String::with_capacity(text.len() + text.len() / 64);
    let mut rest = text;
    while let Some(at) = rest.find(LABEL) {
        let digits = rest[at + LABEL.len()..]
            .bytes()
            .take_while(u8::is_ascii_digit)
            .count();
        let num = &rest[at + LABEL.len()..at + LABEL.len() + digits];
        out.push_str(&rest[..at + LABEL.len()]);
        match num.parse::<usize>() {
            Ok(n) => out.push_str(&(n + first).to_string()),
            Err(_) => out.push_str(num),
        }
        rest = &rest[at + LABEL.len() + digits..];
    }
    out.push_str(rest);
    out
}

/// The runs' PTX texts as one, laid out as one run would have written it.
fn join(texts: &[String], firsts: &[usize]) -> Result<String, LlvmError> {
    let parts: Vec<Part> = texts
        .iter()
        .zip(firsts)
        .map(|(t, &f)| part(t, f))
        .collect::<Result<_, _>>()?;
    if parts.iter().any(|p| p.head != parts[0].head) {
        return Err(LlvmError::Internal(
            "PTX runs with different headers".into(),
        ));
    }
    let mut out = parts[0].head.to_string();
    let (globl, entry) = parts[0]
        .kernels
        .split_once('\n')
        .ok_or_else(|| LlvmError::Internal("PTX of an unexpected layout".into()))?;
    out.push_str(globl);
    out.push('\n');
    let demoted: Vec<&str> = parts
        .iter()
        .flat_map(|p| p.demoted.iter().copied())
        .collect();
    for d in &demoted {
        out.push_str(d);
        out.push('\n');
    }
    if !demoted.is_empty() {
        out.push('\n');
    }
    for (i, k) in std::iter::once(entry)
        .chain(parts[1..].iter().map(|p| p.kernels.as_str()))
        .enumerate()
    {
        if i > 0 && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(k);
    }
    Ok(out)
}

/// PTX for `module`'s kernels, on up to `threads` threads (0: one per
/// core, at most `MAX_THREADS`).
pub fn ptx(module: &Module, gpu: &str, threads: usize) -> Result<String, LlvmError> {
    let all = kernels(module);
    let want = if threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_THREADS))
    } else {
        threads
    };
    let sizes: Vec<usize> = all.iter().map(|(_, s)| *s).collect();
    let parts = runs(&sizes, want.max(1));
    if parts.len() <= 1 || !independent(module) {
        return emit(module, &super::nvptx_machine(gpu)?);
    }
    let bitcode = module.write_bitcode_to_memory().as_slice().to_vec();
    let texts: Vec<Result<String, LlvmError>> = std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .iter()
            .map(|r| {
                let keep: Vec<String> = all[r.clone()].iter().map(|(n, _)| n.clone()).collect();
                let bitcode = &bitcode;
                s.spawn(move || emit_run(bitcode, &keep, gpu))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(LlvmError::Internal("a PTX thread panicked".into())))
            })
            .collect()
    });
    let texts: Vec<String> = texts.into_iter().collect::<Result<_, _>>()?;
    let firsts: Vec<usize> = parts.iter().map(|r| r.start).collect();
    join(&texts, &firsts)
}

#[cfg(test)]
mod tests {
    use super::{ptx, runs, PTX_KERNEL};
    use inkwell::context::Context;
    use inkwell::AddressSpace;

    /// What the lowering makes is what the runs may split: a model with
    /// a GEMM (shared arrays), a pool, a concat and a softmax.
    #[test]
    fn lowered_models_are_split_into_runs() {
        let src = "model m(x: f32[N, 8, 8, 8]) {\n\
            let a = x |> c: conv(16, k: 3, pad: 1) |> relu()\n\
            concat(a, x) |> maxpool(k: 2, stride: 2) |> global_avgpool() |> flatten() |> fc: linear(4) |> softmax()\n}\n";
        let c = crate::front::compile_source("m.res", src, None).expect("compiles");
        let w = crate::weights::random_weights(&crate::weights::specs_of(&c.graph), 1);
        let mut g = c.graph.clone();
        crate::passes::optimize(&mut g, None);
        let ctx = Context::create();
        let opts = crate::backend::cuda::CudaOptions::default();
        let l = crate::backend::cuda::lower::lower(
            &ctx,
            &g,
            &w,
            crate::backend::cuda::simt::Mode::Gpu,
            Default::default(),
            &opts,
        )
        .expect("lowers");
        assert!(l.module.get_functions().count() > 3);
        assert!(super::independent(&l.module));
    }

    /// Two kernels reading one device-side table: a module the runs
    /// cannot split (each would need the table), so it is emitted whole,
    /// the table declared once, whatever the thread count.
    #[test]
    fn a_module_with_shared_globals_is_emitted_on_one_thread() {
        let ctx = Context::create();
        let module = ctx.create_module("m");
        let f32t = ctx.f32_type();
        let table = module.add_global(f32t.array_type(4), Some(AddressSpace::from(1u16)), "tbl");
        table.set_initializer(&f32t.array_type(4).const_zero());
        let ptr = ctx.ptr_type(AddressSpace::default());
        for name in ["k0", "k1"] {
            let f = module.add_function(name, ctx.void_type().fn_type(&[ptr.into()], false), None);
            f.set_call_conventions(PTX_KERNEL);
            let b = ctx.create_builder();
            b.position_at_end(ctx.append_basic_block(f, "entry"));
            let v = b
                .build_load(f32t, table.as_pointer_value(), "")
                .expect("load");
            let out = f.get_nth_param(0).expect("param").into_pointer_value();
            b.build_store(out, v).expect("store");
            b.build_return(None).expect("ret");
        }
        let one = ptx(&module, "sm_80", 1).expect("ptx");
        let two = ptx(&module, "sm_80", 2).expect("ptx");
        assert_eq!(one, two);
        assert_eq!(two.matches(".global .align 4 .b8 tbl").count(), 1, "{two}");
        assert_eq!(two.matches(".entry").count(), 2, "{two}");
    }

    #[test]
    fn runs_are_contiguous_balanced_and_cover_everything() {
        let sizes = [5, 1, 1, 1, 8, 2, 2, 4];
        for n in 1..=10 {
            let r = runs(&sizes, n);
            assert!(r.len() <= n && !r.is_empty());
            assert_eq!(r[0].start, 0);
            assert_eq!(r.last().map(|x| x.end), Some(sizes.len()));
            for w in r.windows(2) {
                assert_eq!(w[0].end, w[1].start);
                assert!(w[0].start < w[0].end);
            }
        }
        // Two runs of a 24-instruction module: 16 and 8 at the first cut
        // that reaches half.
        assert_eq!(runs(&sizes, 2), vec![0..5, 5..8]);
        assert_eq!(runs(&[1, 1, 1, 1], 4), vec![0..1, 1..2, 2..3, 3..4]);
    }
}
