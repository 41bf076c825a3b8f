//! e^x where there is no libm: NVPTX has no `expf` to call (`llvm.exp`
//! fails there with "no libcall available for fexp"), so sigmoid and
//! softmax on the GPU compute it from the hardware's 2^x.
//!
//! Cody-Waite reduction: `x = j·ln2 + r` with `j = rint(x·log2 e)` and
//! `|r| ≤ ln2/2`, `r` computed exactly enough from a two-part ln2; then
//! `e^x = 2^(r·log2 e) · 2^j`, the power of two built from its exponent
//! bits in two halves so that `j` down to -150 (a subnormal result) and
//! up to 128 (overflow to infinity) never needs an exponent out of range.
//! On the host's exact 2^x the result is within 0.87 ulp of e^x for every
//! f32 (checked over all 2^32 inputs once; the test below sweeps a grid);
//! the GPU's `ex2.approx.f32` adds its own error, an approximation of a
//! couple of ulp, on an argument kept in `[-1/2, 1/2]`.
//! A direct `ex2.approx(x·log2 e)` would also lose `|x|·2^-24` of relative
//! accuracy to the product's rounding.

use super::emit::Emitter;
use inkwell::intrinsics::Intrinsic;
use inkwell::values::FloatValue;
use inkwell::FloatPredicate;

/// How `Emitter::exp` computes e^x.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exp {
    /// `llvm.exp`: libm's `expf` on the host.
    Libm,
    /// Reduced as above onto the 2^x intrinsic named: the GPU's
    /// `llvm.nvvm.ex2.approx.f`, or `llvm.exp2` in the GPU kernels' host
    /// emulation, which thereby runs the same reduction.
    Reduced(&'static str),
}

/// Above this e^x is infinite in f32, below the other 0 (e^-104 is under
/// half the smallest subnormal); clamping keeps `j` in range.
const HI: f64 = 89.0;
const LO: f64 = -104.0;
const LOG2E: f64 = std::f64::consts::LOG2_E;
/// ln 2 in two parts: the first has 15 significant bits, so `j · LN2_HI`
/// is exact for any `|j| ≤ 256`.
const LN2_HI: f64 = 0.693_145_751_953_125;
const LN2_LO: f64 = 1.428_606_765_330_187e-6;

