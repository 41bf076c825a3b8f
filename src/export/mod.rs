//! Exporting a model to other formats, for running the same network with
//! the same weights in other runtimes.

pub mod onnx;
mod proto;
