//! What `resnetc build --target cpu` writes: a static library (one PIC object
//! with the weights and the thread pool inside, plus the archive index
//! linkers need) or that object alone, each with a C header; or the
//! assembly or LLVM IR.

use super::consts::ConstPool;
use super::{compile, CpuOptions};
use crate::backend::llvm::{Arch, LlvmError};
use crate::backend::shared::{archive, c_header, localized_runtime, symbol};
use crate::ir::Graph;
use inkwell::context::Context;
use inkwell::module::{Linkage, Module};
use inkwell::targets::FileType;
use inkwell::values::{FunctionValue, IntValue, PointerValue};
use inkwell::AddressSpace;

/// The thread pool of generated code (runtime/parallel.c) as x86-64
/// assembly, compiled by build.rs with the host's C compiler.
const RUNTIME_ASM: &str = include_str!(concat!(env!("OUT_DIR"), "/parallel.s"));

/// The same as AArch64 assembly, checked in (made by
/// scripts/gen_runtime_asm.sh with aarch64-linux-gnu-gcc) so that building
/// resnetc needs no cross compiler.
const RUNTIME_ASM_AARCH64: &str = include_str!("../../../runtime/parallel.aarch64.s");

/// The thread pool's assembly for `arch`.
fn runtime_asm(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => RUNTIME_ASM,
        Arch::Aarch64 => RUNTIME_ASM_AARCH64,
    }
}