impl<'ctx> Emitter<'_, 'ctx> {
    /// e^a, reduced onto the 2^x intrinsic `exp2`.
    pub(super) fn exp_reduced(&self, a: FloatValue<'ctx>, exp2: &str) -> FloatValue<'ctx> {
        let b = &self.b;
        let cmp = |p, x, y| b.build_float_compare(p, x, y, "").expect("builder");
        let select = |c, x: FloatValue<'ctx>, y: FloatValue<'ctx>| {
            b.build_select(c, x, y, "")
                .expect("builder")
                .into_float_value()
        };
        // NaN clamps to HI here and is put back at the end.
        let x = select(cmp(FloatPredicate::OLE, a, self.f32(HI)), a, self.f32(HI));
        let x = select(cmp(FloatPredicate::OGE, x, self.f32(LO)), x, self.f32(LO));
        let j = self.float_intrinsic("llvm.rint", self.fmul(x, self.f32(LOG2E)));
        let r = self.fmuladd(j, self.f32(-LN2_HI), x);
        let r = self.fmuladd(j, self.f32(-LN2_LO), r);
        let p = self.float_intrinsic(exp2, self.fmul(r, self.f32(LOG2E)));
        let i32t = self.ctx.i32_type();
        let ji = b.build_float_to_signed_int(j, i32t, "").expect("builder");
        let half = b
            .build_right_shift(ji, i32t.const_int(1, false), true, "")
            .expect("builder");
        let rest = b.build_int_sub(ji, half, "").expect("builder");
        // 2^k for k in [-126, 127], from its exponent bits.
        let pow2 = |k| {
            let biased = b
                .build_int_add(k, i32t.const_int(127, false), "")
                .expect("builder");
            let bits = b
                .build_left_shift(biased, i32t.const_int(23, false), "")
                .expect("builder");
            b.build_bit_cast(bits, self.f32t, "")
                .expect("builder")
                .into_float_value()
        };
        let y = self.fmul(self.fmul(p, pow2(half)), pow2(rest));
        select(cmp(FloatPredicate::UNO, a, a), a, y)
    }

    /// The one-argument float intrinsic `name`, overloaded on f32 where
    /// it is overloaded (`llvm.exp2`; `llvm.nvvm.ex2.approx.f` is not).
    fn float_intrinsic(&self, name: &str, a: FloatValue<'ctx>) -> FloatValue<'ctx> {
        let overloaded = Intrinsic::find(name).is_some_and(|i| i.is_overloaded());
        let types = if overloaded {
            vec![self.f32t.into()]
        } else {
            vec![]
        };
        self.call_intrinsic(name, &types, &[a.into()])
            .expect("intrinsic returns a value")
            .into_float_value()
    }
}

#[cfg(test)]
mod tests {
    use super::Exp;
    use crate::backend::llvm::emit::Emitter;
    use inkwell::context::Context;
    use inkwell::OptimizationLevel;

    /// The reduction on the host's exact 2^x against f64's e^x, over the
    /// whole f32 range and its edges: within 2 ulp where the result is
    /// normal, within the subnormals' spacing below, and exactly
    /// infinite, zero or NaN where expf is.
    #[test]
    fn reduced_exp_is_within_two_ulp_of_e_to_the_x() {
        let ctx = Context::create();
        let module = ctx.create_module("exp");
        let f32t = ctx.f32_type();
        let f = module.add_function("exp", f32t.fn_type(&[f32t.into()], false), None);
        let mut e = Emitter::new(&ctx, &module, f);
        e.exp = Exp::Reduced("llvm.exp2");
        let x = f.get_nth_param(0).expect("param").into_float_value();
        let y = e.exp(x);
        e.b.build_return(Some(&y)).expect("ret");
        module.verify().expect("valid");
        let engine = module
            .create_jit_execution_engine(OptimizationLevel::Default)
            .expect("jit");
        // SAFETY: generated as `float (float)`.
        let exp = unsafe { engine.get_function::<unsafe extern "C" fn(f32) -> f32>("exp") }
            .expect("function");
        let mut xs: Vec<f32> = (-220_000..=190_000).map(|i| i as f32 * 5e-4).collect();
        xs.extend([
            0.0, -0.0, 1e-30, -1e-30, 88.72, 88.7228, 88.73, 89.0, 1000.0, -87.33, -103.0, -103.97,
            -104.0, -1000.0,
        ]);
        let mut worst = 0.0f64;
        for &v in &xs {
            // SAFETY: a pure function of its argument.
            let got = unsafe { exp.call(v) } as f64;
            let want = (v as f64).exp();
            if want > f32::MAX as f64 {
                assert_eq!(got, f64::INFINITY, "exp({v})");
            } else if want >= f32::MIN_POSITIVE as f64 {
                let ulp = (want as f32).abs() as f64 * f32::EPSILON as f64;
                let err = (got - want).abs() / ulp;
                worst = worst.max(err);
                assert!(err <= 2.0, "exp({v}) = {got}, want {want}: {err} ulp");
            } else {
                let step = f32::from_bits(1) as f64;
                assert!((got - want).abs() <= step, "exp({v}) = {got}, want {want}");
            }
        }
        assert!(worst > 0.0, "the sweep compared nothing");
        for (v, want) in [
            (f32::INFINITY, f32::INFINITY),
            (f32::NEG_INFINITY, 0.0),
            (f32::MAX, f32::INFINITY),
            (f32::MIN, 0.0),
        ] {
            // SAFETY: as above.
            assert_eq!(unsafe { exp.call(v) }, want, "exp({v})");
        }
        // SAFETY: as above.
        assert!(unsafe { exp.call(f32::NAN) }.is_nan());
    }
}
