//! What `resnetc build --target cpu` writes: a static library (one PIC object
//! with the weights and the thread pool inside, plus the archive index
//! linkers need) or that object alone, each with a C header; or the
//! assembly or LLVM IR.

use super::deferred;
use super::levels::{self, Level};
use super::{compile_as, CpuOptions};
use crate::backend::llvm::{self, Arch, LlvmError};
use crate::backend::shared::{archive, c_header, localized_runtime, symbol};
use crate::ir::Graph;
use inkwell::context::Context;
use inkwell::module::{Linkage, Module};
use inkwell::targets::FileType;
use inkwell::values::{BasicValueEnum, FunctionValue, IntValue, PointerValue};
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
pub const EXPORTED: [&str; 4] = [
    "_forward",
    "_forward_with_arena",
    "_set_num_threads",
    "_cpu_level",
];

/// What `_forward` returns where the CPU runs none of the library's levels
/// (or `RESNETC_CPU_LEVEL` names none).
pub const NO_LEVEL: i64 = -5;

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
    levels: &[Level],
    opts: &CpuOptions,
    emit: Emit,
) -> Result<Vec<(String, Vec<u8>)>, LlvmError> {
    let ctx = Context::create();
    let sym = symbol(&graph.name);
    let level_opts = |l: &Level| CpuOptions {
        cpu: l.cpu.clone(),
        lower: Vec::new(),
        ..opts.clone()
    };
    let [first, ..] = levels else {
        return Err(LlvmError::Internal("a build without a level".into()));
    };
    let (module, machine) = if levels.len() == 1 {
        let (module, machine, _) = compile_as(&ctx, graph, &first.pool, &level_opts(first), &sym)?;
        (module, machine)
    } else {
        // Each level's code in one module, its functions carrying their
        // own CPU attributes; the module's own CPU is the baseline, which
        // the dispatcher runs on.
        let machine = llvm::x86_machine("x86-64")?;
        let module = ctx.create_module(&sym);
        llvm::target(&module, &machine);
        for (i, l) in levels.iter().enumerate() {
            let (m, _, _) =
                compile_as(&ctx, graph, &l.pool, &level_opts(l), &level_symbol(&sym, i))?;
            module
                .link_in_module(m)
                .map_err(|e| LlvmError::Internal(e.to_string()))?;
        }
        add_dispatch(&ctx, &module, levels, &sym)?;
        (module, machine)
    };
    add_forward(&ctx, &module, graph, levels, &sym)?;
    // The object exports the header's functions and nothing else: `_run`
    // is theirs alone, and the thread pool (runtime/parallel.c) sits inside
    // with its symbols local, so the object links alone and two models in
    // one program cannot clash (each has its own pool).
    let internal = std::iter::once(sym.clone())
        .chain((0..levels.len()).map(|i| level_symbol(&sym, i)))
        .filter_map(|s| module.get_function(&format!("{s}_run")));
    for f in internal {
        f.set_linkage(Linkage::Internal);
    }
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
                header(graph, levels, &sym, emit).into_bytes(),
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
                    header(graph, levels, &sym, emit).into_bytes(),
                ),
            ]
        }
    })
}

/// The symbol prefix of level `i`'s code in a multi-level object.
fn level_symbol(sym: &str, i: usize) -> String {
    format!("{sym}_level{i}")
}

/// A private constant global holding `bytes`, 64-byte aligned.
fn constant<'ctx>(
    ctx: &'ctx Context,
    module: &Module<'ctx>,
    name: &str,
    bytes: &[u8],
) -> inkwell::values::GlobalValue<'ctx> {
    let init = ctx.const_string(bytes, false);
    let g = module.add_global(init.get_type(), None, name);
    g.set_initializer(&init);
    g.set_constant(true);
    g.set_linkage(Linkage::Private);
    g.set_alignment(64);
    g
}

/// Where a level's code finds its constants.
enum Consts<'ctx> {
    /// In a constant global (or nowhere: the dispatcher passes them).
    At(PointerValue<'ctx>),
    /// In a copy this function prepares at the first call and returns
    /// (`deferred`).
    Ready(FunctionValue<'ctx>),
}

impl<'ctx> Consts<'ctx> {
    /// The constants' address, at the builder's position.
    fn address(
        &self,
        b: &inkwell::builder::Builder<'ctx>,
    ) -> Result<PointerValue<'ctx>, LlvmError> {
        match self {
            Consts::At(p) => Ok(*p),
            Consts::Ready(f) => b
                .build_call(*f, &[], "")
                .map_err(|e| LlvmError::Internal(e.to_string()))?
                .try_as_basic_value()
                .basic()
                .map(|v| v.into_pointer_value())
                .ok_or_else(|| LlvmError::Internal("the constants' address".into())),
        }
    }
}

