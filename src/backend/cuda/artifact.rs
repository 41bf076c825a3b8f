//! What `resnetc build --target cuda` writes (docs/cuda.md): the artifact
//! (`<model>.ptx`, `<model>.plan.json`, `<model>.weights.bin`), the PTX
//! alone, or a static library whose C runtime (runtime/cuda_rt.c) finds
//! the CUDA driver at run time, with the PTX, the launch plan and the
//! weights embedded.

use super::plan::{Arg, LaunchPlan};
use super::{compile, CudaOptions, CudaProgram};
use crate::backend::llvm::{self, LlvmError};
use crate::backend::shared::{archive, c_header, localized_runtime, symbol};
use crate::ir::Graph;
use crate::weights::Weights;
use inkwell::context::Context;
use inkwell::module::{Linkage, Module};
use inkwell::targets::FileType;
use inkwell::types::BasicType;
use inkwell::AddressSpace;

/// The C runtime (runtime/cuda_rt.c) as assembly, inside every CUDA
/// static library.
pub const CUDA_RUNTIME_ASM: &str = include_str!(concat!(env!("OUT_DIR"), "/cuda_rt.s"));

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CudaEmit {
    /// PTX, launch plan and weights as three files.
    Artifact,
    Ptx,
    /// Unoptimized NVPTX LLVM IR.
    LlvmIr,
    Staticlib,
}

/// The files of one build, as (file name, bytes).
pub fn build(
    graph: &Graph,
    weights: &Weights,
    opts: &CudaOptions,
    emit: CudaEmit,
) -> Result<Vec<(String, Vec<u8>)>, LlvmError> {
    let sym = symbol(&graph.name);
    let ptx = |p: &CudaProgram| (format!("{sym}.ptx"), p.ptx.clone().into_bytes());
    Ok(match emit {
        CudaEmit::LlvmIr => {
            let ctx = Context::create();
            let l = super::lower::lower(
                &ctx,
                graph,
                weights,
                super::simt::Mode::Gpu,
                Default::default(),
                opts,
            )?;
            vec![(
                format!("{sym}.nvptx.ll"),
                l.module.print_to_string().to_bytes().to_vec(),
            )]
        }
        CudaEmit::Ptx => vec![ptx(&compile(graph, weights, opts)?)],
        CudaEmit::Artifact => {
            let p = compile(graph, weights, opts)?;
            vec![
                ptx(&p),
                (
                    format!("{sym}.plan.json"),
                    serde_json::to_string_pretty(&p.plan)
                        .map_err(|e| LlvmError::Internal(e.to_string()))?
                        .into_bytes(),
                ),
                (
                    format!("{sym}.weights.bin"),
                    p.consts.iter().flat_map(|v| v.to_le_bytes()).collect(),
                ),
            ]
        }
        CudaEmit::Staticlib => {
            let mut p = compile(graph, weights, opts)?;
            // SASS where ptxas is installed: no JIT on the first call on a
            // GPU of the build's architecture (the PTX serves the others).
            super::sass::add(&mut p);
            let obj = host_object(&p, &sym)?;
            if obj.len() + 4096 > u32::MAX as usize {
                return Err(LlvmError::ArchiveTooLarge(format!(
                    "the object is {} bytes; static libraries over 4 GiB are not supported",
                    obj.len()
                )));
            }
            // One member: the model with the C runtime inside.
            let members = [(
                "model.o",
                obj.as_slice(),
                ["forward", "forward_device", "last_error"]
                    .iter()
                    .map(|f| format!("{sym}_{f}"))
                    .collect(),
            )];
            vec![
                (format!("lib{sym}.a"), archive(&members)),
                (
                    format!("{sym}.h"),
                    header(&p.plan, &sym, p.sass.is_some()).into_bytes(),
                ),
            ]
        }
    })
}

