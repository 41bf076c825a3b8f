//! Back ends: LLVM lowering shared by the CPU (x86-64) and CUDA (NVPTX),
//! and what both back ends' artifacts share (`shared`). `cpu` and `cuda`
//! import `llvm` and `shared`, never each other; `llvm` imports neither.

pub mod cpu;
pub mod cuda;
pub mod llvm;
pub mod shared;