/// The constants of `owner`'s pool as `name`: stored whole, or with its
/// deferred Winograd filters as 3×3 filters, transformed at the first call.
fn stored<'ctx>(
    ctx: &'ctx Context,
    module: &Module<'ctx>,
    owner: &Level,
    name: &str,
) -> Result<Consts<'ctx>, LlvmError> {
    if owner.deferred.is_empty() {
        let bytes: Vec<u8> = owner
            .pool
            .data
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        return Ok(Consts::At(
            constant(ctx, module, name, &bytes).as_pointer_value(),
        ));
    }
    let keep = |n: &str, bytes: &[u8]| constant(ctx, module, n, bytes);
    deferred::emit(ctx, module, &owner.pool, &owner.deferred, name, keep).map(Consts::Ready)
}

/// A multi-level object's dispatch: `<sym>_level_index()`, which picks the
/// level at the first call (`resnetc_pick_level`: the best level this CPU
/// and OS run, or from `RESNETC_CPU_LEVEL`'s on) and remembers it, and
/// `<sym>_run`, which runs the picked level's code on its weights.
fn add_dispatch<'ctx>(
    ctx: &'ctx Context,
    module: &Module<'ctx>,
    levels: &[Level],
    sym: &str,
) -> Result<(), LlvmError> {
    let ptr = ctx.ptr_type(AddressSpace::default());
    let i32t = ctx.i32_type();
    let err = |e: inkwell::builder::BuilderError| LlvmError::Internal(e.to_string());
    let b = ctx.create_builder();
    // The weights, once per pool that owns data (the level that packed
    // them, wherever it stands in the pick order).
    let pools = levels.iter().map(|l| l.weights + 1).max().unwrap_or(0);
    let mut weights: Vec<Consts<'ctx>> = Vec::new();
    for j in 0..pools {
        let owner = levels
            .iter()
            .filter(|l| l.weights == j)
            .max_by_key(|l| l.pool.data.len())
            .ok_or_else(|| LlvmError::Internal(format!("no level owns weights {j}")))?;
        weights.push(stored(ctx, module, owner, &format!("{sym}_weights{j}"))?);
    }
    let strings = |what: &str, texts: Vec<&str>| {
        let ptrs: Vec<PointerValue<'ctx>> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut bytes = t.as_bytes().to_vec();
                bytes.push(0);
                constant(ctx, module, &format!("{sym}_{what}{i}"), &bytes).as_pointer_value()
            })
            .collect();
        let init = ptr.const_array(&ptrs);
        let g = module.add_global(init.get_type(), None, &format!("{sym}_{what}"));
        g.set_initializer(&init);
        g.set_constant(true);
        g.set_linkage(Linkage::Private);
        g
    };
    let needs = strings("needs", levels.iter().map(|l| l.needs.as_str()).collect());
    let names = strings("names", levels.iter().map(|l| l.cpu.as_str()).collect());
    // The pick, -3 until made (races are benign: every thread picks the
    // same).
    const UNPICKED: u64 = -3i64 as u64;
    let picked = module.add_global(i32t, None, &format!("{sym}_level"));
    picked.set_initializer(&i32t.const_int(UNPICKED, true));
    picked.set_linkage(Linkage::Private);
    let pick = module.add_function(
        "resnetc_pick_level",
        i32t.fn_type(&[i32t.into(), ptr.into(), ptr.into()], false),
        Some(Linkage::External),
    );
    let index = module.add_function(
        &format!("{sym}_level_index"),
        i32t.fn_type(&[], false),
        Some(Linkage::Private),
    );
    b.position_at_end(ctx.append_basic_block(index, "entry"));
    let load = b
        .build_load(i32t, picked.as_pointer_value(), "")
        .map_err(err)?;
    use inkwell::values::BasicValue;
    load.as_instruction_value()
        .map(|i| i.set_atomic_ordering(inkwell::AtomicOrdering::Monotonic))
        .transpose()
        .map_err(|e| LlvmError::Internal(e.to_string()))?;
    let known = b
        .build_int_compare(
            inkwell::IntPredicate::NE,
            load.into_int_value(),
            i32t.const_int(UNPICKED, true),
            "",
        )
        .map_err(err)?;
    let (done, ask) = (
        ctx.append_basic_block(index, ""),
        ctx.append_basic_block(index, ""),
    );
    b.build_conditional_branch(known, done, ask).map_err(err)?;
    b.position_at_end(done);
    b.build_return(Some(&load)).map_err(err)?;
    b.position_at_end(ask);
    let n = i32t.const_int(levels.len() as u64, false);
    let got = b
        .build_call(
            pick,
            &[
                n.into(),
                needs.as_pointer_value().into(),
                names.as_pointer_value().into(),
            ],
            "",
        )
        .map_err(err)?
        .try_as_basic_value()
        .basic()
        .ok_or_else(|| LlvmError::Internal("the pick returns an int".into()))?;
    let store = b.build_store(picked.as_pointer_value(), got).map_err(err)?;
    store
        .set_atomic_ordering(inkwell::AtomicOrdering::Monotonic)
        .map_err(|e| LlvmError::Internal(e.to_string()))?;
    b.build_return(Some(&got)).map_err(err)?;

    // <sym>_run: the picked level's `_run` on its weights (the constants
    // argument, which the entry points pass as null, is not read).
    let runs: Vec<FunctionValue<'ctx>> = (0..levels.len())
        .map(|i| {
            module
                .get_function(&format!("{}_run", level_symbol(sym, i)))
                .ok_or_else(|| LlvmError::Internal("no level run function".into()))
        })
        .collect::<Result<_, _>>()?;
    let run = module.add_function(&format!("{sym}_run"), runs[0].get_type(), None);
    b.position_at_end(ctx.append_basic_block(run, "entry"));
    let level = b
        .build_call(index, &[], "")
        .map_err(err)?
        .try_as_basic_value()
        .basic()
        .ok_or_else(|| LlvmError::Internal("the index is an int".into()))?
        .into_int_value();
    let other = ctx.append_basic_block(run, "");
    let cases: Vec<_> = levels
        .iter()
        .enumerate()
        .map(|(i, _)| {
            (
                i32t.const_int(i as u64, false),
                ctx.append_basic_block(run, ""),
            )
        })
        .collect();
    b.build_switch(level, other, &cases).map_err(err)?;
    let params: Vec<inkwell::values::BasicMetadataValueEnum<'ctx>> =
        run.get_param_iter().map(|p| p.into()).collect();
    for ((l, (_, block)), f) in levels.iter().zip(&cases).zip(&runs) {
        b.position_at_end(*block);
        let mut args = params.clone();
        args[3] = weights[l.weights].address(&b)?.into();
        b.build_call(*f, &args, "").map_err(err)?;
        b.build_return(None).map_err(err)?;
    }
    b.position_at_end(other);
    b.build_return(None).map_err(err)?;
    Ok(())
}