/// The launch plan as the flat `int64` table the C runtime reads (layout
/// in runtime/cuda_rt.c).
pub fn encode_plan(plan: &LaunchPlan) -> Vec<i64> {
    let arg = |a: &Arg| -> [i64; 3] {
        match *a {
            Arg::Arena { per_image, offset } => [0, per_image as i64, offset as i64],
            Arg::Const { offset } => [1, 0, offset as i64],
        }
    };
    let per = |s: &[usize]| s.iter().product::<usize>() as i64;
    let mut t = vec![2, plan.arena_per_image as i64, plan.const_elements as i64];
    t.push(per(&plan.input_shape));
    t.extend(&arg(&plan.input)[1..]);
    t.push(plan.input_stride as i64);
    t.push(per(&plan.output_shape));
    t.extend(&arg(&plan.output)[1..]);
    t.push(plan.output_stride as i64);
    t.push(plan.kernels.len() as i64);
    t.push(plan.launches.len() as i64);
    t.push(plan.scratch.len() as i64);
    for s in &plan.scratch {
        t.extend([s.min_batch as i64, s.per_image as i64]);
    }
    for l in &plan.launches {
        t.push(l.variants.len() as i64);
        t.push(l.args.len() as i64);
        for v in &l.variants {
            let k = plan
                .kernels
                .iter()
                .position(|k| *k == v.kernel)
                .unwrap_or(0);
            t.extend([
                v.min_batch as i64,
                k as i64,
                v.x_per_image as i64,
                v.x_tile as i64,
                v.grid_y as i64,
                v.grid_z as i64,
                v.block as i64,
            ]);
        }
        for a in &l.args {
            t.extend(arg(a));
        }
    }
    t
}

fn private_bytes<'ctx>(
    ctx: &'ctx Context,
    m: &Module<'ctx>,
    name: &str,
    bytes: &[u8],
    align: u32,
) -> inkwell::values::GlobalValue<'ctx> {
    let init = ctx.const_string(bytes, false);
    let g = m.add_global(init.get_type(), None, name);
    g.set_initializer(&init);
    g.set_constant(true);
    g.set_linkage(Linkage::Private);
    g.set_alignment(align);
    g
}

/// The x86-64 object of a CUDA static library: the PTX, kernel names,
/// plan table and weights as data, and `<sym>_forward`,
/// `<sym>_forward_device` and `<sym>_last_error`, which hand the model's
/// descriptor to the C runtime.
fn host_object(p: &CudaProgram, sym: &str) -> Result<Vec<u8>, LlvmError> {
    let ctx = Context::create();
    let m = ctx.create_module(sym);
    let ptr = ctx.ptr_type(AddressSpace::default());
    let i32t = ctx.i32_type();
    let mut ptx = p.ptx.clone().into_bytes();
    ptx.push(0);
    let mut names = Vec::new();
    for k in &p.plan.kernels {
        names.extend(k.as_bytes());
        names.push(0);
    }
    let table: Vec<u8> = encode_plan(&p.plan)
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let consts: Vec<u8> = p.consts.iter().flat_map(|v| v.to_le_bytes()).collect();
    let g_plan = private_bytes(&ctx, &m, &format!("{sym}_plan"), &table, 8);
    let g_names = private_bytes(&ctx, &m, &format!("{sym}_names"), &names, 1);
    let g_ptx = private_bytes(&ctx, &m, &format!("{sym}_ptx"), &ptx, 1);
    let g_consts = private_bytes(&ctx, &m, &format!("{sym}_consts"), &consts, 64);
    let state = m.add_global(ptr, None, &format!("{sym}_state"));
    state.set_initializer(&ptr.const_null());
    state.set_linkage(Linkage::Private);
    // The cubin (NULL and 0 without one), 8-byte aligned for the ELF
    // reader of the driver.
    let (g_cubin, cubin_len): (inkwell::values::BasicValueEnum, u64) = match &p.sass {
        Some(c) => (
            private_bytes(&ctx, &m, &format!("{sym}_cubin"), c, 8)
                .as_pointer_value()
                .into(),
            c.len() as u64,
        ),
        None => (ptr.const_null().into(), 0),
    };
    let i64t = ctx.i64_type();
    let desc_ty = ctx.struct_type(
        &[
            ptr.into(),
            ptr.into(),
            ptr.into(),
            ptr.into(),
            ptr.into(),
            ptr.into(),
            i64t.into(),
        ],
        false,
    );
    let desc = m.add_global(desc_ty, None, &format!("{sym}_model"));
    desc.set_initializer(&desc_ty.const_named_struct(&[
        g_plan.as_pointer_value().into(),
        g_names.as_pointer_value().into(),
        g_ptx.as_pointer_value().into(),
        g_consts.as_pointer_value().into(),
        state.as_pointer_value().into(),
        g_cubin,
        i64t.const_int(cubin_len, false).into(),
    ]));
    desc.set_constant(true);
    desc.set_linkage(Linkage::Private);
    let b = ctx.create_builder();
    let err = |e: inkwell::builder::BuilderError| LlvmError::Internal(e.to_string());
    // <sym>_NAME(args...) { return resnetc_cuda_NAME(&model, args...); }
    let wrappers: [(&str, Vec<inkwell::types::BasicMetadataTypeEnum>, bool); 3] = [
        ("forward", vec![ptr.into(), ptr.into(), i32t.into()], true),
        (
            "forward_device",
            vec![ptr.into(), ptr.into(), i32t.into(), ptr.into()],
            true,
        ),
        ("last_error", vec![], false),
    ];
    for (name, params, takes_model) in wrappers {
        let mut rt_params = params.clone();
        if takes_model {
            rt_params.insert(0, ptr.into());
        }
        let ret: inkwell::types::BasicTypeEnum = if name == "last_error" {
            ptr.into()
        } else {
            i32t.into()
        };
        let rt = m.add_function(
            &format!("resnetc_cuda_{name}"),
            ret.fn_type(&rt_params, false),
            Some(Linkage::External),
        );
        let f = m.add_function(&format!("{sym}_{name}"), ret.fn_type(&params, false), None);
        b.position_at_end(ctx.append_basic_block(f, "entry"));
        let mut args: Vec<inkwell::values::BasicMetadataValueEnum> = Vec::new();
        if takes_model {
            args.push(desc.as_pointer_value().into());
        }
        args.extend(
            f.get_param_iter()
                .map(inkwell::values::BasicMetadataValueEnum::from),
        );
        let r = b.build_call(rt, &args, "").map_err(err)?;
        let v = r
            .try_as_basic_value()
            .basic()
            .ok_or_else(|| LlvmError::Internal("the runtime returns a value".into()))?;
        b.build_return(Some(&v)).map_err(err)?;
    }
    // The C runtime inside, its symbols local: the object exports the
    // header's three functions and nothing else.
    m.set_inline_assembly(&localized_runtime(CUDA_RUNTIME_ASM));
    m.verify().map_err(|e| LlvmError::Internal(e.to_string()))?;
    let machine = llvm::x86_machine("x86-64")?;
    llvm::target(&m, &machine);
    llvm::write(&m, &machine, FileType::Object)
}

