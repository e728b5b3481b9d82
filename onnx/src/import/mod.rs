//! `qc import`: a float ONNX graph, as PyTorch's exporters write it, as a readable recipe (one
//! statement per layer named by its PyTorch module path, repeated structures as blocks) and its
//! initializers under their PyTorch keys.

pub mod blocks;
pub mod graph;
pub mod names;
pub mod recipe;
pub mod weights;

#[cfg(test)]
mod tests;

use std::path::Path;

use prost::Message;
use qc_runtime::tensor::{Tensor, TensorData};

use crate::proto::ModelProto;
use graph::{ParamSource, SUPPORTED};
use weights::Payload;

/// Why a file cannot be imported; each says what and where, and [`ImportError::help`] what to do.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ImportError {
    #[error("not an ONNX model: {message}")]
    Decode { message: String },
    #[error("the ONNX model has no graph")]
    NoGraph,
    #[error("{0}")]
    Graph(String),
    #[error("node `{node}`: op `{op}` is not supported")]
    Unsupported { node: String, op: String },
    #[error("node `{node}` ({op}): {message}")]
    Node { node: String, op: String, message: String },
    #[error("initializer `{tensor}` {message}")]
    Tensor { tensor: String, message: String },
}

impl ImportError {
    /// What to do about it.
    pub fn help(&self) -> String {
        match self {
            ImportError::Decode { .. } | ImportError::NoGraph => {
                "give a model written by `torch.onnx.export` (a binary ONNX ModelProto, usually `.onnx`)".into()
            }
            ImportError::Unsupported { .. } => format!("qc imports these ONNX ops: {}", SUPPORTED.join(", ")),
            ImportError::Graph(_) | ImportError::Node { .. } => {
                "export the model in eval mode with `torch.onnx.export(model, (x,), \"model.onnx\")`; qc imports the ops listed in `qc import --help`".into()
            }
            ImportError::Tensor { .. } => {
                "export again with `torch.onnx.export`, or keep the external data file next to the model".into()
            }
        }
    }
}

/// What `qc import` made of a model.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The recipe text.
    pub recipe: String,
    /// The parameters under their PyTorch keys, in the recipe's order; `None` when the model
    /// holds no weight values (external data that is not there).
    pub weights: Option<Vec<(String, Tensor)>>,
    /// Why there are no weights, when there are none.
    pub no_weights: Option<String>,
    pub layers: usize,
    /// Each block and how often it is used.
    pub blocks: Vec<(String, usize)>,
    pub batch_norms: usize,
    pub folded_bn: bool,
    pub keys: usize,
}

/// How to import.
pub struct Options<'a> {
    /// The model's name in the recipe (`model NAME { ... }`).
    pub model: &'a str,
    /// The source, as the header names it.
    pub source: &'a str,
    /// Where external data files are looked for (the model's folder).
    pub base_dir: Option<&'a Path>,
    /// The `weights` line's path, as the recipe should write it.
    pub weights: &'a str,
}

/// Decodes an ONNX file's bytes.
pub fn decode(bytes: &[u8]) -> Result<ModelProto, ImportError> {
    let model = ModelProto::decode(bytes).map_err(|e| ImportError::Decode { message: e.to_string() })?;
    match &model.graph {
        Some(g) if !g.node.is_empty() => Ok(model),
        Some(_) | None if bytes.is_empty() => Err(ImportError::Decode {
            message: "the file is empty".into(),
        }),
        Some(_) => Err(ImportError::Graph("the graph has no nodes".into())),
        None => Err(ImportError::NoGraph),
    }
}

/// A valid recipe identifier from a file stem (`resnet18.ts.bn` → `resnet18_ts_bn`).
pub fn model_name(stem: &str) -> String {
    let s: String = stem
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if s.starts_with(|c: char| c.is_ascii_alphabetic()) {
        s
    } else {
        format!("m_{s}")
    }
}

/// Imports an ONNX model's bytes.
pub fn import(bytes: &[u8], opts: &Options) -> Result<Imported, ImportError> {
    let model = decode(bytes)?;
    let mut g = graph::read(&model, opts.base_dir)?;
    names::assign(&mut g.layers);
    let blocks = blocks::find(&g);
    let payloads = graph::payloads(&g, opts.base_dir)?;
    let missing = payloads.values().find_map(|p| match p {
        Payload::Missing { location } => Some(location.clone()),
        Payload::Values(_) => None,
    });
    let batch_norms = g.layers.iter().filter(|l| l.op == "batch_norm").count();
    let folded_bn = batch_norms == 0
        && g.layers.iter().any(|l| {
            names::folded_bn(l)
                || (l.op.starts_with("conv")
                    && l.params.iter().any(|p| matches!(&p.source, ParamSource::Init { key, .. } if graph::key_module(key, p.suffix).is_none())))
        });
    let mut tensors = vec![];
    let mut no_weights = None;
    if let Some(location) = &missing {
        no_weights = Some(format!(
            "the model's weight values are in `{location}`, which is not next to it (the graph came without its weights)"
        ));
    } else {
        for l in &g.layers {
            for p in &l.params {
                let key = format!("{}.{}", l.name, p.suffix);
                let t = match &p.source {
                    ParamSource::Init { name, transpose, .. } => {
                        let Some(Payload::Values(t)) = payloads.get(name) else {
                            return Err(ImportError::Tensor {
                                tensor: name.clone(),
                                message: "is missing".into(),
                            });
                        };
                        if *transpose {
                            weights::transpose2(t).ok_or_else(|| ImportError::Tensor {
                                tensor: name.clone(),
                                message: "is not a float matrix".into(),
                            })?
                        } else {
                            t.clone()
                        }
                    }
                    ParamSource::NumBatchesTracked => Tensor {
                        shape: vec![],
                        data: TensorData::I64(vec![0]),
                    },
                    ParamSource::Zeros => {
                        let out = l.attrs.iter().find_map(|a| match (a.0, &a.1) {
                            ("out", graph::Attr::Int(v)) => Some(*v as usize),
                            _ => None,
                        });
                        Tensor::f32(vec![out.unwrap_or(0)], vec![0.0; out.unwrap_or(0)])
                    }
                };
                if !matches!(t.data, TensorData::F32(_) | TensorData::I64(_)) {
                    return Err(ImportError::Tensor {
                        tensor: key,
                        message: "is not float32".into(),
                    });
                }
                tensors.push((key, t));
            }
        }
    }
    let keys: usize = g.layers.iter().map(|l| l.params.len()).sum();
    let header = recipe::Header {
        model: opts.model,
        source: opts.source,
        weights: match &no_weights {
            None => Ok(opts.weights),
            Some(why) => Err(why.clone()),
        },
        folded_bn,
        batch_norms,
        keys,
    };
    let text = recipe::write(&g, &blocks, &header);
    Ok(Imported {
        recipe: text,
        weights: no_weights.is_none().then_some(tensors),
        no_weights,
        layers: g.layers.len(),
        blocks: blocks.uses(),
        batch_norms,
        folded_bn,
        keys,
    })
}
