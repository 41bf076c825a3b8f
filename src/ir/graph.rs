//! The graph IR: a petgraph `StableGraph` of operations whose edges carry the
//! operand index. Activation shapes exclude the batch axis, which is always
//! first and symbolic (`N`); weight shapes are complete.

use super::op::Op;
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;

#[derive(Clone, Debug)]
pub struct Node {
    pub op: Op,
    /// Layer path (`layer1.0.conv1`); empty for unnamed ops.
    pub name: String,
    /// Activation: per-image shape (batch excluded). Weight: full shape.
    pub shape: Vec<usize>,
}

#[derive(Clone, Debug)]
pub struct Graph {
    pub name: String,
    pub g: StableDiGraph<Node, u32>,
    pub input: NodeIndex,
    pub output: NodeIndex,
    /// Set by plan_memory, the last pass; any later rewrite must clear it.
    pub plan: Option<super::plan::MemoryPlan>,
}

impl Graph {
    /// A graph holding only its input node.
    pub fn new(name: &str, input_name: &str, input_shape: Vec<usize>) -> Graph {
        let mut g = StableDiGraph::new();
        let input = g.add_node(Node {
            op: Op::Input,
            name: input_name.to_string(),
            shape: input_shape,
        });
        Graph {
            name: name.to_string(),
            g,
            input,
            output: input,
            plan: None,
        }
    }

    pub fn add(
        &mut self,
        op: Op,
        name: impl Into<String>,
        shape: Vec<usize>,
        operands: &[NodeIndex],
    ) -> NodeIndex {
        let n = self.g.add_node(Node {
            op,
            name: name.into(),
            shape,
        });
        for (i, &o) in operands.iter().enumerate() {
            self.g.add_edge(o, n, i as u32);
        }
        n
    }

    pub fn node(&self, n: NodeIndex) -> &Node {
        &self.g[n]
    }

    pub fn node_mut(&mut self, n: NodeIndex) -> &mut Node {
        &mut self.g[n]
    }

    /// Operands in order.
    pub fn operands(&self, n: NodeIndex) -> Vec<NodeIndex> {
        let mut e: Vec<(u32, NodeIndex)> = self
            .g
            .edges_directed(n, Direction::Incoming)
            .map(|e| (*e.weight(), e.source()))
            .collect();
        e.sort();
        e.into_iter().map(|(_, s)| s).collect()
    }

    /// Consumers of `n` with the operand slot they read it in.
    pub fn users(&self, n: NodeIndex) -> Vec<(NodeIndex, u32)> {
        let mut u: Vec<(NodeIndex, u32)> = self
            .g
            .edges_directed(n, Direction::Outgoing)
            .map(|e| (e.target(), *e.weight()))
            .collect();
        u.sort();
        u
    }

    /// Replaces every use of `old` by `new` (operand slots kept).
    pub fn replace_uses(&mut self, old: NodeIndex, new: NodeIndex) {
        for (user, slot) in self.users(old) {
            if let Some(e) = self.g.find_edge(old, user) {
                self.g.remove_edge(e);
            }
            self.g.add_edge(new, user, slot);
        }
        if self.output == old {
            self.output = new;
        }
    }

    /// Whether the op at `n` reads and writes more activation bytes than
    /// weight bytes (f32 counted). A back end may run a batch image by
    /// image through consecutive such ops (the CPU's does): a batch of
    /// early-layer activations overflows the caches (resnet50's 56×56
    /// stage is 3.2 MB a tensor per image) while one image's stays in
    /// L2/L3, and the late, weight-heavy layers run batched so that their
    /// weights serve every image while in cache. The memory plan's runs
    /// (`MemoryPlan::runs`) are the maximal sequences of them.
    pub fn activation_heavy(&self, n: NodeIndex) -> bool {
        let bytes = |m: NodeIndex| numel(&self.node(m).shape) as u64 * 4;
        let (mut weights, mut activations) = (0, bytes(n));
        for m in self.operands(n) {
            if self.node(m).op.is_const() {
                weights += bytes(m);
            } else {
                activations += bytes(m);
            }
        }
        weights < activations
    }

