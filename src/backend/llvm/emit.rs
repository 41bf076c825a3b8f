//! `Emitter`: loops, addressing and float math over inkwell's builder, so
//! kernel emitters read like the loop nests they produce.
//!
//! Builder calls fail only when the builder has no insertion point, which is
//! a bug in the emitter, never a property of the user's model: they panic
//! with `BUILDER`.

use super::exp::Exp;
use crate::ir::op::Activation;
use inkwell::builder::Builder;
use inkwell::context::{AsContextRef, Context};
use inkwell::intrinsics::Intrinsic;
use inkwell::module::Module;
use inkwell::types::{FloatType, IntType, PointerType};
use inkwell::values::{
    AsValueRef, FloatValue, FunctionValue, InstructionValue, IntValue, PointerValue,
};
use inkwell::{AddressSpace, FloatPredicate, IntPredicate};

const BUILDER: &str = "the emitter keeps an insertion point";

/// A loop opened by `Emitter::loop_open`, to be closed by `loop_close`.
pub struct OpenLoop<'ctx> {
    phi: inkwell::values::PhiValue<'ctx>,
    header: inkwell::basic_block::BasicBlock<'ctx>,
    exit: inkwell::basic_block::BasicBlock<'ctx>,
}

pub struct Emitter<'a, 'ctx> {
    pub ctx: &'ctx Context,
    pub module: &'a Module<'ctx>,
    pub b: Builder<'ctx>,
    pub func: FunctionValue<'ctx>,
    pub i64t: IntType<'ctx>,
    pub f32t: FloatType<'ctx>,
    pub ptr: PointerType<'ctx>,
    /// f32 lanes of the explicit vectors (`vector.rs`): 8 unless the
    /// target's kernels are tiled for wider ones.
    pub lanes: u64,
    /// How `exp` is computed: libm, or reduced where there is none.
    pub exp: Exp,
}

impl<'a, 'ctx> Emitter<'a, 'ctx> {
    /// An emitter positioned at the start of `func`'s new entry block.
    pub fn new(ctx: &'ctx Context, module: &'a Module<'ctx>, func: FunctionValue<'ctx>) -> Self {
        let b = ctx.create_builder();
        let entry = ctx.append_basic_block(func, "entry");
        b.position_at_end(entry);
        Emitter {
            ctx,
            module,
            b,
            func,
            i64t: ctx.i64_type(),
            f32t: ctx.f32_type(),
            ptr: ctx.ptr_type(AddressSpace::default()),
            lanes: 8,
            exp: Exp::Libm,
        }
    }

