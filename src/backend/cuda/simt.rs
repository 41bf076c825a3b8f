//! `Kern`: one CUDA kernel written once as a block-level SIMT program, and
//! emitted either for the GPU (NVPTX: thread and block ids from special
//! registers, `bar.sync`, shared memory in address space 3) or as an
//! *emulation* on the host (x86: one call per block, each phase between two
//! barriers a loop over the block's threads, per-thread registers as arrays
//! indexed by thread). The emulation runs the very same index math, tiling
//! and epilogues on the CPU, so the tests check every CUDA kernel against
//! the interpreter on machines without a GPU.
//!
//! The rules that keep both forms equal: thread-private values that live
//! across a barrier are `Private` arrays (never plain SSA values), and code
//! that depends on the thread index runs inside `phase`.

use crate::backend::llvm::emit::Emitter;
use inkwell::context::Context;
use inkwell::module::{Linkage, Module};
use inkwell::types::{BasicMetadataTypeEnum, BasicType};
use inkwell::values::{FunctionValue, IntValue, PointerValue};
use inkwell::AddressSpace;

const BUILDER: &str = "the emitter keeps an insertion point";

/// NVPTX's `ptx_kernel` calling convention: marks an entry point.
const PTX_KERNEL: u32 = 71;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `kernel(ptr a0, ..., ptr a{k-1}, i64 batch)`, launched on a GPU.
    Gpu,
    /// `kernel(ptr args, i64 batch, i64 bx, i64 by, i64 bz)`: one block,
    /// its pointer arguments read from the array `args`.
    Emulate,
}

/// The order in which the emulation runs a block's threads through a
/// phase. On a GPU they run in no order at all; a phase whose result
/// depends on the order (a thread reading shared memory another thread
/// writes in the same phase: a missing barrier) gives different results
/// run forwards and backwards, which is how the tests look for one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ThreadOrder {
    #[default]
    Forward,
    Backward,
}

/// A thread-private array of floats (the register tile of a thread).
#[derive(Clone, Copy)]
pub struct Private<'ctx> {
    ptr: PointerValue<'ctx>,
    len: u64,
}

pub struct Kern<'a, 'ctx> {
    pub e: Emitter<'a, 'ctx>,
    pub mode: Mode,
    /// Threads per block.
    pub threads: u64,
    /// How the emulation walks the threads of a phase.
    pub order: ThreadOrder,
    args: Vec<PointerValue<'ctx>>,
    /// The batch size.
    pub batch: IntValue<'ctx>,
    block: [IntValue<'ctx>; 3],
}

impl<'a, 'ctx> Kern<'a, 'ctx> {
    /// Declares kernel `name` with `nargs` pointer arguments and positions
    /// the emitter in its body.
    pub fn new(
        ctx: &'ctx Context,
        module: &'a Module<'ctx>,
        mode: Mode,
        name: &str,
        nargs: u32,
        threads: u64,
    ) -> Self {
        let ptr = ctx.ptr_type(AddressSpace::default());
        let i64t = ctx.i64_type();
        let params: Vec<BasicMetadataTypeEnum> = match mode {
            Mode::Gpu => {
                let mut p: Vec<BasicMetadataTypeEnum> = vec![ptr.into(); nargs as usize];
                p.push(i64t.into());
                p
            }
            Mode::Emulate => vec![
                ptr.into(),
                i64t.into(),
                i64t.into(),
                i64t.into(),
                i64t.into(),
            ],
        };
        let f = module.add_function(
            name,
            ctx.void_type().fn_type(&params, false),
            Some(Linkage::External),
        );
        if mode == Mode::Gpu {
            f.set_call_conventions(PTX_KERNEL);
        }
        if mode == Mode::Emulate {
            // The block size, for a host model of the driver to check
            // launches against (the GPU form needs none).
            let g = module.add_global(i64t, None, &format!("{name}_threads"));
            g.set_initializer(&i64t.const_int(threads, false));
            g.set_constant(true);
        }
        let e = Emitter::new(ctx, module, f);
        let (args, batch, block) = match mode {
            Mode::Gpu => {
                let args = (0..nargs).map(|i| e.param_ptr(i)).collect();
                let sreg = |n: &str| {
                    let v = e
                        .call_intrinsic(&format!("llvm.nvvm.read.ptx.sreg.ctaid.{n}"), &[], &[])
                        .expect("sreg value")
                        .into_int_value();
                    e.b.build_int_z_extend(v, i64t, "").expect(BUILDER)
                };
                (args, e.param_int(nargs), [sreg("x"), sreg("y"), sreg("z")])
            }
            Mode::Emulate => {
                let table = e.param_ptr(0);
                let args = (0..nargs)
                    .map(|i| {
                        let p =
                            unsafe { e.b.build_in_bounds_gep(ptr, table, &[e.int(i as u64)], "") }
                                .expect(BUILDER);
                        e.b.build_load(ptr, p, "")
                            .expect(BUILDER)
                            .into_pointer_value()
                    })
                    .collect();
                (
                    args,
                    e.param_int(1),
                    [e.param_int(2), e.param_int(3), e.param_int(4)],
                )
            }
        };
        Kern {
            e,
            mode,
            threads,
            order: ThreadOrder::Forward,
            args,
            batch,
            block,
        }
    }

