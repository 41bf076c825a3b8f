//! Back ends: LLVM lowering shared by the CPU (x86-64) and, later, NVPTX.

pub mod cpu;
pub mod llvm;