/// The functions a library or object exports (after the model's symbol),
/// exactly those its header declares.
pub const EXPORTED: [&str; 3] = ["_forward", "_forward_with_arena", "_set_num_threads"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emit {
    Staticlib,
    Obj,
    LlvmIr,
    Asm,
}

/// The files of one build, as (file name, bytes).
pub fn build(
    graph: &Graph,
    pool: &ConstPool,
    opts: &CpuOptions,
    emit: Emit,
) -> Result<Vec<(String, Vec<u8>)>, LlvmError> {
    let ctx = Context::create();
    let sym = symbol(&graph.name);
    let (module, machine, _) = compile(&ctx, graph, pool, opts)?;
    add_forward(&ctx, &module, graph, pool, &sym)?;
    // The object exports the header's functions and nothing else: `_run`
    // is theirs alone, and the thread pool (runtime/parallel.c) sits inside
    // with its symbols local, so the object links alone and two models in
    // one program cannot clash (each has its own pool).
    module
        .get_function(&format!("{sym}_run"))
        .ok_or_else(|| LlvmError::Internal("no run function".into()))?
        .set_linkage(Linkage::Internal);
    module.set_inline_assembly(&localized_runtime(runtime_asm(opts.arch)));
    module
        .verify()
        .map_err(|e| LlvmError::Internal(e.to_string()))?;
    let object = |ft| crate::backend::llvm::write(&module, &machine, ft);
    Ok(match emit {
        Emit::LlvmIr => vec![(
            format!("{sym}.ll"),
            module.print_to_string().to_bytes().to_vec(),
        )],
        Emit::Asm => vec![(format!("{sym}.s"), object(FileType::Assembly)?)],
        Emit::Obj => vec![
            (format!("{sym}.o"), object(FileType::Object)?),
            (
                format!("{sym}.h"),
                header(graph, pool, &sym, emit).into_bytes(),
            ),
        ],
        Emit::Staticlib => {
            let obj = object(FileType::Object)?;
            // The archive index holds 32-bit offsets.
            if obj.len() + 4096 > u32::MAX as usize {
                return Err(LlvmError::ArchiveTooLarge(format!(
                    "the object is {} bytes; static libraries over 4 GiB are not supported",
                    obj.len()
                )));
            }
            // One member: the model with its thread pool inside.
            let exported = EXPORTED.iter().map(|f| format!("{sym}{f}")).collect();
            vec![
                (
                    format!("lib{sym}.a"),
                    archive(&[("model.o", obj.as_slice(), exported)]),
                ),
                (
                    format!("{sym}.h"),
                    header(graph, pool, &sym, emit).into_bytes(),
                ),
            ]
        }
    })
}

/// `int <sym>_forward(const float *input, float *output, int batch)`: the
/// embedded weights, an arena from malloc for this call only (so calls from
/// several threads never share memory), the schedule, free.
fn add_forward<'ctx>(
    ctx: &'ctx Context,
    module: &Module<'ctx>,
    graph: &Graph,
    pool: &ConstPool,
    sym: &str,
) -> Result<(), LlvmError> {
    let ptr = ctx.ptr_type(AddressSpace::default());
    let (i32t, i64t) = (ctx.i32_type(), ctx.i64_type());
    let bytes: Vec<u8> = pool.data.iter().flat_map(|v| v.to_le_bytes()).collect();
    let init = ctx.const_string(&bytes, false);
    let weights = module.add_global(init.get_type(), None, &format!("{sym}_weights"));
    weights.set_initializer(&init);
    weights.set_constant(true);
    weights.set_linkage(Linkage::Private);
    weights.set_alignment(64);
    let malloc = module.add_function(
        "malloc",
        ptr.fn_type(&[i64t.into()], false),
        Some(Linkage::External),
    );
    let free = module.add_function(
        "free",
        ctx.void_type().fn_type(&[ptr.into()], false),
        Some(Linkage::External),
    );
    let run = module
        .get_function(&format!("{sym}_run"))
        .ok_or_else(|| LlvmError::Internal("no run function".into()))?;
    let f = module.add_function(
        &format!("{sym}_forward"),
        i32t.fn_type(&[ptr.into(), ptr.into(), i32t.into()], false),
        None,
    );
    let b = ctx.create_builder();
    let err = |e: inkwell::builder::BuilderError| LlvmError::Internal(e.to_string());
    // `return code` unless `ok`; the builder continues where `ok` holds.
    let unless = |f: FunctionValue<'ctx>, ok: IntValue<'ctx>, code: i64| {
        let (refuse, go) = (ctx.append_basic_block(f, ""), ctx.append_basic_block(f, ""));
        b.build_conditional_branch(ok, go, refuse).map_err(err)?;
        b.position_at_end(refuse);
        b.build_return(Some(&i32t.const_int(code as u64, true)))
            .map_err(err)?;
        b.position_at_end(go);
        Ok::<(), LlvmError>(())
    };
    // Refuses a batch below 1 (-1); the batch as an i64.
    let batch_of = |f: FunctionValue<'ctx>| {
        b.position_at_end(ctx.append_basic_block(f, "entry"));
        let batch = f.get_nth_param(2).expect("declared").into_int_value();
        let positive = b
            .build_int_compare(inkwell::IntPredicate::SGT, batch, i32t.const_zero(), "")
            .map_err(err)?;
        unless(f, positive, -1)?;
        // AMX code where the OS refuses the tile state would die of
        // SIGILL: refuse the call instead (-4).
        if let Some(permit) = module.get_function("resnetc_amx_permit") {
            let granted = b
                .build_call(permit, &[], "")
                .map_err(err)?
                .try_as_basic_value()
                .basic()
                .ok_or_else(|| LlvmError::Internal("permit returns an int".into()))?
                .into_int_value();
            let ok = b
                .build_int_compare(inkwell::IntPredicate::NE, granted, i32t.const_zero(), "")
                .map_err(err)?;
            unless(f, ok, -4)?;
        }
        b.build_int_z_extend(batch, i64t, "").map_err(err)
    };
    // `<sym>_run(input, output, batch, weights, arena, no profile)`.
    let call_run = |f: FunctionValue<'ctx>, batch: IntValue<'ctx>, arena: PointerValue<'ctx>| {
        let p = |i: u32| f.get_nth_param(i).expect("declared");
        b.build_call(
            run,
            &[
                p(0).into(),
                p(1).into(),
                batch.into(),
                weights.as_pointer_value().into(),
                arena.into(),
                ptr.const_null().into(),
            ],
            "",
        )
        .map_err(err)
    };

    let batch64 = batch_of(f)?;
    let per_image = pool.arena_bytes(graph).max(64) as u64;
    let size = b
        .build_int_mul(batch64, i64t.const_int(per_image, false), "")
        .map_err(err)?;
    let arena = b
        .build_call(malloc, &[size.into()], "")
        .map_err(err)?
        .try_as_basic_value()
        .basic()
        .ok_or_else(|| LlvmError::Internal("malloc returns a pointer".into()))?
        .into_pointer_value();
    unless(f, b.build_is_not_null(arena, "").map_err(err)?, -2)?;
    call_run(f, batch64, arena)?;
    b.build_call(free, &[arena.into()], "").map_err(err)?;
    b.build_return(Some(&i32t.const_zero())).map_err(err)?;

    // <sym>_forward_with_arena(input, output, batch, arena): the caller's
    // working memory, so that a server reuses it: an arena over glibc's
    // largest mmap threshold (32 MiB, resnet50 at batch 4) is mapped and
    // faulted in afresh by every malloc (resnet50 batch 8: 10-13% of a call).
    let with = module.add_function(
        &format!("{sym}_forward_with_arena"),
        i32t.fn_type(&[ptr.into(), ptr.into(), i32t.into(), ptr.into()], false),
        None,
    );
    let batch64 = batch_of(with)?;
    let arena = with
        .get_nth_param(3)
        .expect("declared")
        .into_pointer_value();
    unless(with, b.build_is_not_null(arena, "").map_err(err)?, -2)?;
    call_run(with, batch64, arena)?;
    b.build_return(Some(&i32t.const_zero())).map_err(err)?;

    // <sym>_set_num_threads(n): the size of the pool inside the object.
    let set_rt = module.add_function(
        "resnetc_set_num_threads",
        ctx.void_type().fn_type(&[i32t.into()], false),
        Some(Linkage::External),
    );
    let set = module.add_function(
        &format!("{sym}_set_num_threads"),
        ctx.void_type().fn_type(&[i32t.into()], false),
        None,
    );
    b.position_at_end(ctx.append_basic_block(set, "entry"));
    let n = set.get_nth_param(0).expect("declared");
    b.build_call(set_rt, &[n.into()], "").map_err(err)?;
    b.build_return(None).map_err(err)?;
    Ok(())
}

