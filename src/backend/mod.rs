//! Back ends: LLVM lowering shared by the CPU (x86-64) and CUDA (NVPTX).

pub mod cpu;
pub mod cuda;
pub mod llvm;