    /// Caps the kernel's registers per thread (`.maxnreg`, from an
    /// `nvvm.annotations` entry: where LLVM 19 reads launch bounds; the
    /// kernel itself is marked by its calling convention).
    pub fn max_registers(&self, n: u64) {
        if self.mode != Mode::Gpu {
            return;
        }
        let ctx = self.e.ctx;
        let node = ctx.metadata_node(&[
            self.e.func.as_global_value().as_pointer_value().into(),
            ctx.metadata_string("maxnreg").into(),
            ctx.i32_type().const_int(n, false).into(),
        ]);
        self.e
            .module
            .add_global_metadata("nvvm.annotations", &node)
            .expect("named metadata takes a node");
    }

    pub fn func(&self) -> FunctionValue<'ctx> {
        self.e.func
    }

    /// Pointer argument `i`.
    pub fn arg(&self, i: usize) -> PointerValue<'ctx> {
        self.args[i]
    }

    /// The block index along `d` (0: x, 1: y, 2: z).
    pub fn block(&self, d: usize) -> IntValue<'ctx> {
        self.block[d]
    }

    /// Runs `body(thread)` for every thread of the block: straight-line
    /// code on the GPU, a loop in the emulation.
    pub fn phase(&mut self, mut body: impl FnMut(&mut Emitter<'a, 'ctx>, IntValue<'ctx>)) {
        match self.mode {
            Mode::Gpu => {
                let t = self
                    .e
                    .call_intrinsic("llvm.nvvm.read.ptx.sreg.tid.x", &[], &[])
                    .expect("sreg value")
                    .into_int_value();
                let t = self
                    .e
                    .b
                    .build_int_z_extend(t, self.e.i64t, "")
                    .expect(BUILDER);
                body(&mut self.e, t);
            }
            Mode::Emulate => {
                let (threads, order) = (self.threads, self.order);
                self.e.for_const(0, threads, |e, t| {
                    let t = match order {
                        ThreadOrder::Forward => t,
                        ThreadOrder::Backward => e.sub(e.int(threads - 1), t),
                    };
                    body(e, t)
                });
            }
        }
    }

    /// Every thread of the block waits here (`bar.sync 0`).
    pub fn barrier(&mut self) {
        if self.mode == Mode::Gpu {
            self.e.call_intrinsic("llvm.nvvm.barrier0", &[], &[]);
        }
    }

    /// Waits for this thread's `copy_async` copies (`cp.async.wait_all`);
    /// a barrier after it makes every thread's copies visible to the block.
    pub fn copies_landed(&mut self) {
        if self.mode == Mode::Gpu {
            self.e
                .call_intrinsic("llvm.nvvm.cp.async.wait.all", &[], &[]);
        }
    }

    /// `len` floats shared by the block (16-byte aligned).
    pub fn shared(&mut self, name: &str, len: u64) -> PointerValue<'ctx> {
        let ty = self.e.f32t.array_type(len as u32);
        match self.mode {
            Mode::Gpu => {
                let g = self.e.module.add_global(
                    ty,
                    Some(AddressSpace::from(3u16)),
                    &format!("{}_{name}", self.e.func.get_name().to_string_lossy()),
                );
                g.set_linkage(Linkage::Internal);
                g.set_initializer(&ty.get_undef());
                g.set_alignment(16);
                g.as_pointer_value()
            }
            Mode::Emulate => {
                let p = self.e.entry_alloca(ty.as_basic_type_enum());
                if let Some(i) = p.as_instruction() {
                    // The vector loads of shared memory assume 16 bytes.
                    i.set_alignment(16).expect("an alloca takes an alignment");
                }
                p
            }
        }
    }

    /// A private array of `len` floats per thread.
    pub fn private(&mut self, len: u64) -> Private<'ctx> {
        let per_block = match self.mode {
            Mode::Gpu => len,
            Mode::Emulate => len * self.threads,
        };
        let ty = self.e.f32t.array_type(per_block as u32);
        Private {
            ptr: self.e.entry_alloca(ty.as_basic_type_enum()),
            len,
        }
    }

    /// `for i in lo..hi` around code that may hold phases and barriers,
    /// never unrolled.
    pub fn for_range(
        &mut self,
        lo: IntValue<'ctx>,
        hi: IntValue<'ctx>,
        mut body: impl FnMut(&mut Self, IntValue<'ctx>),
    ) {
        let (l, i) = self.e.loop_open(lo, hi);
        body(self, i);
        self.e.loop_close_rolled(l, i);
    }

    /// One thread per element: `body(i)` for `i = block.x * threads +
    /// thread` below `total`.
    pub fn per_element(
        &mut self,
        total: IntValue<'ctx>,
        mut body: impl FnMut(&mut Emitter<'a, 'ctx>, IntValue<'ctx>),
    ) {
        let (bx, threads) = (self.block(0), self.threads);
        self.phase(|e, t| {
            let i = e.add(e.mul(bx, e.int(threads)), t);
            let inside = e.ult(i, total);
            e.if_else(inside, |e| body(e, i), |_| {});
        });
    }

    pub fn finish(self) {
        self.e.ret_void();
    }
}

impl<'ctx> Private<'ctx> {
    /// Address of element `j` of `thread`'s array.
    pub fn at(
        &self,
        e: &Emitter<'_, 'ctx>,
        mode: Mode,
        thread: IntValue<'ctx>,
        j: u64,
    ) -> PointerValue<'ctx> {
        let idx = match mode {
            Mode::Gpu => e.int(j),
            Mode::Emulate => e.mad(thread, self.len, e.int(j)),
        };
        e.at(self.ptr, idx)
    }
}

