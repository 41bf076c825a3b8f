//! What can go wrong importing an ONNX file: each error names the file, the
//! node where there is one, and what to do.

use miette::Diagnostic;
use thiserror::Error;

/// One node the importer cannot translate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsupported {
    pub op_type: String,
    pub node: String,
    pub reason: String,
}

fn list(items: &[Unsupported]) -> String {
    items
        .iter()
        .map(|u| format!("  - {} node `{}`: {}", u.op_type, u.node, u.reason))
        .collect::<Vec<_>>()
        .join("\n")
}

#[derive(Debug, Error, Diagnostic)]
pub enum ImportError {
    #[error("cannot read `{path}`: {source}")]
    #[diagnostic(
        code(resnetc::import::io),
        help("check that the path exists and is readable")
    )]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error("`{path}` is not a valid ONNX model: {detail}")]
    #[diagnostic(
        code(resnetc::import::decode),
        help("the file is truncated, corrupt or not ONNX; export it again (torch.onnx.export) and check it with `onnx.checker.check_model`")
    )]
    Decode { path: String, detail: String },

    #[error("`{path}`: {detail}")]
    #[diagnostic(code(resnetc::import::invalid), help("{hint}"))]
    Invalid {
        path: String,
        detail: String,
        hint: String,
    },

    #[error("`{path}` uses {count} node(s) that resnetc cannot import:\n{list}", count = items.len(), list = list(items))]
    #[diagnostic(
        code(resnetc::import::unsupported),
        help("resnetc imports the operators of the .res language (docs/language.md §10): conv, conv_transpose, batchnorm, linear, the activations, add, mul, concat, the pools, upsample, softmax, and the shape arithmetic exporters put around them; export the model in eval mode (model.eval()) with static input sizes, or rewrite the unsupported part")
    )]
    Unsupported {
        path: String,
        items: Vec<Unsupported>,
    },

    #[error("`{path}`: the imported model does not compile: {detail}")]
    #[diagnostic(
        code(resnetc::import::internal),
        help("this is a bug in resnetc's importer; please report it with the ONNX file")
    )]
    Internal { path: String, detail: String },
}
