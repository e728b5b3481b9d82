//! The IR: a petgraph `StableGraph` of named nodes, each an `Op` with ordered inputs, an output
//! type, the parameters it owns (PyTorch keys into the `ParamStore`) and where it came from.

use indexmap::IndexMap;
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use qc_dsl::Span;
use qc_runtime::{DType, Tensor};

use crate::ops::Op;
pub use crate::types::ParamQuant;
use crate::types::TensorType;

pub type NodeId = NodeIndex;

/// Where a node came from in the recipe: the statement that created it and, for nodes inside
/// block instances, the chain of instances (outermost first).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Origin {
    pub span: Span,
    pub instances: Vec<Instance>,
}

/// One block instantiation on the way to a node: `layer1.0 = basic(...)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Instance {
    pub block: String,
    pub name: String,
    pub call: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Unique, PyTorch-style module path (`layer1.0.conv1`).
    pub name: String,
    pub op: Op,
    /// Output type; `None` until shapes are inferred.
    pub ty: Option<TensorType>,
    /// Parameters owned: (role such as `weight`, key in the store such as `conv1.weight`).
    pub params: Vec<(&'static str, String)>,
    pub origin: Origin,
}

/// An edge carries the input position it feeds.
pub type Port = usize;

/// The model graph. Node order in `order` is creation order (source order), which breaks ties
/// in the topological order the printer uses.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub g: StableDiGraph<Node, Port>,
    /// Model inputs, in declaration order.
    pub inputs: Vec<NodeId>,
    /// Model outputs, in declaration order, with the name written in the recipe.
    pub outputs: Vec<(String, NodeId)>,
    pub order: Vec<NodeId>,
}

impl Graph {
    pub fn add(&mut self, node: Node, inputs: &[NodeId]) -> NodeId {
        let id = self.g.add_node(node);
        for (port, &src) in inputs.iter().enumerate() {
            self.g.add_edge(src, id, port);
        }
        self.order.push(id);
        id
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.g[id]
    }

    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.g[id]
    }

    /// Inputs of a node, by port.
    pub fn inputs_of(&self, id: NodeId) -> Vec<NodeId> {
        let mut e: Vec<(Port, NodeId)> = self
            .g
            .edges_directed(id, Direction::Incoming)
            .map(|e| (*e.weight(), e.source()))
            .collect();
        e.sort();
        e.into_iter().map(|(_, n)| n).collect()
    }

    /// Nodes that read this node's output.
    pub fn users_of(&self, id: NodeId) -> Vec<NodeId> {
        let mut u: Vec<NodeId> = self.g.neighbors_directed(id, Direction::Outgoing).collect();
        u.sort_by_key(|n| self.position(*n));
        u.dedup();
        u
    }

    fn position(&self, id: NodeId) -> usize {
        self.order.iter().position(|n| *n == id).unwrap_or(usize::MAX)
    }

    /// Live nodes in topological order; among ready nodes the earliest created goes first, so
    /// the order is source order whenever source order is a valid one.
    pub fn topo_order(&self) -> Vec<NodeId> {
        let live: Vec<NodeId> = self
            .order
            .iter()
            .copied()
            .filter(|n| self.g.contains_node(*n))
            .collect();
        let rank: std::collections::HashMap<NodeId, usize> = live.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let mut indeg: std::collections::HashMap<NodeId, usize> = live
            .iter()
            .map(|n| (*n, self.g.edges_directed(*n, Direction::Incoming).count()))
            .collect();
        let mut ready: std::collections::BTreeSet<(usize, NodeId)> =
            live.iter().filter(|n| indeg[n] == 0).map(|n| (rank[n], *n)).collect();
        let mut out = Vec::with_capacity(live.len());
        while let Some(first) = ready.iter().next().copied() {
            ready.remove(&first);
            out.push(first.1);
            for e in self.g.edges_directed(first.1, Direction::Outgoing) {
                let t = e.target();
                let d = indeg.get_mut(&t).expect("edge to a live node");
                *d -= 1;
                if *d == 0 {
                    ready.insert((rank[&t], t));
                }
            }
        }
        out
    }

    /// Moves every reader of `from` (with its input port), and every model output that is
    /// `from`, over to `to`.
    pub fn redirect_users(&mut self, from: NodeId, to: NodeId) {
        let edges: Vec<(petgraph::stable_graph::EdgeIndex, NodeId, Port)> = self
            .g
            .edges_directed(from, Direction::Outgoing)
            .map(|e| (e.id(), e.target(), *e.weight()))
            .collect();
        for (e, target, port) in edges {
            self.g.remove_edge(e);
            self.g.add_edge(to, target, port);
        }
        for (_, id) in self.outputs.iter_mut() {
            if *id == from {
                *id = to;
            }
        }
    }

    /// Removes a node and its edges (and forgets its place in `order`, so that an index petgraph
    /// reuses later does not inherit it).
    pub fn remove(&mut self, id: NodeId) -> Option<Node> {
        self.order.retain(|n| *n != id);
        self.g.remove_node(id)
    }

    /// Number of edges that read this node's output (an input used twice by one node counts twice).
    pub fn use_count(&self, id: NodeId) -> usize {
        self.g.edges_directed(id, Direction::Outgoing).count()
    }

    pub fn is_output(&self, id: NodeId) -> bool {
        self.outputs.iter().any(|(_, o)| *o == id)
    }

    pub fn find(&self, name: &str) -> Option<NodeId> {
        self.order
            .iter()
            .copied()
            .find(|n| self.g.contains_node(*n) && self.g[*n].name == name)
    }

    pub fn node_count(&self) -> usize {
        self.g.node_count()
    }
}

