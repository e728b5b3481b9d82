//! The ONNX graph as qc layers: each node mapped to a recipe op (name, attributes with their
//! recipe defaults), its inputs, and its parameters' initializers; `Identity`/`Dropout` become
//! aliases, `Constant`s values, `MatMul` + `Add` one linear.

use std::collections::HashMap;
use std::path::Path;

use super::weights::{self, Payload};
use super::ImportError;
use crate::proto::{attribute_proto::AttributeType, type_proto, ModelProto, NodeProto, TensorProto};

/// The ONNX ops `qc import` reads.
pub const SUPPORTED: &[&str] = &[
    "AveragePool",
    "BatchNormalization",
    "Clip",
    "Concat",
    "Constant",
    "Conv",
    "Dropout",
    "Flatten",
    "Gemm",
    "GlobalAveragePool",
    "HardSigmoid",
    "HardSwish",
    "Identity",
    "MatMul",
    "Add",
    "MaxPool",
    "Mul",
    "ReduceMean",
    "Relu",
    "Reshape",
    "Sigmoid",
];

/// A recipe attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f64),
    Bool(bool),
}

impl Attr {
    /// A list whose values are all equal is written as one integer (`stride: 2`).
    fn ints(v: &[i64]) -> Attr {
        match v.first() {
            Some(&a) if v.iter().all(|&b| b == a) => Attr::Int(a),
            _ => Attr::Ints(v.to_vec()),
        }
    }
}

impl std::fmt::Display for Attr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Attr::Int(v) => write!(f, "{v}"),
            Attr::Ints(v) => {
                let s: Vec<String> = v.iter().map(|x| x.to_string()).collect();
                write!(f, "[{}]", s.join(", "))
            }
            Attr::Float(v) if v.is_infinite() => write!(f, "{}1e309", if *v < 0.0 { "-" } else { "" }),
            Attr::Float(v) => write!(f, "{v:?}"),
            Attr::Bool(v) => write!(f, "{v}"),
        }
    }
}

/// Where a layer input comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Src {
    Input(usize),
    Layer(usize),
}

/// Where a parameter's values come from.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamSource {
    /// An initializer, transposed when it is a `[in, out]` matrix (MatMul, Gemm `transB = 0`).
    Init { name: String, key: String, transpose: bool },
    /// `num_batches_tracked`, which no exporter writes: 0.
    NumBatchesTracked,
    /// A folded batch norm's bias that the exporter dropped because it was all zeros.
    Zeros,
}

/// One parameter: PyTorch's suffix (`weight`, `running_mean`, ...) and its source.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    pub suffix: &'static str,
    pub source: ParamSource,
}