/// The C header of a CUDA static library.
pub fn header(plan: &LaunchPlan, sym: &str, sass: bool) -> String {
    let up = sym.to_uppercase();
    let code = if sass {
        format!(
            "PTX and SASS for {}: the SASS runs on a {0} GPU without a JIT, the PTX on later GPUs",
            plan.gpu
        )
    } else {
        format!("PTX for {}, JIT-compiled by the driver on the first call: no ptxas was found to make SASS", plan.gpu)
    };
    let scratch = plan.scratch.iter().map(|s| s.per_image).max().unwrap_or(0);
    let arena = (plan.arena_per_image + scratch) * 4;
    c_header(
        sym,
        &format!(
            "model `{}`, CUDA ({}, tiles planned for {} multiprocessors).\n * Kernels: {code}.\n * Link with lib{sym}.a, libdl and libpthread (nothing else; the CUDA\n * driver, libcuda.so.1, is loaded at run time):\n *     cc app.c -L. -l{sym} -ldl -lpthread",
            plan.model, plan.gpu, plan.sms
        ),
        &plan.input_shape,
        &plan.output_shape,
        &format!(
            r#"/* Device memory per image at most, kept per batch size used (plus the
 * weights). */
#define {up}_ARENA_BYTES_PER_IMAGE {arena}

/* Runs the model on GPU 0 on `batch` images in host memory: reads batch *
 * {up}_INPUT_SIZE floats from `input`, writes batch * {up}_OUTPUT_SIZE
 * floats to `output`, and returns when they are there. The first call
 * loads the PTX and uploads the weights; the first call with each batch
 * size captures the forward pass as a CUDA graph, later ones replay it.
 * Returns 0 on success, -1 if batch < 1, -2 if device memory ran out, -3
 * if no CUDA driver or GPU was found or the GPU is older than the one the
 * model was built for, -4 on any other CUDA error
 * ({sym}_last_error() says which). Thread-safe (calls are serialized). */
int {sym}_forward(const float *input, float *output, int batch);

/* The same on device pointers, enqueued on `stream` (a CUstream; NULL:
 * the default stream) without waiting. The model's working memory is
 * shared by every call with the same batch size: calls must not overlap
 * on different streams. */
int {sym}_forward_device(const float *input, float *output, int batch, void *stream);

/* Why the last call on this thread failed (a static string). */
const char *{sym}_last_error(void);
"#
        ),
    )
}
