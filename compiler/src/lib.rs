//! qc's compiler: the petgraph IR with provenance, the stage pipeline and its passes, the IR
//! printer and parser, and checkpoint I/O.
//!
//! `compile` runs a checked recipe through the stages that exist, handing each finished stage to
//! a callback (which writes dumps, prints, or collects keys).
//!
//! The crate reads bottom-up: a module imports only modules on lower floors, never one on its
//! own floor or above, and never this crate root (`compiler/tests/layers.rs` checks every file
//! against this table).
//!
//! | floor | modules | job |
//! |---|---|---|
//! | 0 | `fmt`, `report` | number formatting; what a rewrite run did |
//! | 1 | `types`, `pth`, `remap` | tensor types and quantization parameters; the `.pth` reader; a `weights` line's key remapping |
//! | 2 | `checkpoint`, `dump_values` | checkpoint files of either format in, `.safetensors` out; values as IR dumps show them |
//! | 3 | `ops` | the closed op set: builder, attributes, parameters, shape rules |
//! | 4 | `ir`, `dump_attrs` | the graph, parameters with provenance, stages, the module; node attributes as IR dumps show them |
//! | 5 | `verify`, `printer` | the verifier; the IR text (print and parse) |
//! | 6 | `pass` | the pass manager |
//! | 7 | `keys` | a stage's parameters under PyTorch's names; checking and binding checkpoints |
//! | 8 | `expand` | stage `parsed`: the recipe's model as IR |
//! | 9 | `float` | passes `infer-shapes`, `bind-weights` |
//! | 10 | `bind` | pass `bind-checkpoint` (a later stage's checkpoint) |
//! | 11 | `fold` | batch-norm folding into a graph's conv/linear (arithmetic: `qc_runtime_host::fold`) |
//! | 12 | `rules` | fusion rules as typed data |
//! | 13 | `rewrite` | the rewrite engine; pass `fuse` |
//! | 14 | `plan`, `why_not` | the quantization plan; why the rules left a node alone |
//! | 15 | `observe` | pass `insert-observers` |
//! | 16 | `lower` | lowering to a runtime `Program`; pass `lower` |
//! | 17 | `calibrate` | pass `calibrate` |
//! | 18 | `convert` | pass `convert` |
//! | 19 | `pipeline` | the stages in order; `compile`, `check`, `plan` of a recipe |
//! | 20 | `training` | the training driver behind `qc train` |

pub mod bind;
pub mod calibrate;
pub mod checkpoint;
pub mod convert;
pub mod dump_attrs;
pub mod dump_values;
pub mod expand;
pub mod float;
pub mod fmt;
pub mod fold;
pub mod ir;
pub mod keys;
pub mod lower;
pub mod observe;
pub mod ops;
pub mod pass;
pub mod pipeline;
pub mod plan;
pub mod printer;
pub mod pth;
pub mod remap;
pub mod report;
pub mod rewrite;
pub mod rules;
pub mod training;
pub mod types;
pub mod verify;
pub mod why_not;

pub use ir::{Module, Stage};
pub use pass::{PassError, RunOptions};
pub use pipeline::{check, compile, last_stage, pass_names, pipeline, plan, CompileError};