/// The C header: shapes and sizes as macros, and the entry points.
pub fn header(graph: &Graph, pool: &ConstPool, sym: &str, emit: Emit) -> String {
    let up = sym.to_uppercase();
    let arena = pool.arena_bytes(graph);
    let precision = match pool.precision {
        crate::precision::Precision::F32 => "fp32: every layer computes in fp32".to_string(),
        crate::precision::Precision::Bf16 => format!(
            "bf16: convs, transposed convs and linear layers read their inputs and weights \n * rounded to bfloat16 and sum in fp32 ({}); everything else, the input \n * and the output are fp32",
            if pool.bf.is_empty() {
                "fp32 vector units"
            } else {
                "AMX tiles: Linux 5.16 or later"
            }
        ),
    };
    let (what, cc) = match emit {
        Emit::Obj => (format!("{sym}.o"), format!("{sym}.o")),
        _ => (format!("lib{sym}.a"), format!("-L. -l{sym}")),
    };
    c_header(
        sym,
        &format!(
            "model `{}`.\n * Link with {what}, libm and libpthread (nothing else):\n *     cc app.c {cc} -lm -lpthread",
            graph.name
        ),
        graph.input_shape(),
        graph.output_shape(),
        &format!(
            r#"/* The arithmetic: {precision}. */
#define {up}_PRECISION "{name}"

/* Working memory a call needs, per image: `{sym}_forward` allocates
 * (and frees) it; `{sym}_forward_with_arena` takes it from the caller. */
#define {up}_ARENA_BYTES_PER_IMAGE {arena}ULL /* unsigned: batch * it needs no cast */

/* Threads the model uses (each model's library has a pool of its own);
 * the default is the number of CPUs the process may run on (its affinity
 * mask: taskset, a container's cpuset), capped by a cgroup CPU limit
 * (docker --cpus, a Kubernetes limit). Workers are created once, on
 * first use, and reused by every call. */
void {sym}_set_num_threads(int n);

/* Runs the model on `batch` images: reads batch * {up}_INPUT_SIZE floats
 * from `input`, writes batch * {up}_OUTPUT_SIZE floats to `output`.
 * Returns 0 on success, -1 if batch < 1, -2 if the working memory could not
 * be allocated, -4 if the OS refuses the AMX tile state a bf16 build for an
 * AMX CPU uses (Linux before 5.16; build with another --cpu there). Re-entrant: any number of threads may call it at once (each
 * call has its own working memory; the weights are read-only). */
int {sym}_forward(const float *input, float *output, int batch);

/* `{sym}_forward` in the caller's working memory: `arena` holds at least
 * batch * {up}_ARENA_BYTES_PER_IMAGE bytes, 4-byte aligned (what malloc
 * returns will do), contents irrelevant, and serves one call at a time.
 * Nothing is allocated: a caller that keeps its arena saves the pages a
 * large allocation maps and faults in on every call. Returns 0, -1 if
 * batch < 1, -2 if arena is NULL, -4 as for `{sym}_forward`. */
int {sym}_forward_with_arena(const float *input, float *output, int batch, void *arena);
"#,
            name = pool.precision.name(),
        ),
    )
}