/// One recipe statement to be: an op with attributes, inputs and parameters.
#[derive(Debug, Clone)]
pub struct Layer {
    /// The recipe name (a PyTorch module path), set by `names::assign`.
    pub name: String,
    /// The ONNX node's name, for messages.
    pub node: String,
    /// The ONNX op type, for messages.
    pub op_type: String,
    /// The module path of the node's scope (TorchScript node names, dynamo metadata).
    pub scope: Option<String>,
    /// The PyTorch class of each scope level (dynamo metadata), outermost first.
    pub classes: Vec<(String, String)>,
    /// The module path read off a parameter's initializer name (a state_dict key).
    pub key_path: Option<String>,
    /// The recipe op.
    pub op: &'static str,
    /// Attributes with their recipe defaults (a value equal to its default is not written).
    pub attrs: Vec<(&'static str, Attr, Option<Attr>)>,
    pub inputs: Vec<Src>,
    pub params: Vec<Param>,
}

/// A model input's name and dims (`None`: symbolic).
#[derive(Debug, Clone)]
pub struct Input {
    pub name: String,
    pub dims: Vec<Option<i64>>,
}

/// The graph as layers in ONNX (topological) order.
#[derive(Debug, Clone)]
pub struct Graph {
    pub inputs: Vec<Input>,
    pub layers: Vec<Layer>,
    pub outputs: Vec<Src>,
    pub initializers: HashMap<String, TensorProto>,
    pub producer: String,
    pub opset: i64,
    pub nodes: usize,
}

fn attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a crate::proto::AttributeProto> {
    node.attribute.iter().find(|a| a.name() == name)
}

fn attr_int(node: &NodeProto, name: &str, default: i64) -> i64 {
    attr(node, name).map(|a| a.i()).unwrap_or(default)
}

fn attr_float(node: &NodeProto, name: &str, default: f32) -> f32 {
    attr(node, name).map(|a| a.f()).unwrap_or(default)
}

fn attr_ints(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(node, name).map(|a| a.ints.clone())
}

/// An f32 attribute as the f64 of its shortest decimal form (`1e-5`, not `9.99999974e-6`).
fn short(v: f32) -> f64 {
    format!("{v}").parse().unwrap_or(v as f64)
}

/// Strides, pads (one per dim) and dilations of a window op.
type Window = (Vec<i64>, Vec<i64>, Vec<i64>);

struct Reader<'a> {
    model: &'a ModelProto,
    base_dir: Option<&'a Path>,
    inits: HashMap<String, TensorProto>,
    consts: HashMap<String, TensorProto>,
    values: HashMap<String, Src>,
    layers: Vec<Layer>,
    /// Add nodes already taken by a MatMul (their output is the MatMul's layer).
    taken: HashMap<String, usize>,
    /// `Identity` outputs of constants (the TorchScript exporter shares equal initializers).
    aliases: HashMap<String, String>,
}

impl<'a> Reader<'a> {
    fn err(&self, node: &NodeProto, message: String) -> ImportError {
        ImportError::Node {
            node: node.name().to_string(),
            op: node.op_type().to_string(),
            message,
        }
    }

    fn tensor(&self, name: &str) -> Option<&TensorProto> {
        let name = self.aliases.get(name).map(String::as_str).unwrap_or(name);
        self.inits.get(name).or_else(|| self.consts.get(name))
    }

    fn constant(&self, node: &NodeProto, index: usize) -> Result<Option<Vec<f64>>, ImportError> {
        match node.input.get(index).filter(|n| !n.is_empty()) {
            None => Ok(None),
            Some(name) => match self.tensor(name) {
                Some(t) => weights::constant_values(t, self.base_dir).map(Some),
                None => Err(self.err(node, format!("input `{name}` must be a constant (an initializer)"))),
            },
        }
    }

    fn value(&self, node: &NodeProto, index: usize) -> Result<Src, ImportError> {
        let name = node.input.get(index).map(String::as_str).unwrap_or("");
        self.values.get(name).copied().ok_or_else(|| {
            if self.tensor(name).is_some() {
                self.err(
                    node,
                    format!("input `{name}` is a constant; qc imports this op only on computed tensors"),
                )
            } else {
                self.err(node, format!("input `{name}` is produced by no node before it"))
            }
        })
    }

    /// A parameter: the initializer behind input `index` and the name the node reads it by.
    fn param(
        &self,
        node: &NodeProto,
        index: usize,
        suffix: &'static str,
        transpose: bool,
    ) -> Result<Param, ImportError> {
        let (key, dims) = self.init(node, index, suffix)?;
        let _ = dims;
        let name = self.aliases.get(&key).cloned().unwrap_or_else(|| key.clone());
        Ok(Param {
            suffix,
            source: ParamSource::Init { name, key, transpose },
        })
    }

