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
use crate::backend::llvm::exp::Exp;
use inkwell::context::Context;
use inkwell::module::{Linkage, Module};
use inkwell::types::{BasicMetadataTypeEnum, BasicType};
use inkwell::values::{FunctionValue, IntValue, PointerValue};
use inkwell::AddressSpace;

const BUILDER: &str = "the emitter keeps an insertion point";

/// NVPTX's `ptx_kernel` calling convention: marks an entry point.
pub const PTX_KERNEL: u32 = 71;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `kernel(ptr a0, ..., ptr a{k-1}, i64 batch)`, launched on a GPU.
    Gpu,
    /// `kernel(ptr args, i64 batch, i64 bx, i64 by, i64 bz)`: one block,
    /// its pointer arguments read from the array `args`.
    Emulate,
}

/// The order in which the emulation runs a block's threads through a
/// phase, a launch's blocks, and the landing of asynchronous copies. On a
/// GPU threads and blocks run in no order at all, and a `cp.async` lands
/// at any time between its issue and its wait; the two orders are the
/// extremes. A kernel whose result depends on the order (a thread reading
/// shared memory another thread writes in the same phase, a block reading
/// what another writes, a stage read before its copies were waited for)
/// gives different results run forwards and backwards, which is how the
/// tests look for one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ThreadOrder {
    /// Threads and blocks in index order; copies land at once.
    #[default]
    Forward,
    /// Threads and blocks in reverse; copies land at their wait.
    Backward,
}

/// Floats of shared memory a block may declare statically (48 KiB).
pub const SHARED_FLOATS: u64 = 12 * 1024;

/// The emulation's record of the first misaligned address a kernel used
/// (0: none), and the exported function that returns and clears it, for
/// the emulator and the tests' model of the driver to check after each
/// launch: on a GPU such an access is a launch failure.
const FAULT: &str = "resnetc_emulation_fault";
pub const FAULT_TAKE: &str = "resnetc_emulation_fault_take";

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
    /// Whether the GPU has `cp.async` (sm_80 on); `Memory::copy_async`
    /// copies synchronously through registers where it has not.
    pub async_copies: bool,
    args: Vec<PointerValue<'ctx>>,
    /// The batch size.
    pub batch: IntValue<'ctx>,
    block: [IntValue<'ctx>; 3],
    /// Emulation: the block's shared memory, one array of three regions
    /// of `SHARED_FLOATS` (the memory, async copies not yet landed, and
    /// their flags), and how much of it `shared` has handed out.
    pool: Option<PointerValue<'ctx>>,
    used: u64,
    /// Emulation: the fault record.
    fault: Option<PointerValue<'ctx>>,
}

