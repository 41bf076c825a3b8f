//! AVX512-BF16's dot product of bf16 pairs (`vdpbf16ps`), the bf16
//! kernels' product where the CPU has no AMX (Zen 4 and 5, Cooper Lake):
//! x86-only, apart from the target-independent vectors (`vector.rs`).

use super::emit::Emitter;
use inkwell::intrinsics::Intrinsic;
use inkwell::types::VectorType;
use inkwell::values::VectorValue;

const BUILDER: &str = "the emitter keeps an insertion point";

impl<'ctx> Emitter<'_, 'ctx> {
    /// `acc + a·b` over bf16 pairs (`vdpbf16ps`, AVX512-BF16): lane `i`
    /// adds `a₂ᵢ·b₂ᵢ + a₂ᵢ₊₁·b₂ᵢ₊₁`, `a` and `b` being 16 words of two bf16
    /// each (`vpack_bf16_pairs`) held in f32 vectors. The products are
    /// exact in f32; the two adds round as two FMAs would (denormals
    /// flushed).
    pub fn vdp_bf16(
        &self,
        acc: VectorValue<'ctx>,
        a: VectorValue<'ctx>,
        b: VectorValue<'ctx>,
    ) -> VectorValue<'ctx> {
        let f = Intrinsic::find("llvm.x86.avx512bf16.dpbf16ps.512")
            .and_then(|i| i.get_declaration(self.module, &[]))
            .expect("LLVM knows its intrinsics");
        // The pair operands as the declaration types them (`<32 x bfloat>`).
        let pairs = inkwell::types::BasicTypeEnum::try_from(f.get_type().get_param_types()[1])
            .expect("a vector type");
        let cast = |v: VectorValue<'ctx>| self.b.build_bit_cast(v, pairs, "").expect(BUILDER);
        self.b
            .build_call(f, &[acc.into(), cast(a).into(), cast(b).into()], "")
            .expect(BUILDER)
            .try_as_basic_value()
            .basic()
            .expect("dpbf16ps returns a value")
            .into_vector_value()
    }

    /// `vpack_bf16_pairs` in two instructions (`vcvtne2ps2bf16`, then a
    /// word interleave), for the pair kernels' CPUs: the same words, but
    /// for denormal inputs, flushed to zero (as `vdpbf16ps` would read
    /// them anyway).
    pub fn vcvt_bf16_pairs(
        &self,
        lo: VectorValue<'ctx>,
        hi: VectorValue<'ctx>,
    ) -> VectorValue<'ctx> {
        let halves = self.vcvt_bf16_halves(lo, hi);
        let i32t = self.ctx.i32_type();
        let idx: Vec<_> = (0..32u64)
            .map(|k| i32t.const_int(k / 2 + 16 * (k % 2), false))
            .collect();
        let words = self
            .b
            .build_shuffle_vector(halves, halves, VectorType::const_vector(&idx), "")
            .expect(BUILDER);
        self.b
            .build_bit_cast(words, lo.get_type(), "")
            .expect(BUILDER)
            .into_vector_value()
    }

    /// `lo` and `hi` rounded to bf16 (`vcvtne2ps2bf16`, denormals flushed)
    /// as 32 bf16 in order, `lo`'s first: word `i` pairs elements `2i` and
    /// `2i + 1` of the 32 values (a row of 32 consecutive bf16 as loaded).
    pub fn vcvt_bf16_halves(
        &self,
        lo: VectorValue<'ctx>,
        hi: VectorValue<'ctx>,
    ) -> VectorValue<'ctx> {
        self.call_intrinsic(
            "llvm.x86.avx512bf16.cvtne2ps2bf16.512",
            &[],
            &[hi.into(), lo.into()],
        )
        .expect("cvtne2ps2bf16 returns a value")
        .into_vector_value()
    }
}
