//! A CPU static library holding one model at several input sizes: one
//! object per size (`<sym>_<H>x<W>_forward`, with its own weights and
//! thread pool, as a one-size library has) and a dispatcher object whose
//! `<sym>_forward_hw` takes the height and width and calls the size's
//! code, or returns -3 for a size the library does not hold.

use super::artifact::EXPORTED;
use super::CpuOptions;
use crate::backend::llvm::{self, LlvmError};
use crate::backend::shared::archive;
use inkwell::builder::Builder;
use inkwell::context::Context;
use inkwell::module::Linkage;
use inkwell::targets::FileType;
use inkwell::values::{BasicMetadataValueEnum, FunctionValue};
use inkwell::AddressSpace;

/// What a `_forward_hw` returns for a size the library does not hold.
pub const NO_SUCH_SIZE: i64 = -3;

/// The functions the dispatcher exports (after the model's symbol).
pub const DISPATCH: [&str; 5] = [
    "_forward_hw",
    "_forward_hw_with_arena",
    "_arena_bytes_per_image_hw",
    "_output_size_hw",
    "_set_num_threads",
];

/// One size's compiled model.
pub struct SizedObject {
    /// Height and width.
    pub size: [usize; 2],
    /// Its symbol prefix, `<sym>_<H>x<W>`.
    pub sym: String,
    pub object: Vec<u8>,
    /// Its one-size header (include guard of its own).
    pub header: String,
    pub arena_bytes_per_image: usize,
    /// Floats per output image.
    pub output_size: usize,
}

/// The symbol prefix of one size's code.
pub fn sized_symbol(sym: &str, size: [usize; 2]) -> String {
    format!("{sym}_{}x{}", size[0], size[1])
}

/// `lib<sym>.a` and `<sym>.h` for `parts`.
pub fn staticlib(
    sym: &str,
    model: &str,
    parts: &[SizedObject],
    opts: &CpuOptions,
) -> Result<Vec<(String, Vec<u8>)>, LlvmError> {
    let dispatch = dispatcher(sym, parts, opts)?;
    let total: usize = parts.iter().map(|p| p.object.len()).sum::<usize>() + dispatch.len();
    if total + 4096 * (parts.len() + 1) > u32::MAX as usize {
        return Err(LlvmError::ArchiveTooLarge(format!(
            "the objects are {total} bytes; static libraries over 4 GiB are not supported"
        )));
    }
    // Member names fit the archive header's 15 characters.
    let names: Vec<String> = (0..parts.len()).map(|i| format!("size{i}.o")).collect();
    let mut members: Vec<(&str, &[u8], Vec<String>)> = parts
        .iter()
        .zip(&names)
        .map(|(p, name)| {
            let exported = EXPORTED.iter().map(|f| format!("{}{f}", p.sym)).collect();
            (name.as_str(), p.object.as_slice(), exported)
        })
        .collect();
    let exported = DISPATCH.iter().map(|f| format!("{sym}{f}")).collect();
    members.push(("sizes.o", dispatch.as_slice(), exported));
    Ok(vec![
        (format!("lib{sym}.a"), archive(&members)),
        (format!("{sym}.h"), header(sym, model, parts).into_bytes()),
    ])
}

type Val<'ctx> = inkwell::values::BasicValueEnum<'ctx>;
type Arg<'ctx> = BasicMetadataValueEnum<'ctx>;

