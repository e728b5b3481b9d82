//! Lowering to the runtime's `Program`: today the float stages (every parameter bound), which the
//! reference interpreter and the tch backend execute; int8 lowering joins it later
//! (docs/design-later-stages.md).

use std::collections::HashMap;

use qc_runtime::program::{FloatOp, Program, Step, ValueInfo, Window};

use crate::ir::{Module, NodeId, Stage};
use crate::ops::{Conv, Op, Pool};
use crate::types::Dim;

/// Why a module could not be lowered. These are compiler bugs or misuse of the API (a module
/// whose stage has no bound weights), not user errors.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LowerError {
    #[error("stage `{stage}` has no bound weights; lower a module at stage `float` or later")]
    Stage { stage: Stage },
    #[error("`{node}`: {message}")]
    Node { node: String, message: String },
}

fn window(kernel: &[usize], stride: &[usize], pad: &[usize], dilation: &[usize], ceil_mode: bool) -> Window {
    Window {
        kernel: kernel.to_vec(),
        stride: stride.to_vec(),
        pad: pad.to_vec(),
        dilation: dilation.to_vec(),
        ceil_mode,
    }
}

/// Lowers a float module (stage `float`) to a program whose values are named after the nodes.
pub fn lower_float(module: &Module) -> Result<Program, LowerError> {
    if module.stage < Stage::Float {
        return Err(LowerError::Stage { stage: module.stage });
    }
    let g = &module.graph;
    let mut program = Program {
        values: vec![],
        inputs: vec![],
        outputs: vec![],
        steps: vec![],
        constants: vec![],
    };
    let mut value_of: HashMap<NodeId, usize> = HashMap::new();
    let mut const_of: HashMap<String, usize> = HashMap::new();
    for id in g.topo_order() {
        let node = g.node(id);
        let fail = |message: String| LowerError::Node {
            node: node.name.clone(),
            message,
        };
        let ty = node.ty.as_ref().ok_or_else(|| fail("no type".into()))?;
        let value = program.values.len();
        program.values.push(ValueInfo::float(
            node.name.clone(),
            ty.dims
                .iter()
                .map(|d| if let Dim::Fixed(n) = d { Some(*n) } else { None })
                .collect(),
        ));
        value_of.insert(id, value);
        let rank = ty.dims.len();
        let mut param = |role: &str| -> Result<usize, LowerError> {
            let key = &node
                .params
                .iter()
                .find(|(r, _)| *r == role)
                .ok_or_else(|| fail(format!("no `{role}`")))?
                .1;
            if let Some(&c) = const_of.get(key) {
                return Ok(c);
            }
            let t = module
                .params
                .get(key)
                .and_then(|p| p.value.clone())
                .ok_or_else(|| fail(format!("`{key}` is unbound")))?;
            program.constants.push(t);
            const_of.insert(key.clone(), program.constants.len() - 1);
            Ok(program.constants.len() - 1)
        };
        let in_rank = g
            .inputs_of(id)
            .first()
            .and_then(|i| g.node(*i).ty.as_ref())
            .map_or(rank, |t| t.dims.len());
        let norm = |d: i64, r: usize| if d < 0 { (d + r as i64) as usize } else { d as usize };
        let op = match &node.op {
            Op::Input { .. } => {
                program.inputs.push(value);
                continue;
            }
            Op::Conv(Conv {
                kernel,
                stride,
                pad,
                dilation,
                groups,
                bias,
                ..
            }) => FloatOp::Conv {
                window: window(kernel, stride, pad, dilation, false),
                groups: *groups,
                weight: param("weight")?,
                bias: if *bias { Some(param("bias")?) } else { None },
            },
            Op::BatchNorm(bn) => FloatOp::BatchNorm {
                eps: bn.eps as f32,
                weight: param("weight")?,
                bias: param("bias")?,
                mean: param("running_mean")?,
                var: param("running_var")?,
            },
            Op::Relu => FloatOp::Relu,
            Op::Relu6 => FloatOp::Clamp { min: 0.0, max: 6.0 },
            Op::Clamp { min, max } => FloatOp::Clamp {
                min: *min as f32,
                max: *max as f32,
            },
            Op::MaxPool(Pool {
                kernel,
                stride,
                pad,
                dilation,
                ceil_mode,
                ..
            }) => FloatOp::MaxPool {
                window: window(kernel, stride, pad, dilation, *ceil_mode),
            },
            Op::AvgPool(Pool {
                kernel,
                stride,
                pad,
                dilation,
                ceil_mode,
                count_include_pad,
                ..
            }) => FloatOp::AvgPool {
                window: window(kernel, stride, pad, dilation, *ceil_mode),
                count_include_pad: *count_include_pad,
            },
            Op::AdaptiveAvgPool { output } => FloatOp::AdaptiveAvgPool { output: output.clone() },
            Op::GlobalAvgPool => FloatOp::AdaptiveAvgPool {
                output: vec![1; rank - 2],
            },
            Op::Flatten { start_dim, end_dim } => FloatOp::Flatten {
                start_dim: norm(*start_dim, in_rank),
                end_dim: norm(*end_dim, in_rank),
            },
            Op::Linear(l) => FloatOp::Linear {
                weight: param("weight")?,
                bias: if l.bias { Some(param("bias")?) } else { None },
            },
            Op::Add => FloatOp::Add,
            Op::Concat { dim } => FloatOp::Concat { dim: norm(*dim, rank) },
            Op::Identity | Op::Dropout { .. } => FloatOp::Identity,
        };
        let inputs = g.inputs_of(id).iter().map(|i| value_of[i]).collect();
        program.steps.push(Step {
            op: op.into(),
            inputs,
            output: value,
        });
    }
    program.outputs = g.outputs.iter().map(|(_, id)| value_of[id]).collect();
    Ok(program)
}