/// How a kernel's memory operations are emitted: what code inside a
/// phase needs of its `Kern` (which the phase borrows).
#[derive(Clone, Copy)]
pub struct Memory<'ctx> {
    pub mode: Mode,
    /// The GPU has `cp.async`.
    pub async_copies: bool,
    /// Emulation: async copies land at their wait, not at issue.
    late: bool,
    fault: Option<PointerValue<'ctx>>,
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
        let fault = (mode == Mode::Emulate).then(|| fault_record(ctx, module));
        let mut e = Emitter::new(ctx, module, f);
        // NVPTX has no libm; the emulation runs the same reduction.
        e.exp = Exp::Reduced(match mode {
            Mode::Gpu => "llvm.nvvm.ex2.approx.f",
            Mode::Emulate => "llvm.exp2",
        });
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
            async_copies: true,
            args,
            batch,
            block,
            pool: None,
            used: 0,
            fault,
        }
    }

    /// What code inside a phase needs to emit memory operations.
    pub fn memory(&self) -> Memory<'ctx> {
        Memory {
            mode: self.mode,
            async_copies: self.async_copies,
            // Only the emulation lands copies late, and without `cp.async`
            // every copy lands at once.
            late: self.mode == Mode::Emulate
                && self.order == ThreadOrder::Backward
                && self.async_copies,
            fault: self.fault,
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
    /// The emulation landing copies late lands every thread's here.
    pub fn copies_landed(&mut self) {
        match (self.mode, self.pool) {
            (Mode::Gpu, _) if !self.async_copies => {}
            (Mode::Gpu, _) => {
                self.e
                    .call_intrinsic("llvm.nvvm.cp.async.wait.all", &[], &[]);
            }
            (Mode::Emulate, Some(pool)) if self.memory().late => {
                let e = &mut self.e;
                let (l, j) = e.loop_open(e.int(0), e.int(self.used));
                let flag = e.at(pool, e.add(j, e.int(2 * SHARED_FLOATS)));
                let pending = e.b.build_float_compare(
                    inkwell::FloatPredicate::ONE,
                    e.get(flag),
                    e.f32(0.0),
                    "",
                );
                let pending = pending.expect(BUILDER);
                e.if_else(
                    pending,
                    |e| {
                        let v = e.load(pool, e.add(j, e.int(SHARED_FLOATS)));
                        e.store(pool, j, v);
                        e.set(flag, e.f32(0.0));
                    },
                    |_| {},
                );
                e.loop_close_rolled(l, j);
            }
            (Mode::Emulate, _) => {}
        }
    }

    /// `len` floats shared by the block (16-byte aligned). The emulation
    /// fills them with NaN, so that a kernel reading shared memory it
    /// never wrote (which on a GPU holds anything) cannot go unnoticed.
    pub fn shared(&mut self, name: &str, len: u64) -> PointerValue<'ctx> {
        match self.mode {
            Mode::Gpu => {
                let ty = self.e.f32t.array_type(len as u32);
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
                let pool = match self.pool {
                    Some(p) => p,
                    None => {
                        let ty = self.e.f32t.array_type(3 * SHARED_FLOATS as u32);
                        let p = self.e.entry_alloca(ty.as_basic_type_enum());
                        if let Some(i) = p.as_instruction() {
                            // The vector loads of shared memory assume 16 bytes.
                            i.set_alignment(16).expect("an alloca takes an alignment");
                        }
                        self.pool = Some(p);
                        p
                    }
                };
                let at = self.used;
                // Whole 16-byte units, as the GPU's arrays are aligned.
                self.used += len.div_ceil(4) * 4;
                assert!(
                    self.used <= SHARED_FLOATS,
                    "{name}: a block's shared arrays exceed 48 KiB"
                );
                let e = &mut self.e;
                // Up to the rounded end: `copies_landed` reads every flag.
                let (l, j) = e.loop_open(e.int(at), e.int(self.used));
                e.store(pool, j, e.f32(f64::NAN));
                e.store(pool, e.add(j, e.int(2 * SHARED_FLOATS)), e.f32(0.0));
                e.loop_close_rolled(l, j);
                e.at(pool, e.int(at))
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

impl<'ctx> Memory<'ctx> {
    /// Copies `bytes` (4, 8 or 16, aligned so) from global `src` to shared
    /// `dst` without passing through registers (`cp.async`, sm_80 and
    /// later), zeros where `valid` is false (`src` must still be a valid
    /// address). The copy lands by `Kern::copies_landed`; the emulation
    /// lands it at once, or there when it lands copies late. A GPU without
    /// `cp.async` copies at once, through registers (the GEMM kernels
    /// stage their loads in registers there instead: `gemm::TileLoad`).
    pub fn copy_async(
        &self,
        e: &mut Emitter<'_, 'ctx>,
        dst: PointerValue<'ctx>,
        src: PointerValue<'ctx>,
        bytes: u64,
        valid: Option<IntValue<'ctx>>,
    ) {
        if self.mode == Mode::Gpu && self.async_copies {
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
            return;
        }
        // Float by float: the emulation (into the shadow stage when it
        // lands copies late), or a GPU without `cp.async`.
        self.check_aligned(e, src, bytes);
        self.check_aligned(e, dst, bytes);
        let (to, flag) = match self.late {
            false => (dst, None),
            true => (
                e.at(dst, e.int(SHARED_FLOATS)),
                Some(e.at(dst, e.int(2 * SHARED_FLOATS))),
            ),
        };
        for l in 0..bytes / 4 {
            let mut v = e.load(src, e.int(l));
            if let Some(ok) = valid {
                v = e.pick_f32(ok, v, e.f32(0.0));
            }
            e.store(to, e.int(l), v);
            if let Some(flag) = flag {
                e.store(flag, e.int(l), e.f32(1.0));
            }
        }
    }

    /// The emulation records `p` if it is not a multiple of `bytes`: the
    /// alignment a GPU's vector access and `cp.async` of that size need.
    pub fn check_aligned(&self, e: &mut Emitter<'_, 'ctx>, p: PointerValue<'ctx>, bytes: u64) {
        let Some(fault) = self.fault else {
            return;
        };
        let addr = e.b.build_ptr_to_int(p, e.i64t, "").expect(BUILDER);
        let low = e.b.build_and(addr, e.int(bytes - 1), "").expect(BUILDER);
        let first = e.b.build_load(e.i64t, fault, "").expect(BUILDER);
        let first = first.into_int_value();
        let bad = e.b.build_and(
            e.b.build_int_compare(inkwell::IntPredicate::NE, low, e.int(0), "")
                .expect(BUILDER),
            e.b.build_int_compare(inkwell::IntPredicate::EQ, first, e.int(0), "")
                .expect(BUILDER),
            "",
        );
        e.if_else(
            bad.expect(BUILDER),
            |e| {
                e.b.build_store(fault, addr).expect(BUILDER);
            },
            |_| {},
        );
    }
}

/// The module's fault record (made with its accessor on first use).
fn fault_record<'ctx>(ctx: &'ctx Context, module: &Module<'ctx>) -> PointerValue<'ctx> {
    if let Some(g) = module.get_global(FAULT) {
        return g.as_pointer_value();
    }
    let i64t = ctx.i64_type();
    let g = module.add_global(i64t, None, FAULT);
    g.set_initializer(&i64t.const_zero());
    g.set_linkage(Linkage::Internal);
    let take = module.add_function(FAULT_TAKE, i64t.fn_type(&[], false), None);
    let b = ctx.create_builder();
    b.position_at_end(ctx.append_basic_block(take, "entry"));
    let v = b.build_load(i64t, g.as_pointer_value(), "").expect(BUILDER);
    b.build_store(g.as_pointer_value(), i64t.const_zero())
        .expect(BUILDER);
    b.build_return(Some(&v)).expect(BUILDER);
    g.as_pointer_value()
}

#[cfg(test)]
mod tests {
    use super::*;
    use inkwell::targets::{InitializationConfig, Target};
    use inkwell::OptimizationLevel;

    const T: u64 = 4;

    /// Runs a one-block kernel of `T` threads: each copies `x[t + skew]`
    /// (`bytes` of it) into shared memory asynchronously, waits for its
    /// copies if `wait`, passes a barrier, and stores its neighbour's
    /// element in `y[t]`. Returns `y` and the fault record.
    fn shift(order: ThreadOrder, wait: bool, bytes: u64, skew: u64) -> (Vec<f32>, u64) {
        let ctx = Context::create();
        let module = ctx.create_module("shift");
        let mut k = Kern::new(&ctx, &module, Mode::Emulate, "shift", 2, T);
        k.order = order;
        let s = k.shared("s", 4 * T);
        let (x, y, mem) = (k.arg(0), k.arg(1), k.memory());
        k.phase(|e, t| {
            let at = e.mul(t, e.int(bytes / 4));
            let (dst, src) = (e.at(s, at), e.at(x, e.add(at, e.int(skew))));
            mem.copy_async(e, dst, src, bytes, None);
        });
        if wait {
            k.copies_landed();
        }
        k.barrier();
        k.phase(|e, t| {
            let next = e.b.build_int_unsigned_rem(e.add(t, e.int(1)), e.int(T), "");
            let next = next.expect(BUILDER);
            let v = e.load(s, e.mul(next, e.int(bytes / 4)));
            e.store(y, t, v);
        });
        k.finish();
        module.verify().expect("a valid module");
        Target::initialize_native(&InitializationConfig::default()).expect("a host target");
        let engine = module
            .create_jit_execution_engine(OptimizationLevel::None)
            .expect("a JIT");
        let mut xs = [0.0f32; 4 * T as usize + 8];
        let start = xs.as_ptr().align_offset(16);
        for (i, v) in xs[start..].iter_mut().enumerate() {
            *v = i as f32 + 1.0;
        }
        let mut ys = vec![0.0f32; T as usize];
        let args = [xs[start..].as_mut_ptr(), ys.as_mut_ptr()];
        // SAFETY: the signatures the kernel and accessor were made with;
        // every access is inside `xs` and `ys`.
        unsafe {
            let f = engine
                .get_function::<unsafe extern "C" fn(*const *mut f32, i64, i64, i64, i64)>("shift")
                .expect("the kernel");
            f.call(args.as_ptr(), 1, 0, 0, 0);
            let take = engine
                .get_function::<unsafe extern "C" fn() -> i64>(FAULT_TAKE)
                .expect("the fault accessor");
            let fault = take.call() as u64;
            let fault = fault.saturating_sub(args[0] as u64);
            (ys, fault)
        }
    }

    /// Both orders agree where every thread waits for its copies before
    /// the barrier; without the wait, copies landing late leave the
    /// shared memory as it started (NaN), so the tests' comparison of the
    /// two orders finds the missing wait.
    #[test]
    fn late_copies_find_a_missing_wait() {
        let want = vec![2.0, 3.0, 4.0, 1.0];
        for order in [ThreadOrder::Forward, ThreadOrder::Backward] {
            assert_eq!(shift(order, true, 4, 0), (want.clone(), 0), "{order:?}");
        }
        assert_eq!(shift(ThreadOrder::Forward, false, 4, 0).0, want);
        let (late, _) = shift(ThreadOrder::Backward, false, 4, 0);
        assert!(late.iter().all(|v| v.is_nan()), "{late:?}");
    }

    /// A 16-byte copy from an address that is 4 bytes off is recorded
    /// (the first such address); an aligned one is not.
    #[test]
    fn misaligned_copies_are_recorded() {
        assert_eq!(shift(ThreadOrder::Forward, true, 16, 0).1, 0);
        assert_eq!(shift(ThreadOrder::Forward, true, 16, 1).1, 4);
        assert_eq!(shift(ThreadOrder::Forward, true, 8, 2).1, 0);
    }
}