/// Builds `f(..., height, width, ...)`: per size held, if the height
/// (parameter `h_at`) and width match, `call(part, params)`'s value; else
/// `missing`.
fn switch<'ctx>(
    ctx: &'ctx Context,
    b: &Builder<'ctx>,
    parts: &[SizedObject],
    f: FunctionValue<'ctx>,
    h_at: u32,
    call: &Case<'_, 'ctx>,
    missing: Val<'ctx>,
) -> Result<(), LlvmError> {
    let err = |e: inkwell::builder::BuilderError| LlvmError::Internal(e.to_string());
    let i32t = ctx.i32_type();
    let args: Vec<Arg<'ctx>> = f.get_param_iter().map(|p| p.into()).collect();
    let h = f.get_nth_param(h_at).expect("declared").into_int_value();
    let w = f
        .get_nth_param(h_at + 1)
        .expect("declared")
        .into_int_value();
    b.position_at_end(ctx.append_basic_block(f, "entry"));
    for p in parts {
        let is = |v, want: usize| {
            b.build_int_compare(
                inkwell::IntPredicate::EQ,
                v,
                i32t.const_int(want as u64, false),
                "",
            )
            .map_err(err)
        };
        let both = b
            .build_and(is(h, p.size[0])?, is(w, p.size[1])?, "")
            .map_err(err)?;
        let (hit, next) = (ctx.append_basic_block(f, ""), ctx.append_basic_block(f, ""));
        b.build_conditional_branch(both, hit, next).map_err(err)?;
        b.position_at_end(hit);
        let v = call(p, &args)?;
        b.build_return(Some(&v)).map_err(err)?;
        b.position_at_end(next);
    }
    b.build_return(Some(&missing)).map_err(err)?;
    Ok(())
}