    /// Deterministic topological order of everything the output depends on:
    /// a post-order walk from the output that visits operands in order. It
    /// depends only on the graph's structure, never on node indices, so the
    /// printed IR is stable under rewrites. Iterative: 1000-layer nets are fine.
    pub fn schedule(&self) -> Vec<NodeIndex> {
        self.schedule_with(false)
    }

    /// The same walk visiting operands last-to-first when `reverse` (which
    /// branch of a block runs first): memory planning tries both.
    pub fn schedule_with(&self, reverse: bool) -> Vec<NodeIndex> {
        let mut order = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut stack = vec![(self.output, false)];
        while let Some((n, expanded)) = stack.pop() {
            if expanded {
                order.push(n);
                continue;
            }
            if !seen.insert(n) {
                continue;
            }
            stack.push((n, true));
            let mut ops = self.operands(n);
            if !reverse {
                // The stack pops the last pushed first.
                ops.reverse();
            }
            for o in ops {
                if !seen.contains(&o) {
                    stack.push((o, false));
                }
            }
        }
        order
    }

    /// Weight nodes in schedule order.
    pub fn weights(&self) -> Vec<NodeIndex> {
        self.schedule()
            .into_iter()
            .filter(|&n| self.g[n].op.is_weight())
            .collect()
    }

    /// Per-image shape of the model input and output.
    pub fn input_shape(&self) -> &[usize] {
        &self.g[self.input].shape
    }

    pub fn output_shape(&self) -> &[usize] {
        &self.g[self.output].shape
    }

    /// Parameters of an op as PyTorch counts them (`parameters()`: BN running
    /// statistics are buffers and do not count). A folded layer counts its
    /// folded weight, bias and prologue constants.
    pub fn params_of(&self, n: NodeIndex) -> usize {
        let ops = self.operands(n);
        let weights = ops.iter().filter(|&&o| self.g[o].op.is_const());
        match self.g[n].op {
            Op::BatchNorm { .. } => weights.take(2).map(|&o| numel(&self.g[o].shape)).sum(),
            _ => weights.map(|&o| numel(&self.g[o].shape)).sum(),
        }
    }

    /// A `mul` whose second factor is one value per channel (`[C, 1, 1]`)
    /// rather than one per element.
    pub fn scales_channels(&self, n: NodeIndex) -> bool {
        matches!(self.g[n].op, Op::Mul { .. })
            && self
                .operands(n)
                .get(1)
                .is_some_and(|&s| self.g[s].shape != self.g[n].shape)
    }

    /// Multiply-adds per image of conv, transposed conv and linear (the
    /// convention of PyTorch's FLOP counter, halved).
    pub fn macs_of(&self, n: NodeIndex) -> u64 {
        let node = &self.g[n];
        let ops = self.operands(n);
        match &node.op {
            Op::Conv { geom, .. } => {
                let cin = self.g[ops[0]].shape[0];
                numel(&node.shape) as u64
                    * (cin / geom.groups * geom.kernel[0] * geom.kernel[1]) as u64
            }
            Op::ConvTranspose { geom, .. } => {
                let inp = numel(&self.g[ops[0]].shape) as u64;
                inp * (geom.out_channels / geom.groups * geom.kernel[0] * geom.kernel[1]) as u64
            }
            Op::Linear { out_features, .. } => (self.g[ops[0]].shape[0] * out_features) as u64,
            _ => 0,
        }
    }
}

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// `(c, h, w)` of a per-image activation shape, or `(c, 1, 1)` for a
/// vector: how kernels address an image.
pub fn chw(s: &[usize]) -> (u64, u64, u64) {
    match *s {
        [c, h, w] => (c as u64, h as u64, w as u64),
        [c] => (c as u64, 1, 1),
        _ => (
            s.first().copied().unwrap_or(1) as u64,
            s.get(1..).map_or(1, |r| r.iter().product::<usize>()) as u64,
            1,
        ),
    }
}
