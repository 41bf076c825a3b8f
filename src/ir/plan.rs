//! The memory plan: the execution schedule and where every activation lives
//! in one arena. Sizes and offsets are per image: a batch of B uses an arena
//! of B × `arena_bytes`, every offset scaled by B, each buffer holding its
//! B images contiguously (NCHW).

use petgraph::stable_graph::NodeIndex;
use serde::Serialize;
use std::collections::HashMap;

/// One allocation in the arena.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Buffer {
    /// Byte offset per image.
    pub offset: usize,
    /// Bytes per image.
    pub bytes: usize,
    /// Schedule positions of the first write and the last read.
    pub first: usize,
    pub last: usize,
}

/// Where a value lives: a buffer, at a channel offset. A value placed in a
/// concat's slice has `channel_offset > 0` or fewer channels than the buffer;
/// its images are `batch_stride` elements apart.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Storage {
    pub buffer: usize,
    /// Offset within the buffer, in elements per image.
    pub elem_offset: usize,
    /// Elements between consecutive images (the buffer's per-image size).
    pub batch_stride: usize,
}

#[derive(Clone, Debug, Default)]
pub struct MemoryPlan {
    /// Activation ops in execution order (no constants).
    pub schedule: Vec<NodeIndex>,
    pub buffers: Vec<Buffer>,
    pub storage: HashMap<NodeIndex, Storage>,
    /// Runs of consecutive activation-heavy ops (`Graph::activation_heavy`;
    /// the input and the output belong to none), as schedule position
    /// ranges `[first, last]`: what a back end may run image by image.
    pub runs: Vec<(usize, usize)>,
    /// Arena size per image.
    pub arena_bytes: usize,
    /// Sum of all activation tensors per image, as if none shared memory.
    pub naive_bytes: usize,
}

impl MemoryPlan {
    /// The run (index into `runs`) of schedule position `at`, if any.
    pub fn run_at(&self, at: usize) -> Option<usize> {
        self.runs.iter().position(|&(a, b)| a <= at && at <= b)
    }

    /// A flatten placed on its operand's memory: a view that computes
    /// nothing (back ends emit no kernel for it).
    pub fn is_view(&self, graph: &super::Graph, n: NodeIndex) -> bool {
        matches!(graph.node(n).op, super::Op::Flatten) && {
            let o = graph.operands(n)[0];
            let (a, b) = (self.storage[&n], self.storage[&o]);
            a.buffer == b.buffer && a.elem_offset == b.elem_offset
        }
    }
}