/// A call's value.
fn value(v: inkwell::values::CallSiteValue<'_>) -> Result<Val<'_>, LlvmError> {
    v.try_as_basic_value()
        .basic()
        .ok_or_else(|| LlvmError::Internal("a call without a value".into()))
}

/// The dispatcher: compares the height and width with each size held.
fn dispatcher(sym: &str, parts: &[SizedObject], opts: &CpuOptions) -> Result<Vec<u8>, LlvmError> {
    let ctx = Context::create();
    let module = ctx.create_module(&format!("{sym}_sizes"));
    add_dispatch(&ctx, &module, sym, parts)?;
    module
        .verify()
        .map_err(|e| LlvmError::Internal(e.to_string()))?;
    let machine = opts.machine()?;
    module.set_triple(&machine.get_triple());
    module.set_data_layout(&machine.get_target_data().get_data_layout());
    llvm::write(&module, &machine, FileType::Object)
}

type Case<'a, 'ctx> = dyn Fn(&SizedObject, &[Arg<'ctx>]) -> Result<Val<'ctx>, LlvmError> + 'a;

/// The dispatcher's functions in `module`.
fn add_dispatch<'ctx>(
    ctx: &'ctx Context,
    module: &inkwell::module::Module<'ctx>,
    sym: &str,
    parts: &[SizedObject],
) -> Result<(), LlvmError> {
    let ptr = ctx.ptr_type(AddressSpace::default());
    let (i32t, i64t, void) = (ctx.i32_type(), ctx.i64_type(), ctx.void_type());
    let b = ctx.create_builder();
    let err = |e: inkwell::builder::BuilderError| LlvmError::Internal(e.to_string());
    let external = |name: String, ty| module.add_function(&name, ty, Some(Linkage::External));
    let no_such_size = i32t.const_int(NO_SUCH_SIZE as u64, true).into();

    // int <sym>_forward_hw(input, output, batch, height, width)
    let fwd_ty = i32t.fn_type(&[ptr.into(), ptr.into(), i32t.into()], false);
    let f = module.add_function(
        &format!("{sym}_forward_hw"),
        i32t.fn_type(
            &[
                ptr.into(),
                ptr.into(),
                i32t.into(),
                i32t.into(),
                i32t.into(),
            ],
            false,
        ),
        None,
    );
    let forward: &Case<'_, 'ctx> = &|p, a| {
        let callee = external(format!("{}_forward", p.sym), fwd_ty);
        value(b.build_call(callee, &a[..3], "").map_err(err)?)
    };
    switch(ctx, &b, parts, f, 3, forward, no_such_size)?;

    // int <sym>_forward_hw_with_arena(input, output, batch, height, width, arena)
    let with_ty = i32t.fn_type(&[ptr.into(), ptr.into(), i32t.into(), ptr.into()], false);
    let f = module.add_function(
        &format!("{sym}_forward_hw_with_arena"),
        i32t.fn_type(
            &[
                ptr.into(),
                ptr.into(),
                i32t.into(),
                i32t.into(),
                i32t.into(),
                ptr.into(),
            ],
            false,
        ),
        None,
    );
    let with_arena: &Case<'_, 'ctx> = &|p, a| {
        let callee = external(format!("{}_forward_with_arena", p.sym), with_ty);
        value(
            b.build_call(callee, &[a[0], a[1], a[2], a[5]], "")
                .map_err(err)?,
        )
    };
    switch(ctx, &b, parts, f, 3, with_arena, no_such_size)?;

    // long long <sym>_arena_bytes_per_image_hw(height, width)
    let f = module.add_function(
        &format!("{sym}_arena_bytes_per_image_hw"),
        i64t.fn_type(&[i32t.into(), i32t.into()], false),
        None,
    );
    let bytes: &Case<'_, 'ctx> =
        &|p, _| Ok(i64t.const_int(p.arena_bytes_per_image as u64, false).into());
    let missing = i64t.const_int(NO_SUCH_SIZE as u64, true).into();
    switch(ctx, &b, parts, f, 0, bytes, missing)?;

    // long long <sym>_output_size_hw(height, width)
    let f = module.add_function(
        &format!("{sym}_output_size_hw"),
        i64t.fn_type(&[i32t.into(), i32t.into()], false),
        None,
    );
    let floats: &Case<'_, 'ctx> = &|p, _| Ok(i64t.const_int(p.output_size as u64, false).into());
    switch(ctx, &b, parts, f, 0, floats, missing)?;

    // void <sym>_set_num_threads(n): every size's pool.
    let set_ty = void.fn_type(&[i32t.into()], false);
    let f = module.add_function(&format!("{sym}_set_num_threads"), set_ty, None);
    b.position_at_end(ctx.append_basic_block(f, "entry"));
    let n = f.get_nth_param(0).expect("declared");
    for p in parts {
        let callee = external(format!("{}_set_num_threads", p.sym), set_ty);
        b.build_call(callee, &[n.into()], "").map_err(err)?;
    }
    b.build_return(None).map_err(err)?;
    Ok(())
}

/// Each size's header, then the dispatcher's declarations.
fn header(sym: &str, model: &str, parts: &[SizedObject]) -> String {
    let up = sym.to_uppercase();
    let list = |i: usize| {
        parts
            .iter()
            .map(|p| p.size[i].to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let held: Vec<String> = parts
        .iter()
        .map(|p| format!("{}x{}", p.size[0], p.size[1]))
        .collect();
    let mut text = String::new();
    for p in parts {
        text.push_str(&p.header);
        text.push('\n');
    }
    text.push_str(&format!(
        r#"/* {sym}: model `{model}` at {n} input sizes ({held}), each size's code
 * above under its own prefix. Link with lib{sym}.a, libm and libpthread:
 *     cc app.c -L. -l{sym} -lm -lpthread
 */
#ifndef {up}_SIZES_H
#define {up}_SIZES_H

#ifdef __cplusplus
extern "C" {{
#endif

#define {up}_SIZES {n}
#define {up}_HEIGHTS {{ {heights} }}
#define {up}_WIDTHS {{ {widths} }}
#define {up}_NO_SUCH_SIZE ({no})

/* Runs the model on `batch` images of height x width: the size's
 * `<prefix>_forward`. Returns 0 on success, -1 if batch < 1, -2 if the
 * working memory could not be allocated, {up}_NO_SUCH_SIZE if this
 * library does not hold that size, -4 if the OS refuses the AMX tile state
 * (bf16 builds for AMX CPUs). Re-entrant. */
int {sym}_forward_hw(const float *input, float *output, int batch, int height, int width);

/* The same in the caller's working memory: at least batch *
 * {sym}_arena_bytes_per_image_hw(height, width) bytes. */
int {sym}_forward_hw_with_arena(const float *input, float *output, int batch, int height, int width, void *arena);

/* Working memory per image at height x width, or {up}_NO_SUCH_SIZE. */
long long {sym}_arena_bytes_per_image_hw(int height, int width);

/* Floats per output image at height x width, or {up}_NO_SUCH_SIZE (an
 * input image is channels * height * width floats). */
long long {sym}_output_size_hw(int height, int width);

/* Threads of every size's pool. */
void {sym}_set_num_threads(int n);

#ifdef __cplusplus
}}
#endif

#endif /* {up}_SIZES_H */
"#,
        n = parts.len(),
        held = held.join(", "),
        heights = list(0),
        widths = list(1),
        no = NO_SUCH_SIZE,
    ));
    text
}