    pub fn param_ptr(&self, i: u32) -> PointerValue<'ctx> {
        self.func
            .get_nth_param(i)
            .expect("declared parameter")
            .into_pointer_value()
    }

    pub fn param_int(&self, i: u32) -> IntValue<'ctx> {
        self.func
            .get_nth_param(i)
            .expect("declared parameter")
            .into_int_value()
    }

    pub fn ret_void(&self) {
        self.b.build_return(None).expect(BUILDER);
    }

    // ---- integers -------------------------------------------------------

    pub fn int(&self, v: u64) -> IntValue<'ctx> {
        self.i64t.const_int(v, false)
    }

    /// A 32-bit constant: GPU index math that fits in 32 bits is half the
    /// registers and instructions of 64-bit math.
    pub fn int32(&self, v: u64) -> IntValue<'ctx> {
        self.ctx.i32_type().const_int(v, false)
    }

    /// The low 32 bits of `a`.
    pub fn narrow(&self, a: IntValue<'ctx>) -> IntValue<'ctx> {
        self.b
            .build_int_truncate(a, self.ctx.i32_type(), "")
            .expect(BUILDER)
    }

    /// `a` zero-extended to 64 bits.
    pub fn widen(&self, a: IntValue<'ctx>) -> IntValue<'ctx> {
        self.b.build_int_z_extend(a, self.i64t, "").expect(BUILDER)
    }

    pub fn add(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> IntValue<'ctx> {
        self.b.build_int_add(a, b, "").expect(BUILDER)
    }

    pub fn sub(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> IntValue<'ctx> {
        self.b.build_int_sub(a, b, "").expect(BUILDER)
    }

    pub fn mul(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> IntValue<'ctx> {
        self.b.build_int_mul(a, b, "").expect(BUILDER)
    }

    /// `a * k + c` with constants, the usual index step.
    pub fn mad(&self, a: IntValue<'ctx>, k: u64, c: IntValue<'ctx>) -> IntValue<'ctx> {
        self.add(self.mul(a, self.int(k)), c)
    }

    pub fn sdiv(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> IntValue<'ctx> {
        self.b.build_int_signed_div(a, b, "").expect(BUILDER)
    }

    pub fn srem(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> IntValue<'ctx> {
        self.b.build_int_signed_rem(a, b, "").expect(BUILDER)
    }

    /// `(a / d, a % d)` as unsigned integers, `d` a constant of `a`'s width.
    pub fn udivrem(
        &self,
        a: IntValue<'ctx>,
        d: IntValue<'ctx>,
    ) -> (IntValue<'ctx>, IntValue<'ctx>) {
        (
            self.b.build_int_unsigned_div(a, d, "").expect(BUILDER),
            self.b.build_int_unsigned_rem(a, d, "").expect(BUILDER),
        )
    }

    /// `a < b` as unsigned integers (an i1).
    pub fn ult(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> IntValue<'ctx> {
        self.b
            .build_int_compare(IntPredicate::ULT, a, b, "")
            .expect(BUILDER)
    }

    /// `if c { a } else { b }` on integers.
    pub fn pick(&self, c: IntValue<'ctx>, a: IntValue<'ctx>, b: IntValue<'ctx>) -> IntValue<'ctx> {
        self.b
            .build_select(c, a, b, "")
            .expect(BUILDER)
            .into_int_value()
    }

    pub fn pick_f32(
        &self,
        c: IntValue<'ctx>,
        a: FloatValue<'ctx>,
        b: FloatValue<'ctx>,
    ) -> FloatValue<'ctx> {
        self.b
            .build_select(c, a, b, "")
            .expect(BUILDER)
            .into_float_value()
    }

    pub fn smin(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> IntValue<'ctx> {
        let c = self
            .b
            .build_int_compare(IntPredicate::SLT, a, b, "")
            .expect(BUILDER);
        self.pick(c, a, b)
    }

    pub fn smax(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> IntValue<'ctx> {
        let c = self
            .b
            .build_int_compare(IntPredicate::SGT, a, b, "")
            .expect(BUILDER);
        self.pick(c, a, b)
    }

    pub fn int_to_float(&self, a: IntValue<'ctx>) -> FloatValue<'ctx> {
        self.b
            .build_signed_int_to_float(a, self.f32t, "")
            .expect(BUILDER)
    }

    // ---- memory ---------------------------------------------------------

    /// Address of f32 element `idx` of `base`.
    pub fn at(&self, base: PointerValue<'ctx>, idx: IntValue<'ctx>) -> PointerValue<'ctx> {
        // SAFETY (for LLVM's semantics, not Rust's): indices come from the
        // shape-checked loop nests of the lowering, always inside the buffer.
        unsafe {
            self.b
                .build_in_bounds_gep(self.f32t, base, &[idx], "")
                .expect(BUILDER)
        }
    }

    pub fn load(&self, base: PointerValue<'ctx>, idx: IntValue<'ctx>) -> FloatValue<'ctx> {
        let p = self.at(base, idx);
        self.b
            .build_load(self.f32t, p, "")
            .expect(BUILDER)
            .into_float_value()
    }

    pub fn store(&self, base: PointerValue<'ctx>, idx: IntValue<'ctx>, v: FloatValue<'ctx>) {
        let p = self.at(base, idx);
        self.b.build_store(p, v).expect(BUILDER);
    }

    // ---- floats ---------------------------------------------------------

    pub fn f32(&self, v: f64) -> FloatValue<'ctx> {
        self.f32t.const_float(v)
    }

    /// The bf16 value `base[idx]` (`base` counted in bf16 elements) as f32.
    pub fn load_bf16(&self, base: PointerValue<'ctx>, idx: IntValue<'ctx>) -> FloatValue<'ctx> {
        let (i16t, i32t) = (self.ctx.i16_type(), self.ctx.i32_type());
        let p = unsafe { self.b.build_in_bounds_gep(i16t, base, &[idx], "") }.expect(BUILDER);
        let v = self
            .b
            .build_load(i16t, p, "")
            .expect(BUILDER)
            .into_int_value();
        let wide = self.b.build_int_z_extend(v, i32t, "").expect(BUILDER);
        let bits = self
            .b
            .build_left_shift(wide, i32t.const_int(16, false), "")
            .expect(BUILDER);
        self.b
            .build_bit_cast(bits, self.f32t, "")
            .expect(BUILDER)
            .into_float_value()
    }

    /// `a` rounded to the nearest bfloat16, as an f32 (`vround_bf16`).
    pub fn round_bf16(&self, a: FloatValue<'ctx>) -> FloatValue<'ctx> {
        let i32t = self.ctx.i32_type();
        let bits = self
            .b
            .build_bit_cast(a, i32t, "")
            .expect(BUILDER)
            .into_int_value();
        let k = |v: u64| i32t.const_int(v, false);
        let r = self.round_bits_bf16(bits, k(16), k(1), k(0x7fff), k(0xffff_0000));
        self.b
            .build_bit_cast(r, self.f32t, "")
            .expect(BUILDER)
            .into_float_value()
    }

    /// `lo` and `hi` rounded to bf16 as one 32-bit word (`lo` in the low
    /// half), in an f32: `vpack_bf16_pairs` for one lane.
    pub fn pack_bf16_pair(&self, lo: FloatValue<'ctx>, hi: FloatValue<'ctx>) -> FloatValue<'ctx> {
        let i32t = self.ctx.i32_type();
        let bits = |v| {
            self.b
                .build_bit_cast(self.round_bf16(v), i32t, "")
                .expect(BUILDER)
                .into_int_value()
        };
        let low = self
            .b
            .build_right_shift(bits(lo), i32t.const_int(16, false), false, "")
            .expect(BUILDER);
        let word = self.b.build_or(low, bits(hi), "").expect(BUILDER);
        self.b
            .build_bit_cast(word, self.f32t, "")
            .expect(BUILDER)
            .into_float_value()
    }

    pub fn fadd(&self, a: FloatValue<'ctx>, b: FloatValue<'ctx>) -> FloatValue<'ctx> {
        self.b.build_float_add(a, b, "").expect(BUILDER)
    }

    pub fn fsub(&self, a: FloatValue<'ctx>, b: FloatValue<'ctx>) -> FloatValue<'ctx> {
        self.b.build_float_sub(a, b, "").expect(BUILDER)
    }

    pub fn fmul(&self, a: FloatValue<'ctx>, b: FloatValue<'ctx>) -> FloatValue<'ctx> {
        self.b.build_float_mul(a, b, "").expect(BUILDER)
    }

    /// `v` widened or rounded (to nearest even) to `to`.
    pub fn fcast(
        &self,
        v: FloatValue<'ctx>,
        to: inkwell::types::FloatType<'ctx>,
    ) -> FloatValue<'ctx> {
        self.b.build_float_cast(v, to, "").expect(BUILDER)
    }

    pub fn fdiv(&self, a: FloatValue<'ctx>, b: FloatValue<'ctx>) -> FloatValue<'ctx> {
        self.b.build_float_div(a, b, "").expect(BUILDER)
    }

    /// Calls the LLVM intrinsic `name` overloaded on `types`; `None` for
    /// one that returns nothing.
    pub fn call_intrinsic(
        &self,
        name: &str,
        types: &[inkwell::types::BasicTypeEnum<'ctx>],
        args: &[inkwell::values::BasicMetadataValueEnum<'ctx>],
    ) -> Option<inkwell::values::BasicValueEnum<'ctx>> {
        let f = Intrinsic::find(name)
            .and_then(|i| i.get_declaration(self.module, types))
            .expect("LLVM knows its intrinsics");
        self.b
            .build_call(f, args, "")
            .expect(BUILDER)
            .try_as_basic_value()
            .basic()
    }

    /// A hint to bring the line at `p` into L2 (`prefetcht1`): never
    /// faults, whatever the address.
    pub fn prefetch_l2(&self, p: PointerValue<'ctx>) {
        self.prefetch(p, 2);
    }

    /// The same into L1 (`prefetcht0`).
    pub fn prefetch_l1(&self, p: PointerValue<'ctx>) {
        self.prefetch(p, 3);
    }

    fn prefetch(&self, p: PointerValue<'ctx>, locality: u64) {
        let i32t = self.ctx.i32_type();
        self.call_intrinsic(
            "llvm.prefetch",
            &[self.ptr.into()],
            &[
                p.into(),
                i32t.const_zero().into(),
                i32t.const_int(locality, false).into(),
                i32t.const_int(1, false).into(),
            ],
        );
    }

    fn intrinsic1(&self, name: &str, args: &[FloatValue<'ctx>]) -> FloatValue<'ctx> {
        let args: Vec<_> = args.iter().map(|&a| a.into()).collect();
        self.call_intrinsic(name, &[self.f32t.into()], &args)
            .expect("intrinsic returns a value")
            .into_float_value()
    }

    /// `a * b + c`, fused where the target has FMA.
    pub fn fmuladd(
        &self,
        a: FloatValue<'ctx>,
        b: FloatValue<'ctx>,
        c: FloatValue<'ctx>,
    ) -> FloatValue<'ctx> {
        self.intrinsic1("llvm.fmuladd", &[a, b, c])
    }

    pub fn exp(&self, a: FloatValue<'ctx>) -> FloatValue<'ctx> {
        match self.exp {
            Exp::Libm => self.intrinsic1("llvm.exp", &[a]),
            Exp::Reduced(exp2) => self.exp_reduced(a, exp2),
        }
    }

    pub fn floor(&self, a: FloatValue<'ctx>) -> FloatValue<'ctx> {
        self.intrinsic1("llvm.floor", &[a])
    }

    /// max(a, b) with PyTorch's NaN rule: a NaN in `a` wins.
    pub fn fmax(&self, a: FloatValue<'ctx>, b: FloatValue<'ctx>) -> FloatValue<'ctx> {
        let keep_a = self
            .b
            .build_float_compare(FloatPredicate::UGE, a, b, "")
            .expect(BUILDER);
        self.b
            .build_select(keep_a, a, b, "")
            .expect(BUILDER)
            .into_float_value()
    }

    pub fn fmin(&self, a: FloatValue<'ctx>, b: FloatValue<'ctx>) -> FloatValue<'ctx> {
        let keep_a = self
            .b
            .build_float_compare(FloatPredicate::ULE, a, b, "")
            .expect(BUILDER);
        self.b
            .build_select(keep_a, a, b, "")
            .expect(BUILDER)
            .into_float_value()
    }

    pub fn act(&self, v: FloatValue<'ctx>, a: Activation) -> FloatValue<'ctx> {
        match a {
            Activation::Relu => self.fmax(v, self.f32(0.0)),
            Activation::Relu6 => self.fmin(self.fmax(v, self.f32(0.0)), self.f32(6.0)),
            Activation::LeakyRelu(s) => {
                let neg = self
                    .b
                    .build_float_compare(FloatPredicate::OLT, v, self.f32(0.0), "")
                    .expect(BUILDER);
                let scaled = self.fmul(v, self.f32(s as f64));
                self.b
                    .build_select(neg, scaled, v, "")
                    .expect(BUILDER)
                    .into_float_value()
            }
            Activation::Sigmoid => {
                let e = self.exp(self.b.build_float_neg(v, "").expect(BUILDER));
                self.fdiv(self.f32(1.0), self.fadd(self.f32(1.0), e))
            }
        }
    }

    /// Bilinear upsampling along one axis (PyTorch's
    /// `upsample_bilinear2d`): for output index `o` of `out` (input `inn`,
    /// `step` source pixels per output pixel, `Scale::step`), the lower and
    /// upper source index and the upper one's weight.
    pub fn upsample_coord(
        &self,
        o: IntValue<'ctx>,
        inn: u64,
        out: u64,
        step: f64,
        align_corners: bool,
    ) -> (IntValue<'ctx>, IntValue<'ctx>, FloatValue<'ctx>) {
        let of = self.int_to_float(o);
        let src = if align_corners {
            let r = if out > 1 {
                (inn - 1) as f64 / (out - 1) as f64
            } else {
                0.0
            };
            self.fmul(of, self.f32(r))
        } else {
            let v = self.fsub(
                self.fmul(self.fadd(of, self.f32(0.5)), self.f32(step)),
                self.f32(0.5),
            );
            self.fmax(v, self.f32(0.0))
        };
        let lo = self
            .b
            .build_float_to_signed_int(self.floor(src), self.i64t, "")
            .expect(BUILDER);
        let lo = self.smin(lo, self.int(inn - 1));
        let hi = self.smin(self.add(lo, self.int(1)), self.int(inn - 1));
        // Past the last pixel (a step under 1 at the end) `lo == hi`, so
        // the weight is moot; PyTorch clamps it to 1 there.
        let l = self.fsub(src, self.int_to_float(lo));
        (lo, hi, self.fmin(l, self.f32(1.0)))
    }

    /// Nearest upsampling's source index of output `o` along an axis of
    /// `inn` pixels scaled to `out` by a factor that is not whole
    /// (PyTorch's `nearest_idx`, f32 arithmetic; `ir::op::nearest_src`).
    pub fn nearest_coord(
        &self,
        o: IntValue<'ctx>,
        inn: u64,
        out: u64,
        step: f32,
    ) -> IntValue<'ctx> {
        if out == inn {
            return o;
        }
        if out == 2 * inn {
            return self.sdiv(o, self.int(2));
        }
        let src = self.floor(self.fmul(self.int_to_float(o), self.f32(step as f64)));
        let i = self
            .b
            .build_float_to_signed_int(src, self.i64t, "")
            .expect(BUILDER);
        self.smin(i, self.int(inn - 1))
    }

    /// A stack slot for an accumulator, allocated in the entry block (LLVM
    /// promotes it to a register).
    pub fn slot(&self) -> PointerValue<'ctx> {
        self.entry_alloca(self.f32t.into())
    }

    /// A 64-byte aligned stack array of `n` f32s (scratch that stays in L1),
    /// allocated in the entry block.
    pub fn stack_array(&self, n: u64) -> PointerValue<'ctx> {
        let p = self.entry_alloca(self.f32t.array_type(n as u32).into());
        if let Some(i) = p.as_instruction() {
            let _ = i.set_alignment(64);
        }
        p
    }

    /// An `alloca` of `ty` at the top of the entry block, where LLVM's
    /// SROA turns it into SSA values.
    pub fn entry_alloca(&self, ty: inkwell::types::BasicTypeEnum<'ctx>) -> PointerValue<'ctx> {
        let here = self.b.get_insert_block().expect(BUILDER);
        let entry = self.func.get_first_basic_block().expect("entry block");
        match entry.get_first_instruction() {
            Some(i) => self.b.position_before(&i),
            None => self.b.position_at_end(entry),
        }
        let p = self.b.build_alloca(ty, "acc").expect(BUILDER);
        self.b.position_at_end(here);
        p
    }

    pub fn get(&self, slot: PointerValue<'ctx>) -> FloatValue<'ctx> {
        self.b
            .build_load(self.f32t, slot, "")
            .expect(BUILDER)
            .into_float_value()
    }

    pub fn set(&self, slot: PointerValue<'ctx>, v: FloatValue<'ctx>) {
        self.b.build_store(slot, v).expect(BUILDER);
    }

    // ---- loops ----------------------------------------------------------

    /// `for i in lo..hi { body(i) }` with a runtime bound.
    pub fn for_range(
        &mut self,
        lo: IntValue<'ctx>,
        hi: IntValue<'ctx>,
        mut body: impl FnMut(&mut Self, IntValue<'ctx>),
    ) {
        let (l, i) = self.loop_open(lo, hi);
        body(self, i);
        self.loop_close(l, i);
    }

    /// Opens `for i in lo..hi` (signed compare) and positions the builder
    /// in its body; returns the loop and `i`. For loops whose body is not
    /// an `Emitter` closure (the CUDA kernels' block-level loops).
    pub fn loop_open(
        &self,
        lo: IntValue<'ctx>,
        hi: IntValue<'ctx>,
    ) -> (OpenLoop<'ctx>, IntValue<'ctx>) {
        let pre = self.b.get_insert_block().expect(BUILDER);
        let header = self.ctx.append_basic_block(self.func, "loop");
        let inner = self.ctx.append_basic_block(self.func, "body");
        let exit = self.ctx.append_basic_block(self.func, "exit");
        self.b.build_unconditional_branch(header).expect(BUILDER);
        self.b.position_at_end(header);
        // The counter has the bounds' width (i64, or i32 where the K loop
        // keeps a register free).
        let phi = self.b.build_phi(lo.get_type(), "i").expect(BUILDER);
        phi.add_incoming(&[(&lo, pre)]);
        let i = phi.as_basic_value().into_int_value();
        let go = self
            .b
            .build_int_compare(IntPredicate::SLT, i, hi, "")
            .expect(BUILDER);
        self.b
            .build_conditional_branch(go, inner, exit)
            .expect(BUILDER);
        self.b.position_at_end(inner);
        (OpenLoop { phi, header, exit }, i)
    }

    /// Closes a loop from `loop_open`: `i + 1`, back to the header, and
    /// positions the builder after the loop.
    pub fn loop_close(&self, l: OpenLoop<'ctx>, i: IntValue<'ctx>) {
        self.loop_close_branch(l, i);
    }

    /// `loop_close`, with LLVM told never to unroll the loop: the GEMM's K
    /// loop, which unrolled whole (a short K) holds several steps'
    /// prefetches at once and overruns the kernel's register budget.
    pub fn loop_close_rolled(&self, l: OpenLoop<'ctx>, i: IntValue<'ctx>) {
        let br = self.loop_close_branch(l, i);
        use inkwell::llvm_sys::core::{
            LLVMGetMDKindIDInContext, LLVMMDNodeInContext2, LLVMMDStringInContext2,
            LLVMMetadataAsValue, LLVMSetMetadata,
        };
        use inkwell::llvm_sys::debuginfo::{LLVMMetadataReplaceAllUsesWith, LLVMTemporaryMDNode};
        let (kind, hint) = ("llvm.loop", "llvm.loop.unroll.disable");
        // SAFETY: plain LLVM-C calls on this context's live values. Loop
        // metadata must refer to itself: a temporary first operand,
        // replaced by the node it is in.
        unsafe {
            let c = self.ctx.as_ctx_ref();
            let tmp = LLVMTemporaryMDNode(c, std::ptr::null_mut(), 0);
            let mut hint = [LLVMMDStringInContext2(c, hint.as_ptr().cast(), hint.len())];
            let mut ops = [tmp, LLVMMDNodeInContext2(c, hint.as_mut_ptr(), 1)];
            let node = LLVMMDNodeInContext2(c, ops.as_mut_ptr(), 2);
            LLVMMetadataReplaceAllUsesWith(tmp, node);
            let id = LLVMGetMDKindIDInContext(c, kind.as_ptr().cast(), kind.len() as u32);
            LLVMSetMetadata(br.as_value_ref(), id, LLVMMetadataAsValue(c, node));
        }
    }

    /// Closes loop `l`; returns its back edge.
    fn loop_close_branch(&self, l: OpenLoop<'ctx>, i: IntValue<'ctx>) -> InstructionValue<'ctx> {
        let next = self.add(i, i.get_type().const_int(1, false));
        let latch = self.b.get_insert_block().expect(BUILDER);
        let br = self.b.build_unconditional_branch(l.header).expect(BUILDER);
        l.phi.add_incoming(&[(&next, latch)]);
        self.b.position_at_end(l.exit);
        br
    }

    /// `if cond { then } else { else_ }`.
    pub fn if_else(
        &mut self,
        cond: IntValue<'ctx>,
        then: impl FnOnce(&mut Self),
        else_: impl FnOnce(&mut Self),
    ) {
        let (t, f, join) = (
            self.ctx.append_basic_block(self.func, "then"),
            self.ctx.append_basic_block(self.func, "else"),
            self.ctx.append_basic_block(self.func, "join"),
        );
        self.b.build_conditional_branch(cond, t, f).expect(BUILDER);
        self.b.position_at_end(t);
        then(self);
        self.b.build_unconditional_branch(join).expect(BUILDER);
        self.b.position_at_end(f);
        else_(self);
        self.b.build_unconditional_branch(join).expect(BUILDER);
        self.b.position_at_end(join);
    }

    /// `for i in lo..hi` with constant bounds; nothing when empty.
    pub fn for_const(&mut self, lo: u64, hi: u64, body: impl FnMut(&mut Self, IntValue<'ctx>)) {
        if lo < hi {
            let (l, h) = (self.int(lo), self.int(hi));
            self.for_range(l, h, body);
        }
    }
}
