//! Model parameters in and out of the compiler: safetensors checkpoints,
//! `.npy` arrays for inputs and reference outputs, strict binding of a file's
//! tensors to what a model expects, and seeded random initialisation for
//! running a model without a checkpoint.
//!
//! Everything here reads untrusted bytes, so every size is checked against
//! the real length of the data before anything is allocated, and every
//! failure is a diagnostic that names the file, never a panic.

mod bind;
mod materialize;
mod npy;
mod random_init;
mod safetensors_file;
mod specs;

use miette::Diagnostic;
use thiserror::Error;

pub use crate::tensor::Tensor;
pub use bind::{bind, bind_with, BindOptions, Skipped};
pub use materialize::materialize;
pub use npy::{check_input_shape, npy_bytes, parse_npy, read_npy, write_npy, NpyError};
pub use random_init::{random_weights, try_random_weights};
pub use safetensors_file::{
    load_safetensors, parse_safetensors, save_safetensors, serialize_safetensors,
};
pub use specs::specs_of;

/// Parameters by PyTorch `state_dict` name; a `BTreeMap` so that iteration,
/// saving and error listings are deterministic.
pub type Weights = std::collections::BTreeMap<String, Tensor>;

/// What a model expects: one entry per parameter tensor, in model order.
#[derive(Clone, Debug, PartialEq)]
pub struct WeightSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub role: Role,
}

/// What a parameter is for; decides its random initialisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Conv2d weight `[Cout, Cin/groups, kH, kW]`.
    ConvWeight,
    /// ConvTranspose2d weight `[Cin, Cout/groups, kH, kW]`.
    ConvTransposeWeight,
    /// Linear weight `[out, in]`.
    LinearWeight,
    /// Bias of a conv or linear layer whose weight has `fan_in` inputs per output.
    Bias {
        fan_in: usize,
    },
    BnWeight,
    BnBias,
    BnMean,
    BnVar,
}

/// Errors from reading, writing and binding weight files.
#[derive(Debug, Error, Diagnostic)]
pub enum WeightsError {
    #[error("the model's weights need {gib:.1} GiB, which could not be allocated")]
    #[diagnostic(
        code(resnetc::weights::memory),
        help("a smaller model, or a machine with more memory")
    )]
    Memory { gib: f64 },

    #[error("cannot {action} `{path}`: {source}")]
    #[diagnostic(
        code(resnetc::weights::io),
        help("check that the path exists and that you may {action} it")
    )]
    Io {
        action: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error("`{path}` is not a safetensors file: {reason}")]
    #[diagnostic(code(resnetc::weights::not_safetensors), help("{hint}"))]
    NotSafetensors {
        path: String,
        reason: String,
        hint: String,
    },

    #[error(
        "`{path}` is truncated: its header claims {header_len} bytes but only {available} bytes follow the length prefix"
    )]
    #[diagnostic(
        code(resnetc::weights::truncated_header),
        help("the file was probably cut short while copying or downloading; fetch it again")
    )]
    HeaderTruncated {
        path: String,
        header_len: u64,
        available: usize,
    },

    #[error("`{path}` has a malformed safetensors header: {detail}")]
    #[diagnostic(
        code(resnetc::weights::bad_header),
        help("the JSON header must map each tensor name to {{\"dtype\", \"shape\", \"data_offsets\"}}; re-save the file with `safetensors.torch.save_file`")
    )]
    InvalidHeader { path: String, detail: String },

    #[error("`{path}` holds {count} tensor(s) of unsupported dtype: {list}; resnetc reads F32, F16 and BF16", count = tensors.len(), list = format_dtype_list(tensors))]
    #[diagnostic(
        code(resnetc::weights::unsupported_dtype),
        help("convert before saving, e.g. `save_file({{k: v.float() for k, v in sd.items()}}, path)`")
    )]
    UnsupportedDtype {
        path: String,
        /// `(tensor name, dtype)` for every offending tensor.
        tensors: Vec<(String, String)>,
    },

    #[error("tensor `{tensor}` in `{path}` has shape {shape:?}, whose size in bytes overflows")]
    #[diagnostic(
        code(resnetc::weights::shape_overflow),
        help("the header is corrupt; re-save the file")
    )]
    ShapeOverflow {
        path: String,
        tensor: String,
        shape: Vec<u64>,
    },

    #[error("tensor `{tensor}` in `{path}` has data offsets [{begin}, {end}] outside the {buffer_len}-byte data buffer")]
    #[diagnostic(
        code(resnetc::weights::offsets_out_of_range),
        help("the file is truncated or its header is corrupt; fetch or re-save it")
    )]
    OffsetsOutOfRange {
        path: String,
        tensor: String,
        begin: u64,
        end: u64,
        buffer_len: usize,
    },

    #[error("tensor `{tensor}` in `{path}` is {dtype} {shape:?}, which needs {expected_bytes} bytes, but its data offsets [{begin}, {end}] span {found_bytes} bytes", found_bytes = end.wrapping_sub(*begin))]
    #[diagnostic(
        code(resnetc::weights::offsets_mismatch),
        help("the header is corrupt; re-save the file with `safetensors.torch.save_file`")
    )]
    OffsetsMismatch {
        path: String,
        tensor: String,
        dtype: String,
        shape: Vec<usize>,
        expected_bytes: usize,
        begin: u64,
        end: u64,
    },

    #[error("cannot save tensor `{tensor}` to `{path}`: {problem}")]
    #[diagnostic(
        code(resnetc::weights::bad_tensor),
        help("this is a bug in the caller: a saved tensor needs a name other than `__metadata__` and data matching its shape")
    )]
    InvalidTensor {
        path: String,
        tensor: String,
        problem: String,
    },

    /// Boxed: it carries whole name lists, and keeping the enum small keeps
    /// every `Result` that can fail small.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Mismatch(Box<BindMismatch>),
}

/// Everything wrong with a checkpoint relative to a model, reported by
/// [`bind`] in one go.
#[derive(Debug, Error, Diagnostic)]
#[error("weights in `{path}` do not match the model ({summary}):\n{details}")]
#[diagnostic(code(resnetc::weights::mismatch), help("{hint}"))]
pub struct BindMismatch {
    pub path: String,
    /// e.g. "2 missing, 1 unexpected, 0 mis-shaped, of 107 expected tensors".
    pub summary: String,
    /// One line per problem.
    pub details: String,
    pub hint: String,
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
    /// `(name, expected shape, found shape)`.
    pub misshaped: Vec<(String, Vec<usize>, Vec<usize>)>,
}

fn format_dtype_list(tensors: &[(String, String)]) -> String {
    tensors
        .iter()
        .map(|(name, dtype)| format!("`{name}` ({dtype})"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub use crate::outputs::write_atomic;