/// Copies `bytes` (4, 8 or 16, aligned so) from global `src` to shared
/// `dst` without passing through registers (`cp.async`, sm_80 and later),
/// zeros where `valid` is false (`src` must still be a valid address).
/// The copy lands by `Kern::copies_landed`; the emulation copies at once.
pub fn copy_async<'ctx>(
    e: &Emitter<'_, 'ctx>,
    mode: Mode,
    dst: PointerValue<'ctx>,
    src: PointerValue<'ctx>,
    bytes: u64,
    valid: Option<IntValue<'ctx>>,
) {
    match mode {
        Mode::Gpu => {
            let global =
                e.b.build_address_space_cast(src, e.ctx.ptr_type(AddressSpace::from(1u16)), "")
                    .expect(BUILDER);
            // 16-byte copies (the weights) cache in L2 only; the im2col
            // elements also in L1, where a 3x3 conv's taps meet again.
            let (cache, size) = if bytes == 16 {
                ("cg", 16)
            } else {
                ("ca", bytes)
            };
            match valid {
                None => e.call_intrinsic(
                    &format!("llvm.nvvm.cp.async.{cache}.shared.global.{size}"),
                    &[],
                    &[dst.into(), global.into()],
                ),
                Some(ok) => {
                    let n = e.pick(ok, e.int32(bytes), e.int32(0));
                    e.call_intrinsic(
                        &format!("llvm.nvvm.cp.async.{cache}.shared.global.{size}.s"),
                        &[],
                        &[dst.into(), global.into(), n.into()],
                    )
                }
            };
        }
        Mode::Emulate => {
            for l in 0..bytes / 4 {
                let mut v = e.load(src, e.int(l));
                if let Some(ok) = valid {
                    v =
                        e.b.build_select(ok, v, e.f32(0.0), "")
                            .expect(BUILDER)
                            .into_float_value();
                }
                e.store(dst, e.int(l), v);
            }
        }
    }
}