/// Where a parameter's value came from. Later stages add `Derived` entries (BN folding,
/// quantization) that name the keys of the earlier stage they were computed from.
#[derive(Clone, Debug, PartialEq)]
pub enum Provenance {
    /// Declared by an op; no value bound yet (stage `parsed`).
    Declared,
    /// Read from a checkpoint file under a key.
    Checkpoint { file: String, key: String },
    /// Made by qc's deterministic initialiser.
    Init { method: &'static str, seed: u64 },
    /// Computed by a transform from parameters of an earlier stage.
    Derived { transform: String, from: Vec<String> },
    /// Statistics gathered by calibration: `source` as the recipe wrote it, how many batches
    /// and samples went through the model.
    Calibrated { source: String, batches: u64, samples: u64 },
}

impl Provenance {
    /// Initialisers that take no seed (constants), printed as `init(NAME)`: `inf` and `neg_inf`
    /// start an observer's min and max as PyTorch does, `eps` is `f32::EPSILON`.
    pub const UNSEEDED: &'static [&'static str] = &["ones", "zeros", "inf", "neg_inf", "eps"];
}

impl std::fmt::Display for Provenance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Provenance::Declared => f.write_str("declared"),
            Provenance::Checkpoint { file, key } => write!(f, "checkpoint({file}:{key})"),
            Provenance::Init { method, seed } if Provenance::UNSEEDED.contains(method) => {
                let _ = seed;
                write!(f, "init({method})")
            }
            Provenance::Init { method, seed } => write!(f, "init({method}, seed={seed:#x})"),
            Provenance::Derived { transform, from } => write!(f, "{transform}({})", from.join(", ")),
            Provenance::Calibrated {
                source,
                batches,
                samples,
            } => write!(f, "calibrated({source}, {batches} batches, {samples} samples)"),
        }
    }
}

/// One parameter: its type, its value once bound, and where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub value: Option<Tensor>,
    pub provenance: Provenance,
    /// The node that owns it.
    pub owner: String,
    /// For an integer weight (stage `quantized`): how its integers map to reals.
    pub quant: Option<ParamQuant>,
}

/// Parameters by PyTorch key, in creation order (which is the state_dict order).
pub type ParamStore = IndexMap<String, Param>;

/// The stages of compilation, in order. Each ends with an IR dump `NN-<stage>.ir`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    Parsed,
    Float,
    Fused,
    Observed,
    Calibrated,
    Quantized,
    Lowered,
}

impl Stage {
    pub const ALL: [Stage; 7] = [
        Stage::Parsed,
        Stage::Float,
        Stage::Fused,
        Stage::Observed,
        Stage::Calibrated,
        Stage::Quantized,
        Stage::Lowered,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Parsed => "parsed",
            Stage::Float => "float",
            Stage::Fused => "fused",
            Stage::Observed => "observed",
            Stage::Calibrated => "calibrated",
            Stage::Quantized => "quantized",
            Stage::Lowered => "lowered",
        }
    }

    pub fn from_name(s: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|st| st.name() == s)
    }

    /// 1-based position, used in dump file names (`02-float.ir`).
    pub fn number(self) -> usize {
        self as usize + 1
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What passes transform: the graph, its parameters, and the stage reached.
#[derive(Clone, Debug)]
pub struct Module {
    pub name: String,
    pub graph: Graph,
    pub params: ParamStore,
    pub stage: Stage,
    /// The recipe file's name (for dumps).
    pub source_name: String,
    /// What the `fuse` pass did (rules fired, why it stopped), once it has run.
    pub rewrite: Option<crate::report::Report>,
    /// False once calibration ran on data that says nothing about real inputs
    /// (`calibrate random(...)`): the ranges serve latency and size work only. The dump header
    /// says so (`# not calibrated for accuracy: ...`).
    pub calibrated_for_accuracy: bool,
    /// Why `calibrated_for_accuracy` is false, with the recipe place that made it so
    /// (`random data (resnet18.qrecipe:63)`).
    pub calibration_note: Option<String>,
    /// The executable program, from stage `lowered` on (validated by the runtime's executor).
    pub program: Option<qc_runtime::program::Program>,
}

impl Module {
    /// Each model input's name and the normalization its `input` line declares, in input order:
    /// what calibration, training and the `.qmodel` apply to raw data.
    pub fn input_normalizations(&self) -> Vec<(&str, Option<&qc_runtime::normalize::Normalize>)> {
        self.graph
            .inputs
            .iter()
            .map(|&id| {
                let node = self.graph.node(id);
                match &node.op {
                    Op::Input { normalize, .. } => (node.name.as_str(), normalize.as_ref()),
                    _ => (node.name.as_str(), None),
                }
            })
            .collect()
    }
}
