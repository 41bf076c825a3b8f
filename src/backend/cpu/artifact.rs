//! What `resnetc build --target cpu` writes: a static library (one PIC object
//! with the weights embedded, plus the archive index linkers need), a C
//! header, or the object, assembly or LLVM IR alone.

use super::consts::ConstPool;
use super::{compile, symbol, CpuOptions};
use crate::backend::llvm::LlvmError;
use crate::ir::graph::numel;
use crate::ir::Graph;
use inkwell::context::Context;
use inkwell::module::{Linkage, Module};
use inkwell::targets::FileType;
use inkwell::values::{FunctionValue, IntValue, PointerValue};
use inkwell::AddressSpace;

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
        Emit::Obj => vec![(format!("{sym}.o"), object(FileType::Object)?)],
        Emit::Staticlib => {
            let obj = object(FileType::Object)?;
            // The archive index holds 32-bit offsets.
            if obj.len() + super::RUNTIME_OBJECT.len() + 4096 > u32::MAX as usize {
                return Err(LlvmError::ArchiveTooLarge(format!(
                    "the object is {} bytes; static libraries over 4 GiB are not supported",
                    obj.len()
                )));
            }
            let model_symbols = vec![
                format!("{sym}_forward"),
                format!("{sym}_forward_with_arena"),
                format!("{sym}_set_num_threads"),
                format!("{sym}_run"),
            ];
            let runtime_symbols = vec![
                "resnetc_parallel_for".to_string(),
                "resnetc_set_num_threads".to_string(),
                "resnetc_get_num_threads".to_string(),
                "resnetc_cgroup_cpu_limit".to_string(),
                "resnetc_now_ns".to_string(),
            ];
            // Member names over 15 bytes need a long-name table; the
            // members' names do not matter to linkers.
            let members = [
                ("model.o", obj.as_slice(), model_symbols),
                ("parallel.o", super::RUNTIME_OBJECT, runtime_symbols),
            ];
            vec![
                (format!("lib{sym}.a"), archive(&members)),
                (format!("{sym}.h"), header(graph, pool, &sym).into_bytes()),
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

    // <sym>_set_num_threads(n): the pool is shared by every model in the
    // process.
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
pub fn header(graph: &Graph, pool: &ConstPool, sym: &str) -> String {
    let up = sym.to_uppercase();
    let arena = pool.arena_bytes(graph);
    c_header(
        sym,
        &format!(
            "model `{}`.\n * Link with lib{sym}.a, libm and libpthread (nothing else):\n *     cc app.c -L. -l{sym} -lm -lpthread",
            graph.name
        ),
        graph.input_shape(),
        graph.output_shape(),
        &format!(
            r#"/* Working memory a call needs, per image: `{sym}_forward` allocates
 * (and frees) it; `{sym}_forward_with_arena` takes it from the caller. */
#define {up}_ARENA_BYTES_PER_IMAGE {arena}ULL /* unsigned: batch * it needs no cast */

/* Threads the model uses, shared by every resnetc model in the process;
 * the default is the number of CPUs the process may run on (its affinity
 * mask: taskset, a container's cpuset), capped by a cgroup CPU limit
 * (docker --cpus, a Kubernetes limit). Workers are created once, on
 * first use, and reused by every call. */
void {sym}_set_num_threads(int n);

/* Runs the model on `batch` images: reads batch * {up}_INPUT_SIZE floats
 * from `input`, writes batch * {up}_OUTPUT_SIZE floats to `output`.
 * Returns 0 on success, -1 if batch < 1, -2 if the working memory could not
 * be allocated. Re-entrant: any number of threads may call it at once (each
 * call has its own working memory; the weights are read-only). */
int {sym}_forward(const float *input, float *output, int batch);

/* `{sym}_forward` in the caller's working memory: `arena` holds at least
 * batch * {up}_ARENA_BYTES_PER_IMAGE bytes, 4-byte aligned (what malloc
 * returns will do), contents irrelevant, and serves one call at a time.
 * Nothing is allocated: a caller that keeps its arena saves the pages a
 * large allocation maps and faults in on every call. Returns 0, -1 if
 * batch < 1, -2 if arena is NULL. */
int {sym}_forward_with_arena(const float *input, float *output, int batch, void *arena);
"#
        ),
    )
}

/// A model's C header (CPU or CUDA): `about` after "generated by resnetc
/// for", the include guard, the input and output shape macros, then
/// `decls` (the target's macros and functions).
pub fn c_header(sym: &str, about: &str, inp: &[usize], out: &[usize], decls: &str) -> String {
    let up = sym.to_uppercase();
    let dims = |s: &[usize]| {
        s.iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        r#"/* {sym}.h: generated by resnetc {version} for {about}
 */
#ifndef {up}_H
#define {up}_H

#ifdef __cplusplus
extern "C" {{
#endif

/* Input: float32, NCHW, C order, `batch` images of this shape each. */
#define {up}_INPUT_RANK {in_rank}
#define {up}_INPUT_DIMS {{ {in_dims} }}
#define {up}_INPUT_SIZE {in_size} /* floats per image */

/* Output: float32, `batch` results of this shape each. */
#define {up}_OUTPUT_RANK {out_rank}
#define {up}_OUTPUT_DIMS {{ {out_dims} }}
#define {up}_OUTPUT_SIZE {out_size} /* floats per image */

{decls}
#ifdef __cplusplus
}}
#endif

#endif /* {up}_H */
"#,
        version = env!("CARGO_PKG_VERSION"),
        in_rank = inp.len() + 1,
        in_dims = dims(inp),
        in_size = numel(inp),
        out_rank = out.len() + 1,
        out_dims = dims(out),
        out_size = numel(out),
    )
}

/// A System V / GNU `ar` archive of objects, with the symbol index (`/`
/// member) that linkers require: each member with the symbols it defines.
pub fn archive(members: &[(&str, &[u8], Vec<String>)]) -> Vec<u8> {
    fn header(name: &str, size: usize) -> Vec<u8> {
        format!("{name:<16}{:<12}{:<6}{:<6}{:<8}{size:<10}`\n", 0, 0, 0, 644).into_bytes()
    }
    let padded = |n: usize| n + n % 2;
    let count: usize = members.iter().map(|m| m.2.len()).sum();
    let names: Vec<u8> = members
        .iter()
        .flat_map(|m| m.2.iter())
        .flat_map(|s| s.bytes().chain(std::iter::once(0)))
        .collect();
    let index_len = 4 + 4 * count + names.len();
    // Offsets of each member's header.
    let mut offsets = Vec::new();
    let mut at = 8 + 60 + padded(index_len);
    for m in members {
        offsets.push(at);
        at += 60 + padded(m.1.len());
    }
    let mut out = b"!<arch>\n".to_vec();
    out.extend(header("/", index_len));
    out.extend((count as u32).to_be_bytes());
    for (m, off) in members.iter().zip(&offsets) {
        for _ in &m.2 {
            out.extend((*off as u32).to_be_bytes());
        }
    }
    out.extend(&names);
    if index_len % 2 == 1 {
        out.push(b'\n');
    }
    for (name, data, _) in members {
        out.extend(header(&format!("{name}/"), data.len()));
        out.extend(*data);
        if data.len() % 2 == 1 {
            out.push(b'\n');
        }
    }
    out
}
