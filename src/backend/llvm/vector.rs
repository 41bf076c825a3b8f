//! Explicit f32 vectors for register-tiled kernels, `Emitter::lanes` wide
//! (4 for NEON, 8 for AVX2, 16 for AVX-512), in target-independent IR
//! (no x86 intrinsics: the AArch64 build shares them): loads, stores (plain and masked), splats,
//! FMA, transposes and the activations, with the same semantics as the
//! scalar forms in `emit.rs` (NaN handling included).

use super::emit::Emitter;
use crate::ir::op::Activation;
use inkwell::types::VectorType;
use inkwell::values::{BasicValue, IntValue, PointerValue, VectorValue};
use inkwell::{FloatPredicate, IntPredicate};

const BUILDER: &str = "the emitter keeps an insertion point";

impl<'ctx> Emitter<'_, 'ctx> {
    pub fn vty(&self) -> VectorType<'ctx> {
        self.f32t.vec_type(self.lanes as u32)
    }

    /// `lanes` floats from `base[idx..]` (no alignment assumed).
    pub fn vload(&self, base: PointerValue<'ctx>, idx: IntValue<'ctx>) -> VectorValue<'ctx> {
        let p = self.at(base, idx);
        let v = self.b.build_load(self.vty(), p, "").expect(BUILDER);
        v.as_instruction_value()
            .and_then(|i| i.set_alignment(4).ok())
            .expect("a load takes an alignment");
        v.into_vector_value()
    }

    pub fn vstore(&self, base: PointerValue<'ctx>, idx: IntValue<'ctx>, v: VectorValue<'ctx>) {
        let p = self.at(base, idx);
        let s = self.b.build_store(p, v).expect(BUILDER);
        s.set_alignment(4).expect("a store takes an alignment");
    }

    /// Each lane rounded to the nearest bfloat16 (ties to even), as an f32:
    /// `(bits + 0x7fff + bit16) & 0xffff0000`, what `precision::bf16_bits`
    /// computes (for finite values).
    pub fn vround_bf16(&self, v: VectorValue<'ctx>) -> VectorValue<'ctx> {
        let lanes = v.get_type().get_size();
        let sixteen = self.ctx.i32_type().const_int(16, false);
        let sixteen = VectorType::const_vector(&vec![sixteen; lanes as usize]);
        // (LLVM folds the shift pair of `vbf16_bits` into one mask.)
        let r = self
            .b
            .build_left_shift(self.vbf16_bits(v), sixteen, "")
            .expect(BUILDER);
        self.b
            .build_bit_cast(r, v.get_type(), "")
            .expect(BUILDER)
            .into_vector_value()
    }

    /// Each lane of `v` (any width) rounded to bf16 as `vround_bf16`, in
    /// the low 16 bits of an i32 lane.
    pub fn vbf16_bits(&self, v: VectorValue<'ctx>) -> VectorValue<'ctx> {
        let lanes = v.get_type().get_size();
        let k = |x: u64| {
            let c = self.ctx.i32_type().const_int(x, false);
            VectorType::const_vector(&vec![c; lanes as usize])
        };
        let bits = self
            .b
            .build_bit_cast(v, self.ctx.i32_type().vec_type(lanes), "")
            .expect(BUILDER)
            .into_vector_value();
        let r = self.round_bits_bf16(bits, k(16), k(1), k(0x7fff), k(0xffff_0000));
        self.b
            .build_right_shift(r, k(16), false, "")
            .expect(BUILDER)
    }

    /// The bf16 of `lo` and `hi` lane by lane, as one 32-bit word per lane
    /// (`lo` in the low half, the reduction's even index in `vdpbf16ps`),
    /// in an f32 vector of the same width.
    pub fn vpack_bf16_pairs(
        &self,
        lo: VectorValue<'ctx>,
        hi: VectorValue<'ctx>,
    ) -> VectorValue<'ctx> {
        let lanes = lo.get_type().get_size();
        let sixteen = self.ctx.i32_type().const_int(16, false);
        let sixteen = VectorType::const_vector(&vec![sixteen; lanes as usize]);
        let high = self
            .b
            .build_left_shift(self.vbf16_bits(hi), sixteen, "")
            .expect(BUILDER);
        let word = self
            .b
            .build_or(self.vbf16_bits(lo), high, "")
            .expect(BUILDER);
        self.b
            .build_bit_cast(word, self.ctx.f32_type().vec_type(lanes), "")
            .expect(BUILDER)
            .into_vector_value()
    }

    /// The two bf16 of each word of `words` (`vpack_bf16_pairs`), widened
    /// to f32 (exact): the low halves, then the high ones.
    pub fn vsplit_bf16_pairs(
        &self,
        words: VectorValue<'ctx>,
    ) -> (VectorValue<'ctx>, VectorValue<'ctx>) {
        let lanes = words.get_type().get_size();
        let it = self.ctx.i32_type();
        let k = |x: u64| VectorType::const_vector(&vec![it.const_int(x, false); lanes as usize]);
        let bits = self
            .b
            .build_bit_cast(words, it.vec_type(lanes), "")
            .expect(BUILDER)
            .into_vector_value();
        let lo = self.b.build_left_shift(bits, k(16), "").expect(BUILDER);
        let hi = self.b.build_and(bits, k(0xffff_0000), "").expect(BUILDER);
        let f = |v| {
            self.b
                .build_bit_cast(v, words.get_type(), "")
                .expect(BUILDER)
                .into_vector_value()
        };
        (f(lo), f(hi))
    }

    /// `lanes` bf16 values from `base[idx..]` (`base` counted in bf16
    /// elements) widened to f32 (exact: the low 16 bits zero).
    pub fn vload_bf16(&self, base: PointerValue<'ctx>, idx: IntValue<'ctx>) -> VectorValue<'ctx> {
        let (i16t, i32t) = (self.ctx.i16_type(), self.ctx.i32_type());
        let p = unsafe { self.b.build_in_bounds_gep(i16t, base, &[idx], "") }.expect(BUILDER);
        let v = self
            .b
            .build_load(i16t.vec_type(self.lanes as u32), p, "")
            .expect(BUILDER);
        v.as_instruction_value()
            .and_then(|i| i.set_alignment(2).ok())
            .expect("a load takes an alignment");
        let it = i32t.vec_type(self.lanes as u32);
        let wide = self
            .b
            .build_int_z_extend(v.into_vector_value(), it, "")
            .expect(BUILDER);
        let sixteen =
            VectorType::const_vector(&vec![i32t.const_int(16, false); self.lanes as usize]);
        let bits = self.b.build_left_shift(wide, sixteen, "").expect(BUILDER);
        self.b
            .build_bit_cast(bits, self.vty(), "")
            .expect(BUILDER)
            .into_vector_value()
    }

    /// The rounding of `vround_bf16` on the bits, for vectors or scalars.
    pub fn round_bits_bf16<T: inkwell::values::IntMathValue<'ctx> + Copy>(
        &self,
        bits: T,
        sixteen: T,
        one: T,
        half: T,
        high: T,
    ) -> T {
        let b = &self.b;
        let odd = b.build_and(
            b.build_right_shift(bits, sixteen, false, "")
                .expect(BUILDER),
            one,
            "",
        );
        let bias = b
            .build_int_add(half, odd.expect(BUILDER), "")
            .expect(BUILDER);
        let sum = b.build_int_add(bits, bias, "").expect(BUILDER);
        b.build_and(sum, high, "").expect(BUILDER)
    }

    /// `base[idx + lane]` where `mask` is set, `0.0` elsewhere; masked-off
    /// lanes are not read.
    pub fn vload_masked(
        &self,
        base: PointerValue<'ctx>,
        idx: IntValue<'ctx>,
        mask: VectorValue<'ctx>,
    ) -> VectorValue<'ctx> {
        let args = [
            self.at_unchecked(base, idx).into(),
            self.ctx.i32_type().const_int(4, false).into(),
            mask.into(),
            self.vsplat(self.f32(0.0)).into(),
        ];
        self.call_intrinsic(
            "llvm.masked.load",
            &[self.vty().into(), self.ptr.into()],
            &args,
        )
        .expect("masked load returns a value")
        .into_vector_value()
    }

    /// Stores the lanes of `v` where `mask` is set.
    pub fn vstore_masked(
        &self,
        base: PointerValue<'ctx>,
        idx: IntValue<'ctx>,
        v: VectorValue<'ctx>,
        mask: VectorValue<'ctx>,
    ) {
        let args = [
            v.into(),
            self.at_unchecked(base, idx).into(),
            self.ctx.i32_type().const_int(4, false).into(),
            mask.into(),
        ];
        self.call_intrinsic(
            "llvm.masked.store",
            &[self.vty().into(), self.ptr.into()],
            &args,
        );
    }

    /// Address of element `idx` of `base` with no in-bounds promise: the
    /// first lane of a masked access may lie before the buffer.
    pub fn at_unchecked(
        &self,
        base: PointerValue<'ctx>,
        idx: IntValue<'ctx>,
    ) -> PointerValue<'ctx> {
        // SAFETY (LLVM semantics): a plain GEP is defined for any index.
        unsafe {
            self.b
                .build_gep(self.f32t, base, &[idx], "")
                .expect(BUILDER)
        }
    }

    /// Every lane `x`.
    pub fn vsplat(&self, x: inkwell::values::FloatValue<'ctx>) -> VectorValue<'ctx> {
        let undef = self.vty().get_undef();
        let zero = self.ctx.i32_type().const_zero();
        let one = self
            .b
            .build_insert_element(undef, x, zero, "")
            .expect(BUILDER);
        let idx = self.ctx.i32_type().vec_type(self.lanes as u32).const_zero();
        self.b
            .build_shuffle_vector(one, undef, idx, "")
            .expect(BUILDER)
    }

    pub fn vzero(&self) -> VectorValue<'ctx> {
        self.vty().const_zero()
    }

    /// `a * b + c`, one FMA per lane.
    pub fn vfma(
        &self,
        a: VectorValue<'ctx>,
        b: VectorValue<'ctx>,
        c: VectorValue<'ctx>,
    ) -> VectorValue<'ctx> {
        self.call_intrinsic(
            "llvm.fmuladd",
            &[self.vty().into()],
            &[a.into(), b.into(), c.into()],
        )
        .expect("fmuladd returns a value")
        .into_vector_value()
    }

    pub fn vadd(&self, a: VectorValue<'ctx>, b: VectorValue<'ctx>) -> VectorValue<'ctx> {
        self.b.build_float_add(a, b, "").expect(BUILDER)
    }

    fn vselect_cmp(
        &self,
        p: FloatPredicate,
        a: VectorValue<'ctx>,
        b: VectorValue<'ctx>,
        then: VectorValue<'ctx>,
        else_: VectorValue<'ctx>,
    ) -> VectorValue<'ctx> {
        let c = self.b.build_float_compare(p, a, b, "").expect(BUILDER);
        self.b
            .build_select(c, then, else_, "")
            .expect(BUILDER)
            .into_vector_value()
    }

    /// The activation lane by lane, as `Emitter::act` computes it.
    pub fn vact(&self, v: VectorValue<'ctx>, a: Activation) -> VectorValue<'ctx> {
        let zero = self.vzero();
        let relu = |v| self.vselect_cmp(FloatPredicate::UGE, v, zero, v, zero);
        match a {
            Activation::Relu => relu(v),
            Activation::Relu6 => {
                let six = self.vsplat(self.f32(6.0));
                let r = relu(v);
                self.vselect_cmp(FloatPredicate::ULE, r, six, r, six)
            }
            Activation::LeakyRelu(s) => {
                let scaled = self
                    .b
                    .build_float_mul(v, self.vsplat(self.f32(s as f64)), "")
                    .expect(BUILDER);
                self.vselect_cmp(FloatPredicate::OLT, v, zero, scaled, v)
            }
            Activation::Sigmoid => {
                let neg = self.b.build_float_neg(v, "").expect(BUILDER);
                let e = self
                    .call_intrinsic("llvm.exp", &[self.vty().into()], &[neg.into()])
                    .expect("exp returns a value")
                    .into_vector_value();
                let one = self.vsplat(self.f32(1.0));
                let d = self.vadd(one, e);
                self.b.build_float_div(one, d, "").expect(BUILDER)
            }
        }
    }

    /// `x` in every lane of an i64 vector.
    pub fn isplat(&self, x: IntValue<'ctx>) -> VectorValue<'ctx> {
        let t = self.i64t.vec_type(self.lanes as u32);
        let undef = t.get_undef();
        let one = self
            .b
            .build_insert_element(undef, x, self.ctx.i32_type().const_zero(), "")
            .expect(BUILDER);
        let zeros = self.ctx.i32_type().vec_type(self.lanes as u32).const_zero();
        self.b
            .build_shuffle_vector(one, undef, zeros, "")
            .expect(BUILDER)
    }

    /// Lanes `base + i` for `i` in `first..first + lanes`, as i64.
    pub fn vindices(&self, base: IntValue<'ctx>, first: u64) -> VectorValue<'ctx> {
        let steps: Vec<_> = (0..self.lanes)
            .map(|i| self.i64t.const_int(first + i, false))
            .collect();
        self.b
            .build_int_add(self.isplat(base), VectorType::const_vector(&steps), "")
            .expect(BUILDER)
    }

    /// Lanes of `idx` in `lo..hi` (signed), as a mask.
    pub fn vin_range(
        &self,
        idx: VectorValue<'ctx>,
        lo: IntValue<'ctx>,
        hi: IntValue<'ctx>,
    ) -> VectorValue<'ctx> {
        let ge = self
            .b
            .build_int_compare(IntPredicate::SGE, idx, self.isplat(lo), "")
            .expect(BUILDER);
        let lt = self
            .b
            .build_int_compare(IntPredicate::SLT, idx, self.isplat(hi), "")
            .expect(BUILDER);
        self.b.build_and(ge, lt, "").expect(BUILDER)
    }

    /// The transpose of a `lanes × lanes` block given as its row vectors:
    /// log2(lanes) butterfly stages, each swapping one bit of the row index
    /// with the same bit of the lane index (24 two-source shuffles for 8
    /// lanes, 64 for 16).
    pub fn vtranspose(&self, rows: &[VectorValue<'ctx>]) -> Vec<VectorValue<'ctx>> {
        let n = self.lanes as usize;
        assert!(n.is_power_of_two(), "a transpose of {n} lanes");
        assert_eq!(rows.len(), n, "a transpose takes {n} rows");
        let i32t = self.ctx.i32_type();
        let mut m = rows.to_vec();
        for bit in (0..n.trailing_zeros()).map(|b| 1usize << b) {
            let mask = |pick: &dyn Fn(usize) -> usize| {
                let idx: Vec<_> = (0..n)
                    .map(|k| i32t.const_int(pick(k) as u64, false))
                    .collect();
                VectorType::const_vector(&idx)
            };
            let low = mask(&|k| if k & bit == 0 { k } else { n + (k ^ bit) });
            let high = mask(&|k| if k & bit == 0 { k | bit } else { n + k });
            for i in (0..n).filter(|i| i & bit == 0) {
                let (a, b) = (m[i], m[i | bit]);
                let shuffle = |mk| self.b.build_shuffle_vector(a, b, mk, "").expect(BUILDER);
                m[i] = shuffle(low);
                m[i | bit] = shuffle(high);
            }
        }
        m
    }

    /// The lanes of `a` and `b` alternated (`a0 b0 a1 b1 …`): the first
    /// `lanes` of them, then the rest.
    pub fn vinterleave(
        &self,
        a: VectorValue<'ctx>,
        b: VectorValue<'ctx>,
    ) -> [VectorValue<'ctx>; 2] {
        let n = self.lanes;
        let i32t = self.ctx.i32_type();
        let half = |h: u64| {
            let idx: Vec<_> = (h * n..(h + 1) * n)
                .map(|u| i32t.const_int(if u % 2 == 0 { u / 2 } else { n + u / 2 }, false))
                .collect();
            let mask = VectorType::const_vector(&idx);
            self.b.build_shuffle_vector(a, b, mask, "").expect(BUILDER)
        };
        [half(0), half(1)]
    }

    /// A stack slot for a vector accumulator (promoted to a register).
    pub fn vslot(&self) -> PointerValue<'ctx> {
        self.entry_alloca(self.vty().into())
    }

    pub fn vget(&self, slot: PointerValue<'ctx>) -> VectorValue<'ctx> {
        self.b
            .build_load(self.vty(), slot, "")
            .expect(BUILDER)
            .into_vector_value()
    }

    pub fn vset(&self, slot: PointerValue<'ctx>, v: VectorValue<'ctx>) {
        self.b.build_store(slot, v).expect(BUILDER);
    }

    pub fn vsub(&self, a: VectorValue<'ctx>, b: VectorValue<'ctx>) -> VectorValue<'ctx> {
        self.b.build_float_sub(a, b, "").expect(BUILDER)
    }

    pub fn vmul(&self, a: VectorValue<'ctx>, b: VectorValue<'ctx>) -> VectorValue<'ctx> {
        self.b.build_float_mul(a, b, "").expect(BUILDER)
    }

    /// `stride` vectors: lane `i` of vector `k` is `base[idx + i·stride +
    /// k]`, from one load of `stride·lanes` floats split by shuffles (the
    /// pattern x86's interleaved-access lowering turns into permutes).
    pub fn vload_interleaved(
        &self,
        base: PointerValue<'ctx>,
        idx: IntValue<'ctx>,
        stride: u64,
    ) -> Vec<VectorValue<'ctx>> {
        let wide_ty = self.f32t.vec_type((stride * self.lanes) as u32);
        let p = self.at(base, idx);
        let wide = self.b.build_load(wide_ty, p, "").expect(BUILDER);
        wide.as_instruction_value()
            .and_then(|i| i.set_alignment(4).ok())
            .expect("a load takes an alignment");
        let wide = wide.into_vector_value();
        let i32t = self.ctx.i32_type();
        (0..stride)
            .map(|k| {
                let idx: Vec<_> = (0..self.lanes)
                    .map(|i| i32t.const_int(i * stride + k, false))
                    .collect();
                let mask = VectorType::const_vector(&idx);
                self.b
                    .build_shuffle_vector(wide, wide_ty.get_undef(), mask, "")
                    .expect(BUILDER)
            })
            .collect()
    }

    /// Lanes `2i + k` of the `2·lanes` values `a` then `b`: a stride-2
    /// read from two consecutive loads (`vpermt2ps` on x86).
    pub fn vevery_other(
        &self,
        a: VectorValue<'ctx>,
        b: VectorValue<'ctx>,
        k: u64,
    ) -> VectorValue<'ctx> {
        let i32t = self.ctx.i32_type();
        let idx: Vec<_> = (0..self.lanes)
            .map(|i| i32t.const_int(2 * i + k, false))
            .collect();
        self.b
            .build_shuffle_vector(a, b, VectorType::const_vector(&idx), "")
            .expect(BUILDER)
    }

    /// Element `idx` of an array of vectors (a stack scratch).
    pub fn vat(&self, array: PointerValue<'ctx>, idx: IntValue<'ctx>) -> PointerValue<'ctx> {
        // SAFETY (LLVM semantics): callers index within the array.
        unsafe {
            self.b
                .build_in_bounds_gep(self.vty(), array, &[idx], "")
                .expect(BUILDER)
        }
    }

    /// The first `rows·width` lanes of `v` as `rows` rows of `width`
    /// floats, row `i` stored at `base[idx + i·pitch..]`.
    pub fn vstore_rows(
        &self,
        base: PointerValue<'ctx>,
        idx: IntValue<'ctx>,
        (rows, width, pitch): (u64, u64, u64),
        v: VectorValue<'ctx>,
    ) {
        let i32t = self.ctx.i32_type();
        for r in 0..rows {
            let pick: Vec<_> = (0..width)
                .map(|c| i32t.const_int(r * width + c, false))
                .collect();
            let part = self
                .b
                .build_shuffle_vector(v, v, VectorType::const_vector(&pick), "")
                .expect(BUILDER);
            let p = self.at(base, self.add(idx, self.int(r * pitch)));
            let s = self.b.build_store(p, part).expect(BUILDER);
            s.set_alignment(4).expect("a store takes an alignment");
        }
    }

    /// The inverse of `vstore_rows`: `rows` rows of `width` floats from
    /// `base[idx + i·pitch..]` in the first lanes, zeros after.
    pub fn vload_rows(
        &self,
        base: PointerValue<'ctx>,
        idx: IntValue<'ctx>,
        (rows, width, pitch): (u64, u64, u64),
    ) -> VectorValue<'ctx> {
        let i32t = self.ctx.i32_type();
        let part_ty = self.f32t.vec_type(width as u32);
        let parts: Vec<VectorValue<'ctx>> = (0..rows)
            .map(|r| {
                let p = self.at(base, self.add(idx, self.int(r * pitch)));
                let v = self.b.build_load(part_ty, p, "").expect(BUILDER);
                v.as_instruction_value()
                    .and_then(|i| i.set_alignment(4).ok())
                    .expect("a load takes an alignment");
                v.into_vector_value()
            })
            .collect();
        // Widen each row to `lanes` (its floats first), then merge rows.
        let widen: Vec<_> = (0..self.lanes)
            .map(|c| i32t.const_int(c.min(width), false))
            .collect();
        let zero = part_ty.const_zero();
        let mut acc = self.vzero();
        for (r, part) in parts.into_iter().enumerate() {
            let wide = self
                .b
                .build_shuffle_vector(part, zero, VectorType::const_vector(&widen), "")
                .expect(BUILDER);
            let lo = r as u64 * width;
            let merge: Vec<_> = (0..self.lanes)
                .map(|c| {
                    if c >= lo && c < lo + width {
                        i32t.const_int(self.lanes + c - lo, false)
                    } else {
                        i32t.const_int(c, false)
                    }
                })
                .collect();
            acc = self
                .b
                .build_shuffle_vector(acc, wide, VectorType::const_vector(&merge), "")
                .expect(BUILDER);
        }
        acc
    }
}