    /// The initializer behind input `index` (a parameter), with its dims.
    fn init(&self, node: &NodeProto, index: usize, what: &str) -> Result<(String, Vec<usize>), ImportError> {
        let name = node
            .input
            .get(index)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| self.err(node, format!("has no {what} input")))?;
        let t = self.tensor(name).ok_or_else(|| {
            self.err(
                node,
                format!("its {what} `{name}` is computed in the graph; qc imports weights stored as initializers"),
            )
        })?;
        Ok((name.clone(), weights::dims(t)?))
    }

    fn push(
        &mut self,
        node: &NodeProto,
        op: &'static str,
        attrs: Vec<(&'static str, Attr, Option<Attr>)>,
        inputs: Vec<Src>,
        params: Vec<Param>,
    ) {
        let key_path = params.iter().find_map(|p| match &p.source {
            ParamSource::Init { key, .. } => key_module(key, p.suffix),
            _ => None,
        });
        let (scope, classes) = super::names::scope_of(node);
        self.layers.push(Layer {
            name: String::new(),
            node: node.name().to_string(),
            op_type: node.op_type().to_string(),
            scope,
            classes,
            key_path,
            op,
            attrs,
            inputs,
            params,
        });
        let id = Src::Layer(self.layers.len() - 1);
        if let Some(out) = node.output.first() {
            self.values.insert(out.clone(), id);
        }
    }

    fn spatial(&self, node: &NodeProto, rank: usize, kernel: &[i64]) -> Result<Window, ImportError> {
        let strides = attr_ints(node, "strides").unwrap_or_else(|| vec![1; rank]);
        let dilations = attr_ints(node, "dilations").unwrap_or_else(|| vec![1; rank]);
        let auto_pad = attr(node, "auto_pad").map(|a| String::from_utf8_lossy(a.s()).into_owned());
        let pads = match auto_pad.as_deref() {
            None | Some("NOTSET") | Some("") => attr_ints(node, "pads").unwrap_or_else(|| vec![0; 2 * rank]),
            Some("VALID") => vec![0; 2 * rank],
            Some(other) => {
                return Err(self.err(node, format!("auto_pad `{other}`: qc imports explicit pads")));
            }
        };
        if strides.len() != rank || dilations.len() != rank || pads.len() != 2 * rank || kernel.len() != rank {
            return Err(self.err(node, format!("its attributes do not fit a {rank}-d window")));
        }
        if pads[..rank] != pads[rank..] {
            return Err(self.err(
                node,
                format!("pads {pads:?} differ at the start and the end; qc's ops pad both sides alike (PyTorch's `padding`)"),
            ));
        }
        Ok((strides, pads[..rank].to_vec(), dilations))
    }

    fn node(
        &mut self,
        node: &NodeProto,
        consumers: &HashMap<String, Vec<usize>>,
        all: &[NodeProto],
    ) -> Result<(), ImportError> {
        let op_type = node.op_type();
        if !node.domain().is_empty() && node.domain() != "ai.onnx" {
            return Err(ImportError::Unsupported {
                node: node.name().to_string(),
                op: format!("{}::{op_type}", node.domain()),
            });
        }
        if let Some(&layer) = self.taken.get(node.name()) {
            if let Some(out) = node.output.first() {
                self.values.insert(out.clone(), Src::Layer(layer));
            }
            return Ok(());
        }
        let int = |v: i64| Attr::Int(v);
        match op_type {
            "Constant" => {
                let a = node
                    .attribute
                    .first()
                    .ok_or_else(|| self.err(node, "has no value".into()))?;
                let t = match a.r#type() {
                    AttributeType::Tensor => a.t.clone().unwrap_or_default(),
                    AttributeType::Float => TensorProto {
                        data_type: Some(crate::proto::tensor_proto::DataType::Float as i32),
                        float_data: vec![a.f()],
                        ..Default::default()
                    },
                    AttributeType::Int | AttributeType::Ints => TensorProto {
                        data_type: Some(crate::proto::tensor_proto::DataType::Int64 as i32),
                        dims: if a.r#type() == AttributeType::Ints {
                            vec![a.ints.len() as i64]
                        } else {
                            vec![]
                        },
                        int64_data: if a.r#type() == AttributeType::Ints {
                            a.ints.clone()
                        } else {
                            vec![a.i()]
                        },
                        ..Default::default()
                    },
                    other => return Err(self.err(node, format!("holds a {} value", other.as_str_name()))),
                };
                if let Some(out) = node.output.first() {
                    let mut t = t;
                    t.name = Some(out.clone());
                    self.consts.insert(out.clone(), t);
                }
            }
            "Identity" | "Dropout" => {
                let input = node.input.first().cloned().unwrap_or_default();
                if self.tensor(&input).is_some() {
                    let target = self.aliases.get(&input).cloned().unwrap_or(input);
                    if let Some(out) = node.output.first() {
                        self.aliases.insert(out.clone(), target);
                    }
                    return Ok(());
                }
                let src = self.value(node, 0)?;
                if let Some(out) = node.output.first() {
                    self.values.insert(out.clone(), src);
                }
            }
            "Conv" => {
                let x = self.value(node, 0)?;
                let (w, wd) = self.init(node, 1, "weight")?;
                if !(3..=4).contains(&wd.len()) {
                    return Err(self.err(
                        node,
                        format!(
                            "weight `{w}` has {} dims; qc imports 1-d and 2-d convolutions",
                            wd.len()
                        ),
                    ));
                }
                let rank = wd.len() - 2;
                let kernel: Vec<i64> =
                    attr_ints(node, "kernel_shape").unwrap_or_else(|| wd[2..].iter().map(|&d| d as i64).collect());
                let (stride, pad, dilation) = self.spatial(node, rank, &kernel)?;
                let groups = attr_int(node, "group", 1);
                let bias = node.input.get(2).is_some_and(|b| !b.is_empty());
                let _ = w;
                let mut params = vec![self.param(node, 1, "weight", false)?];
                if bias {
                    params.push(self.param(node, 2, "bias", false)?);
                }
                let attrs = vec![
                    ("out", int(wd[0] as i64), None),
                    ("kernel", Attr::ints(&kernel), None),
                    ("stride", Attr::ints(&stride), Some(int(1))),
                    ("pad", Attr::ints(&pad), Some(int(0))),
                    ("dilation", Attr::ints(&dilation), Some(int(1))),
                    ("groups", int(groups), Some(int(1))),
                    ("bias", Attr::Bool(bias), Some(Attr::Bool(true))),
                ];
                self.push(
                    node,
                    if rank == 1 { "conv1d" } else { "conv2d" },
                    attrs,
                    vec![x],
                    params,
                );
            }
            "BatchNormalization" => {
                let x = self.value(node, 0)?;
                if attr_int(node, "training_mode", 0) != 0 {
                    return Err(self.err(
                        node,
                        "runs in training mode; export the model in eval mode (`model.eval()`)".into(),
                    ));
                }
                let mut params = vec![];
                for (i, suffix) in [(1, "weight"), (2, "bias"), (3, "running_mean"), (4, "running_var")] {
                    params.push(self.param(node, i, suffix, false)?);
                }
                params.push(Param {
                    suffix: "num_batches_tracked",
                    source: ParamSource::NumBatchesTracked,
                });
                let eps = short(attr_float(node, "epsilon", 1e-5));
                let m = 1.0 - attr_float(node, "momentum", 0.9) as f64;
                let momentum: f64 = format!("{m:.6e}").parse().unwrap_or(m);
                let attrs = vec![
                    ("eps", Attr::Float(eps), Some(Attr::Float(1e-5))),
                    ("momentum", Attr::Float(momentum), Some(Attr::Float(0.1))),
                ];
                self.push(node, "batch_norm", attrs, vec![x], params);
            }
            "Relu" | "Sigmoid" | "HardSwish" | "GlobalAveragePool" => {
                let x = self.value(node, 0)?;
                let op = match op_type {
                    "Relu" => "relu",
                    "Sigmoid" => "sigmoid",
                    "HardSwish" => "hardswish",
                    _ => "global_avg_pool",
                };
                self.push(node, op, vec![], vec![x], vec![]);
            }
            "HardSigmoid" => {
                let x = self.value(node, 0)?;
                let (alpha, beta) = (attr_float(node, "alpha", 0.2), attr_float(node, "beta", 0.5));
                if (alpha - 1.0 / 6.0).abs() > 1e-6 || (beta - 0.5).abs() > 1e-6 {
                    return Err(self.err(
                        node,
                        format!("alpha {alpha}, beta {beta}: qc's hardsigmoid is PyTorch's (alpha 1/6, beta 0.5)"),
                    ));
                }
                self.push(node, "hardsigmoid", vec![], vec![x], vec![]);
            }
            "Clip" => {
                let x = self.value(node, 0)?;
                let lo = match self.constant(node, 1)? {
                    Some(v) => v.first().copied(),
                    None => attr(node, "min").map(|a| a.f() as f64),
                };
                let hi = match self.constant(node, 2)? {
                    Some(v) => v.first().copied(),
                    None => attr(node, "max").map(|a| a.f() as f64),
                };
                match (lo, hi) {
                    (Some(l), Some(h)) if l == 0.0 && h == 6.0 => self.push(node, "relu6", vec![], vec![x], vec![]),
                    (Some(0.0), None) => self.push(node, "relu", vec![], vec![x], vec![]),
                    (l, h) => {
                        let mut attrs = vec![];
                        if let Some(l) = l {
                            attrs.push(("min", Attr::Float(short(l as f32)), None));
                        }
                        if let Some(h) = h {
                            attrs.push(("max", Attr::Float(short(h as f32)), None));
                        }
                        self.push(node, "clamp", attrs, vec![x], vec![]);
                    }
                }
            }
            "MaxPool" | "AveragePool" => {
                let x = self.value(node, 0)?;
                if node.output.len() > 1
                    && node.output[1..]
                        .iter()
                        .any(|o| !o.is_empty() && consumers.contains_key(o))
                {
                    return Err(self.err(node, "its indices output is used; qc's max pool has none".into()));
                }
                let kernel =
                    attr_ints(node, "kernel_shape").ok_or_else(|| self.err(node, "has no kernel_shape".into()))?;
                let rank = kernel.len();
                if !(1..=2).contains(&rank) {
                    return Err(self.err(node, format!("a {rank}-d window; qc imports 1-d and 2-d pooling")));
                }
                let (stride, pad, dilation) = self.spatial(node, rank, &kernel)?;
                let ceil = attr_int(node, "ceil_mode", 0) != 0;
                let mut attrs = vec![
                    ("kernel", Attr::ints(&kernel), None),
                    ("stride", Attr::ints(&stride), Some(Attr::ints(&kernel))),
                    ("pad", Attr::ints(&pad), Some(int(0))),
                ];
                let op = if op_type == "MaxPool" {
                    attrs.push(("dilation", Attr::ints(&dilation), Some(int(1))));
                    if rank == 1 {
                        "max_pool1d"
                    } else {
                        "max_pool2d"
                    }
                } else {
                    if dilation.iter().any(|&d| d != 1) {
                        return Err(self.err(node, "a dilated average pool; PyTorch's has no dilation".into()));
                    }
                    // Without padding, counting the padding or not is the same.
                    let include = attr_int(node, "count_include_pad", 0) != 0 || pad.iter().all(|&p| p == 0);
                    attrs.push(("count_include_pad", Attr::Bool(include), Some(Attr::Bool(true))));
                    if rank == 1 {
                        "avg_pool1d"
                    } else {
                        "avg_pool2d"
                    }
                };
                attrs.push(("ceil_mode", Attr::Bool(ceil), Some(Attr::Bool(false))));
                self.push(node, op, attrs, vec![x], vec![]);
            }
            "ReduceMean" => {
                let x = self.value(node, 0)?;
                let axes = match self.constant(node, 1)? {
                    Some(v) => v.iter().map(|&a| a as i64).collect(),
                    None => attr_ints(node, "axes").unwrap_or_default(),
                };
                let mut axes = axes;
                axes.sort();
                if attr_int(node, "keepdims", 1) != 1 || !(axes == [2, 3] || axes == [-2, -1]) {
                    return Err(self.err(node, format!("axes {axes:?}, keepdims {}: qc imports ReduceMean only as a global average pool (axes [2, 3], keepdims 1)", attr_int(node, "keepdims", 1))));
                }
                self.push(node, "global_avg_pool", vec![], vec![x], vec![]);
            }
            "Flatten" => {
                let x = self.value(node, 0)?;
                let axis = attr_int(node, "axis", 1);
                if axis != 1 {
                    return Err(self.err(
                        node,
                        format!("axis {axis}: qc imports Flatten with axis 1 (torch.flatten(x, 1))"),
                    ));
                }
                self.push(node, "flatten", vec![], vec![x], vec![]);
            }
            "Reshape" => {
                let x = self.value(node, 0)?;
                let shape = self.constant(node, 1)?.unwrap_or_default();
                let batch = self
                    .model
                    .graph
                    .as_ref()
                    .and_then(|g| g.input.first())
                    .and_then(first_dim);
                let first_ok = shape
                    .first()
                    .is_some_and(|&d| d == -1.0 || d == 0.0 || Some(d as i64) == batch);
                if shape.len() != 2 || !first_ok {
                    return Err(self.err(
                        node,
                        format!("to shape {shape:?}: qc imports Reshape only to [batch, features] (a flatten)"),
                    ));
                }
                self.push(node, "flatten", vec![], vec![x], vec![]);
            }
            "Gemm" => {
                let x = self.value(node, 0)?;
                let (_, wd) = self.init(node, 1, "weight")?;
                let (ta, tb) = (attr_int(node, "transA", 0), attr_int(node, "transB", 0));
                let (alpha, beta) = (attr_float(node, "alpha", 1.0), attr_float(node, "beta", 1.0));
                if ta != 0 || alpha != 1.0 || beta != 1.0 || wd.len() != 2 {
                    return Err(self.err(
                        node,
                        "qc imports Gemm as a linear layer: transA 0, alpha 1, beta 1, a 2-d weight".into(),
                    ));
                }
                let out = if tb != 0 { wd[0] } else { wd[1] };
                let mut params = vec![self.param(node, 1, "weight", tb == 0)?];
                let bias = node.input.get(2).is_some_and(|b| !b.is_empty());
                if bias {
                    params.push(self.param(node, 2, "bias", false)?);
                }
                let attrs = vec![
                    ("out", int(out as i64), None),
                    ("bias", Attr::Bool(bias), Some(Attr::Bool(true))),
                ];
                self.push(node, "linear", attrs, vec![x], params);
            }
            "MatMul" => {
                let x = self.value(node, 0)?;
                let (_, wd) = self.init(node, 1, "weight")?;
                if wd.len() != 2 {
                    return Err(self.err(
                        node,
                        "qc imports MatMul as a linear layer: a 2-d weight initializer".into(),
                    ));
                }
                let mut params = vec![self.param(node, 1, "weight", true)?];
                // MatMul + Add(bias initializer): one linear with a bias.
                let out_name = node.output.first().cloned().unwrap_or_default();
                let add = consumers
                    .get(&out_name)
                    .filter(|c| c.len() == 1)
                    .map(|c| &all[c[0]])
                    .filter(|a| a.op_type() == "Add");
                let mut fused = None;
                if let Some(add) = add {
                    let other = add.input.iter().find(|i| **i != out_name);
                    if let Some(b) = other.and_then(|o| self.tensor(o)) {
                        if weights::dims(b)? == [wd[1]] {
                            let key = other.cloned().unwrap_or_default();
                            let name = self.aliases.get(&key).cloned().unwrap_or_else(|| key.clone());
                            params.push(Param {
                                suffix: "bias",
                                source: ParamSource::Init {
                                    name,
                                    key,
                                    transpose: false,
                                },
                            });
                            fused = Some(add.name().to_string());
                        }
                    }
                }
                let bias = fused.is_some();
                let attrs = vec![
                    ("out", int(wd[1] as i64), None),
                    ("bias", Attr::Bool(bias), Some(Attr::Bool(true))),
                ];
                self.push(node, "linear", attrs, vec![x], params);
                if let Some(add) = fused {
                    self.taken.insert(add, self.layers.len() - 1);
                }
            }
            "Add" | "Mul" => {
                let (a, b) = (self.value(node, 0)?, self.value(node, 1)?);
                self.push(
                    node,
                    if op_type == "Add" { "add" } else { "mul" },
                    vec![],
                    vec![a, b],
                    vec![],
                );
            }
            "Concat" => {
                let mut inputs = vec![];
                for i in 0..node.input.len() {
                    inputs.push(self.value(node, i)?);
                }
                let axis = attr_int(node, "axis", 1);
                self.push(node, "concat", vec![("dim", int(axis), Some(int(1)))], inputs, vec![]);
            }
            _ => {
                return Err(ImportError::Unsupported {
                    node: node.name().to_string(),
                    op: op_type.to_string(),
                })
            }
        }
        Ok(())
    }
}