/// `int <sym>_forward(const float *input, float *output, int batch)`: the
/// embedded weights, an arena from malloc for this call only (so calls from
/// several threads never share memory), the schedule, free. Also
/// `_forward_with_arena`, `_set_num_threads` and `_cpu_level`.
fn add_forward<'ctx>(
    ctx: &'ctx Context,
    module: &Module<'ctx>,
    graph: &Graph,
    levels: &[Level],
    sym: &str,
) -> Result<(), LlvmError> {
    let ptr = ctx.ptr_type(AddressSpace::default());
    let (i32t, i64t) = (ctx.i32_type(), ctx.i64_type());
    // One level: its weights, passed to `_run`; several: the dispatcher's.
    let index = module.get_function(&format!("{sym}_level_index"));
    let weights = match (index, levels) {
        (None, [one]) => stored(ctx, module, one, &format!("{sym}_weights"))?,
        _ => Consts::At(ptr.const_null()),
    };
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
        return_unless(ctx, &b, f, ok, i32t.const_int(code as u64, true).into())
    };
    let int_call = |callee: FunctionValue<'ctx>| -> Result<IntValue<'ctx>, LlvmError> {
        Ok(b.build_call(callee, &[], "")
            .map_err(err)?
            .try_as_basic_value()
            .basic()
            .ok_or_else(|| LlvmError::Internal("a call returns an int".into()))?
            .into_int_value())
    };
    // Refuses a batch below 1 (-1), then a CPU that runs no level (-5);
    // the batch as an i64.
    let batch_of = |f: FunctionValue<'ctx>| {
        b.position_at_end(ctx.append_basic_block(f, "entry"));
        let batch = f.get_nth_param(2).expect("declared").into_int_value();
        let positive = b
            .build_int_compare(inkwell::IntPredicate::SGT, batch, i32t.const_zero(), "")
            .map_err(err)?;
        unless(f, positive, -1)?;
        match index {
            Some(index) => {
                let level = int_call(index)?;
                let ok = b
                    .build_int_compare(inkwell::IntPredicate::SGE, level, i32t.const_zero(), "")
                    .map_err(err)?;
                unless(f, ok, NO_LEVEL)?;
            }
            // One AMX level, where the OS refuses the tile state: it would
            // die of SIGILL; refuse the call instead (-4).
            None => {
                if let Some(permit) = module.get_function("resnetc_amx_permit") {
                    let granted = int_call(permit)?;
                    let ok = b
                        .build_int_compare(
                            inkwell::IntPredicate::NE,
                            granted,
                            i32t.const_zero(),
                            "",
                        )
                        .map_err(err)?;
                    unless(f, ok, -4)?;
                }
            }
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
                weights.address(&b)?.into(),
                arena.into(),
                ptr.const_null().into(),
            ],
            "",
        )
        .map_err(err)
    };

    let batch64 = batch_of(f)?;
    let per_image = levels::arena_bytes(graph, levels).max(64) as u64;
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

    // <sym>_cpu_level(): the name of the level that runs (NULL: none).
    let level = module.add_function(&format!("{sym}_cpu_level"), ptr.fn_type(&[], false), None);
    b.position_at_end(ctx.append_basic_block(level, "entry"));
    match index {
        None => {
            let name = level_name(&levels[0].cpu);
            let mut bytes = name.into_bytes();
            bytes.push(0);
            let g = constant(ctx, module, &format!("{sym}_level_name"), &bytes);
            b.build_return(Some(&g.as_pointer_value())).map_err(err)?;
        }
        Some(index) => {
            let at = int_call(index)?;
            let ok = b
                .build_int_compare(inkwell::IntPredicate::SGE, at, i32t.const_zero(), "")
                .map_err(err)?;
            let null = ctx.ptr_type(AddressSpace::default()).const_null();
            return_unless(ctx, &b, level, ok, null.into())?;
            let names = module
                .get_global(&format!("{sym}_names"))
                .ok_or_else(|| LlvmError::Internal("no level names".into()))?;
            let arr = names.get_value_type().into_array_type();
            // SAFETY: `at` is a level index, inside the array.
            let slot = unsafe {
                b.build_in_bounds_gep(arr, names.as_pointer_value(), &[i32t.const_zero(), at], "")
            }
            .map_err(err)?;
            let name = b.build_load(ptr, slot, "").map_err(err)?;
            b.build_return(Some(&name)).map_err(err)?;
        }
    }
    Ok(())
}

