//! resnetc: a compiler for residual neural networks.
//!
//! The pipeline reads one way: `.res` text → AST → graph IR ([`front`]) →
//! optimized IR ([`passes`]) → kernels ([`backend`]). The reference
//! interpreter ([`interp`]) is the oracle every stage is checked against.

pub mod api;
pub mod backend;
pub mod bench;
pub mod export;
pub mod front;
pub mod import;
pub mod interp;
pub mod ir;
pub mod outputs;
pub mod passes;
pub mod precision;
pub mod summary;
pub mod tensor;
pub mod weights;
