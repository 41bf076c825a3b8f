//! LLVM's error diagnostics as `LlvmError`s.
//!
//! Without a handler, an error LLVM diagnoses while optimizing or emitting
//! code (an intrinsic the target cannot lower, such as `llvm.exp` on
//! NVPTX: "no libcall available for fexp") is printed and the process
//! exits from inside LLVM, from whichever thread compiles, past resnetc's
//! own error report. A `Diagnostics` collects them instead, so the build
//! returns them as the internal error they are ("LLVM: ...", with the
//! hint to report it).

use super::LlvmError;
use inkwell::context::AsContextRef;
use inkwell::llvm_sys::core::{
    LLVMContextGetDiagnosticContext, LLVMContextGetDiagnosticHandler,
    LLVMContextSetDiagnosticHandler, LLVMDisposeMessage, LLVMGetDiagInfoDescription,
    LLVMGetDiagInfoSeverity,
};
use inkwell::llvm_sys::prelude::{LLVMContextRef, LLVMDiagnosticInfoRef};
use inkwell::llvm_sys::{LLVMDiagnosticHandler, LLVMDiagnosticSeverity};
use std::cell::RefCell;
use std::ffi::{c_void, CStr};
use std::marker::PhantomData;

/// Collects the error diagnostics of one LLVM context while it lives,
/// then puts back the handler it replaced.
pub struct Diagnostics<'ctx> {
    ctx: LLVMContextRef,
    previous: (LLVMDiagnosticHandler, *mut c_void),
    // Boxed: LLVM holds its address.
    errors: Box<RefCell<Vec<String>>>,
    _ctx: PhantomData<&'ctx ()>,
}

extern "C" fn collect(info: LLVMDiagnosticInfoRef, errors: *mut c_void) {
    // SAFETY: `info` is the diagnostic LLVM passes; `errors` is the boxed
    // vector `Diagnostics::attach` registered, alive until it is dropped
    // (which unregisters it), and only used by the context's thread.
    unsafe {
        let severity = LLVMGetDiagInfoSeverity(info);
        if !matches!(
            severity,
            LLVMDiagnosticSeverity::LLVMDSError | LLVMDiagnosticSeverity::LLVMDSWarning
        ) {
            return;
        }
        let text = LLVMGetDiagInfoDescription(info);
        let message = CStr::from_ptr(text).to_string_lossy().into_owned();
        LLVMDisposeMessage(text);
        if severity == LLVMDiagnosticSeverity::LLVMDSWarning {
            // As LLVM's own handler prints them; a closed stderr is no
            // reason to stop (nor to panic inside LLVM's callback).
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "warning: {message}");
            return;
        }
        (*(errors as *const RefCell<Vec<String>>))
            .borrow_mut()
            .push(message);
    }
}

impl<'ctx> Diagnostics<'ctx> {
    /// Starts collecting `ctx`'s error diagnostics (warnings are printed,
    /// remarks dropped).
    pub fn attach(ctx: &impl AsContextRef<'ctx>) -> Diagnostics<'ctx> {
        let raw = ctx.as_ctx_ref();
        // SAFETY: reads of the context's current handler.
        let previous = unsafe {
            (
                LLVMContextGetDiagnosticHandler(raw),
                LLVMContextGetDiagnosticContext(raw),
            )
        };
        let d = Diagnostics {
            ctx: raw,
            previous,
            errors: Box::new(RefCell::new(Vec::new())),
            _ctx: PhantomData,
        };
        let data = &*d.errors as *const RefCell<Vec<String>> as *mut c_void;
        // SAFETY: the handler and its data stay valid until `drop`.
        unsafe { LLVMContextSetDiagnosticHandler(d.ctx, Some(collect), data) };
        d
    }

    /// The errors diagnosed so far, as one `LlvmError`.
    pub fn check(&self) -> Result<(), LlvmError> {
        let errors = self.errors.borrow();
        if errors.is_empty() {
            return Ok(());
        }
        // One kernel or loop can report the same error many times.
        let mut seen = std::collections::HashSet::new();
        let unique: Vec<&str> = errors
            .iter()
            .map(String::as_str)
            .filter(|e| seen.insert(*e))
            .collect();
        Err(LlvmError::Internal(unique.join("; ")))
    }
}

impl Drop for Diagnostics<'_> {
    fn drop(&mut self) {
        // SAFETY: the handler that was there before, before the data goes.
        unsafe { LLVMContextSetDiagnosticHandler(self.ctx, self.previous.0, self.previous.1) };
    }
}

#[cfg(test)]
mod tests {
    use crate::backend::llvm::{self, LlvmError};
    use inkwell::context::Context;
    use inkwell::intrinsics::Intrinsic;
    use inkwell::targets::FileType;

    /// `llvm.exp` cannot be lowered for NVPTX: the build returns LLVM's
    /// message as an error instead of the process exiting from inside
    /// LLVM (which would end this test binary).
    #[test]
    fn an_error_llvm_diagnoses_is_returned() {
        let ctx = Context::create();
        let module = ctx.create_module("bad");
        let f32t = ctx.f32_type();
        let f = module.add_function("f", f32t.fn_type(&[f32t.into()], false), None);
        let b = ctx.create_builder();
        b.position_at_end(ctx.append_basic_block(f, "entry"));
        let exp = Intrinsic::find("llvm.exp")
            .and_then(|i| i.get_declaration(&module, &[f32t.into()]))
            .expect("llvm.exp");
        let x = f.get_nth_param(0).expect("param");
        let y = b.build_call(exp, &[x.into()], "").expect("call");
        let y = y.try_as_basic_value().basic().expect("value");
        b.build_return(Some(&y)).expect("ret");
        let machine = llvm::nvptx_machine("sm_80", "+ptx75").expect("nvptx");
        llvm::target(&module, &machine);
        match llvm::write(&module, &machine, FileType::Assembly) {
            Err(LlvmError::Internal(m)) => assert!(m.contains("fexp"), "{m}"),
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => panic!("PTX written for llvm.exp"),
        }
    }
}
