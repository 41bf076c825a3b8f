//! The graph IR: ops, shapes, the text printer, Graphviz output, the verifier.

pub mod dot;
pub mod graph;
pub mod op;
pub mod plan;
pub mod print;
pub mod shape;
pub mod sizes;
pub mod verify;

pub use graph::{Graph, Node};
pub use op::Op;
