//! The launch plan: what the CUDA runtime (and the C runtime of a static
//! library) needs besides the PTX: the kernels in order, their grids,
//! blocks and pointer arguments, the arena size and where the input and
//! output live. Serialized as `plan.json` in a CUDA artifact
//! (docs/cuda.md). All sizes and offsets are in f32 elements.

use serde::{Deserialize, Serialize};

/// The format tag of `plan.json`; bumped on any incompatible change.
pub const FORMAT: &str = "resnetc-cuda-plan-2";

/// A pointer argument of a kernel, resolved at launch for batch `n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arg {
    /// `arena + per_image × n + offset`: an activation (its images follow
    /// each other inside the buffer; the kernel knows their stride).
    Arena { per_image: u64, offset: u64 },
    /// `consts + offset`: a weight or derived constant.
    Const { offset: u64 },
}

impl Arg {
    /// Element offset of the pointer for batch `n`, from its base.
    pub fn elements(&self, n: u64) -> u64 {
        match *self {
            Arg::Arena { per_image, offset } => per_image * n + offset,
            Arg::Const { offset } => offset,
        }
    }

    /// The pointer for batch `n`, given the arena's and the pool's base
    /// addresses (f32 elements are 4 bytes).
    pub fn address(&self, n: u64, arena: u64, consts: u64) -> u64 {
        let base = match self {
            Arg::Arena { .. } => arena,
            Arg::Const { .. } => consts,
        };
        base + 4 * self.elements(n)
    }
}

/// One way to launch an op, used from batch `min_batch` on (the largest
/// `min_batch` not above the batch wins): `grid.x = ceil(n × x_per_image
/// / x_tile)`, `grid.y`, `grid.z` fixed. A variant with `x_per_image` 0
/// is not launched (the split-K sum of a layer not split at that batch).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variant {
    pub min_batch: u64,
    pub kernel: String,
    pub x_per_image: u64,
    pub x_tile: u64,
    pub grid_y: u64,
    pub grid_z: u64,
    pub block: u64,
}

impl Variant {
    /// Whether batch `n` launches anything.
    pub fn runs(&self, n: u64) -> bool {
        self.grid(n)[0] > 0
    }

    pub fn grid(&self, n: u64) -> [u64; 3] {
        [
            (n * self.x_per_image).div_ceil(self.x_tile),
            self.grid_y,
            self.grid_z,
        ]
    }
}

/// One kernel launch of the forward pass: every kernel takes the pointer
/// arguments in order, then the batch as an `i64`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Launch {
    /// The layer and op (`layer1.0.conv1 conv`), for profiles.
    pub label: String,
    pub variants: Vec<Variant>,
    pub args: Vec<Arg>,
    /// The value of the graph this launch writes (all of it, or a part:
    /// a K slice, a concat operand), for `resnetc run --check-layers`;
    /// known only to a plan lowered in this process.
    #[serde(skip)]
    pub writes: Option<Written>,
}

/// Where a launch writes a graph value: elements `from..from + per_image`
/// of each image's value (all of it but for a copy into a concat) at `at`,
/// images `stride` apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// The node's index in the optimized graph.
    pub node: usize,
    pub at: Arg,
    pub from: u64,
    pub per_image: u64,
    pub stride: u64,
}

impl Written {
    /// The whole value, of `per_image` elements an image, that this part
    /// of it lies in.
    pub fn whole(&self, per_image: u64) -> Written {
        let at = match self.at {
            Arg::Arena { per_image, offset } => Arg::Arena {
                per_image,
                offset: offset - self.from,
            },
            c => c,
        };
        Written {
            at,
            from: 0,
            per_image,
            ..self.clone()
        }
    }
}

impl Launch {
    /// The variant for batch `n`.
    pub fn variant(&self, n: u64) -> &Variant {
        self.variants
            .iter()
            .rev()
            .find(|v| v.min_batch <= n)
            .unwrap_or(&self.variants[0])
    }
}

/// Arena for split-K partial sums, after the planned buffers: `per_image`
/// more elements per image from batch `min_batch` on (the largest
/// `min_batch` not above the batch wins, as for variants).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scratch {
    pub min_batch: u64,
    pub per_image: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LaunchPlan {
    pub format: String,
    pub model: String,
    /// The architecture built for (`gpus::GPUS`): the oldest GPU it runs on.
    pub gpu: String,
    /// Multiprocessors the cost model planned the tiles and K splits for.
    pub sms: u64,
    /// Per-image shapes (the batch axis is the caller's).
    pub input_shape: Vec<usize>,
    pub output_shape: Vec<usize>,
    /// Where the runtime copies the input to and the output from; images
    /// are `input_stride`/`output_stride` elements apart.
    pub input: Arg,
    pub input_stride: u64,
    pub output: Arg,
    pub output_stride: u64,
    /// Arena elements per image of the planned buffers; the split-K
    /// scratch follows them (at `arena + arena_per_image × n`).
    pub arena_per_image: u64,
    /// Scratch elements per image, by batch; empty when nothing is split.
    pub scratch: Vec<Scratch>,
    /// Elements of the constant pool (`weights.bin`).
    pub const_elements: u64,
    /// Every kernel the PTX defines, by name.
    pub kernels: Vec<String>,
    pub launches: Vec<Launch>,
}

impl LaunchPlan {
    /// Scratch elements per image at batch `n`.
    pub fn scratch_per_image(&self, n: u64) -> u64 {
        self.scratch
            .iter()
            .rev()
            .find(|s| s.min_batch <= n)
            .map_or(0, |s| s.per_image)
    }

    /// Elements of the arena of batch `n` (variants chosen for batch
    /// `tune`, which is `n` but in the emulation's tests).
    pub fn arena_elements(&self, n: u64, tune: u64) -> u64 {
        (self.arena_per_image + self.scratch_per_image(tune)) * n
    }
}