fn first_dim(i: &crate::proto::ValueInfoProto) -> Option<i64> {
    dims_of(i).first().copied().flatten()
}

fn dims_of(i: &crate::proto::ValueInfoProto) -> Vec<Option<i64>> {
    let Some(type_proto::Value::TensorType(t)) = i.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return vec![];
    };
    t.shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match d.value {
                    Some(crate::proto::tensor_shape_proto::dimension::Value::DimValue(v)) => Some(v),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The module path an initializer's name gives when it is a state_dict key
/// (`layer1.0.conv1.weight` → `layer1.0.conv1`); none for the exporters' own names
/// (`onnx::Conv_193`, `val_12`).
pub fn key_module(name: &str, suffix: &str) -> Option<String> {
    let module = name.strip_suffix(suffix)?.strip_suffix('.')?;
    let ok = !module.is_empty()
        && module
            .split('.')
            .all(|c| !c.is_empty() && c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_'));
    ok.then(|| module.to_string())
}

/// Reads the model's graph into layers.
pub fn read(model: &ModelProto, base_dir: Option<&Path>) -> Result<Graph, ImportError> {
    let g = model.graph.as_ref().ok_or(ImportError::NoGraph)?;
    let inits: HashMap<String, TensorProto> = g
        .initializer
        .iter()
        .map(|t| (t.name().to_string(), t.clone()))
        .collect();
    let mut r = Reader {
        model,
        base_dir,
        inits,
        consts: HashMap::new(),
        values: HashMap::new(),
        layers: vec![],
        taken: HashMap::new(),
        aliases: HashMap::new(),
    };
    let mut inputs = vec![];
    for i in g.input.iter().filter(|i| !r.inits.contains_key(i.name())) {
        r.values.insert(i.name().to_string(), Src::Input(inputs.len()));
        inputs.push(Input {
            name: i.name().to_string(),
            dims: dims_of(i),
        });
    }
    if inputs.is_empty() {
        return Err(ImportError::Graph("the graph has no input".into()));
    }
    let mut consumers: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, n) in g.node.iter().enumerate() {
        for input in &n.input {
            consumers.entry(input.clone()).or_default().push(i);
        }
    }
    for o in &g.output {
        consumers.entry(o.name().to_string()).or_default();
    }
    for node in &g.node {
        r.node(node, &consumers, &g.node)?;
    }
    let mut outputs = vec![];
    for o in &g.output {
        let src = r.values.get(o.name()).copied().ok_or_else(|| {
            ImportError::Graph(format!(
                "output `{}` is not computed from the input (a constant output)",
                o.name()
            ))
        })?;
        outputs.push(src);
    }
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain().is_empty() || o.domain() == "ai.onnx")
        .map(|o| o.version())
        .unwrap_or(0);
    Ok(Graph {
        inputs,
        layers: r.layers,
        outputs,
        initializers: r.inits,
        producer: format!("{} {}", model.producer_name(), model.producer_version())
            .trim()
            .to_string(),
        opset,
        nodes: g.node.len(),
    })
}

/// The values of every parameter, or where the first missing one is stored.
pub fn payloads(graph: &Graph, base_dir: Option<&Path>) -> Result<HashMap<String, Payload>, ImportError> {
    let mut out = HashMap::new();
    for layer in &graph.layers {
        for p in &layer.params {
            if let ParamSource::Init { name, .. } = &p.source {
                if let Some(t) = graph.initializers.get(name) {
                    out.insert(name.clone(), weights::payload(t, base_dir)?);
                }
            }
        }
    }
    Ok(out)
}