/// Returns `value` from `f` unless `ok`; the builder continues where it
/// holds.
fn return_unless<'ctx>(
    ctx: &'ctx Context,
    b: &inkwell::builder::Builder<'ctx>,
    f: FunctionValue<'ctx>,
    ok: IntValue<'ctx>,
    value: BasicValueEnum<'ctx>,
) -> Result<(), LlvmError> {
    let err = |e: inkwell::builder::BuilderError| LlvmError::Internal(e.to_string());
    let (refuse, go) = (ctx.append_basic_block(f, ""), ctx.append_basic_block(f, ""));
    b.build_conditional_branch(ok, go, refuse).map_err(err)?;
    b.position_at_end(refuse);
    b.build_return(Some(&value)).map_err(err)?;
    b.position_at_end(go);
    Ok(())
}

/// A level's name as `_cpu_level` reports it: `native` as the CPU LLVM
/// named the build machine.
fn level_name(cpu: &str) -> String {
    match cpu {
        "native" => format!("native ({})", llvm::host_cpu_name()),
        c => c.to_string(),
    }
}

/// The C header: shapes and sizes as macros, and the entry points.
pub fn header(graph: &Graph, levels: &[Level], sym: &str, emit: Emit) -> String {
    let up = sym.to_uppercase();
    let arena = levels::arena_bytes(graph, levels);
    let amx = levels.iter().any(|l| !l.pool.bf.is_empty());
    let wino = levels.iter().any(|l| l.pool.wino.values().any(|w| w.pairs));
    let pairs = |l: &Level| super::conv_gemm::reads_pairs(l.pool.isa, l.pool.precision);
    let vectors = if levels.iter().any(pairs) {
        "fp32 vector units or AVX512-BF16 pairs"
    } else {
        "fp32 vector units"
    };
    let precision = levels
        .first()
        .map_or(crate::precision::Precision::F32, |l| l.pool.precision);
    let arithmetic = match precision {
        crate::precision::Precision::F32 => "fp32: every layer computes in fp32".to_string(),
        crate::precision::Precision::Bf16 => format!(
            "bf16: convs, transposed convs and linear layers read their inputs and weights \n * rounded to bfloat16 and sum in fp32 ({}); everything else, the input \n * and the output are fp32{}",
            match (amx, levels.len()) {
                (false, _) => vectors.to_string(),
                (true, 1) => "AMX tiles: Linux 5.16 or later".to_string(),
                (true, _) => format!("AMX tiles where the CPU has them and Linux grants them, else {vectors}"),
            },
            if wino {
                ". On AVX512-BF16 CPUs without AMX some 3x3 convs run as Winograd\n * F(2x2, 3x3) and round its transformed input and filter instead"
            } else {
                ""
            }
        ),
    };
    let names: Vec<String> = levels.iter().map(|l| level_name(&l.cpu)).collect();
    let (levels_doc, forward_codes) = if levels.len() == 1 {
        (
            format!(
                "/* The code is for one CPU, `{}`: it runs on CPUs with every instruction\n * that one has (others die of SIGILL). */",
                names[0]
            ),
            "-4 if the OS refuses the AMX tile state a bf16 build for an\n * AMX CPU uses (Linux before 5.16; build with another --cpu there)",
        )
    } else {
        (
            format!(
                "/* The code is for {n} CPU levels, best first: {list}. The first call\n * picks the best one this CPU and OS run (CPUID, XGETBV); the environment\n * variable {var}=<level> makes it pick that level or a lower one. */",
                n = levels.len(),
                list = names.join(", "),
                var = levels::FORCE_VAR,
            ),
            "-5 if this CPU runs none of the levels (or\n * RESNETC_CPU_LEVEL names none)",
        )
    };
    // Constants laid out at the first call (`deferred`): the whole copy.
    let deferred: usize = levels
        .iter()
        .filter(|l| !l.deferred.is_empty())
        .map(|l| l.pool.data.len() * 4)
        .sum();
    let first_call = if deferred > 0 {
        format!(
            "\n * The first call also lays out the weights in {} MiB it keeps: it\n * transforms the 3x3 convs' Winograd filters, which the library stores\n * untransformed to stay small (other callers wait for it).",
            deferred.div_ceil(1 << 20)
        )
    } else {
        String::new()
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
            r#"/* The arithmetic: {arithmetic}. */
#define {up}_PRECISION "{name}"

{levels_doc}
#define {up}_CPU_LEVELS "{level_list}"

/* The level that runs (picking it if no call has yet), or NULL where this
 * CPU runs none. */
const char *{sym}_cpu_level(void);

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
 * be allocated, {forward_codes}.
 * Re-entrant: any number of threads may call it at once (each
 * call has its own working memory; the weights are read-only).{first_call} */
int {sym}_forward(const float *input, float *output, int batch);

/* `{sym}_forward` in the caller's working memory: `arena` holds at least
 * batch * {up}_ARENA_BYTES_PER_IMAGE bytes, 4-byte aligned (what malloc
 * returns will do), contents irrelevant, and serves one call at a time.
 * Nothing is allocated: a caller that keeps its arena saves the pages a
 * large allocation maps and faults in on every call. Returns 0, -1 if
 * batch < 1, -2 if arena is NULL, {code} as for `{sym}_forward`. */
int {sym}_forward_with_arena(const float *input, float *output, int batch, void *arena);
"#,
            name = precision.name(),
            level_list = names.join(","),
            code = if levels.len() == 1 { "-4" } else { "-5" },
        ),
    )
}
