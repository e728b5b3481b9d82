//! The executable format the compiler lowers into: values, steps in topological order, and
//! constants. Float steps today (what the reference interpreter and the tch backend execute);
//! int8 steps join them with the `lowered` stage (docs/design-later-stages.md).

use serde::{Deserialize, Serialize};

use crate::tensor::Tensor;

/// Index of a value (an input or a step's output) in `Program::values`.
pub type ValueId = usize;
/// Index of a constant in `Program::constants`.
pub type ConstId = usize;

/// What the program knows of a value before running: its name (the IR node's) and its shape,
/// with `None` for the symbolic batch dimension.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValueInfo {
    pub name: String,
    pub shape: Vec<Option<usize>>,
}

/// A sliding window: kernel, stride, padding and dilation per spatial dim (1 or 2 of them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub kernel: Vec<usize>,
    pub stride: Vec<usize>,
    pub pad: Vec<usize>,
    pub dilation: Vec<usize>,
    pub ceil_mode: bool,
}

/// One float operation, PyTorch semantics, NCHW (or NCL) layout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum FloatOp {
    /// Weight `[Cout, Cin/groups, k...]`.
    Conv {
        window: Window,
        groups: usize,
        weight: ConstId,
        bias: Option<ConstId>,
    },
    /// Inference batch norm with running statistics.
    BatchNorm {
        eps: f32,
        weight: ConstId,
        bias: ConstId,
        mean: ConstId,
        var: ConstId,
    },
    Relu,
    Clamp {
        min: f32,
        max: f32,
    },
    MaxPool {
        window: Window,
    },
    AvgPool {
        window: Window,
        count_include_pad: bool,
    },
    AdaptiveAvgPool {
        output: Vec<usize>,
    },
    Flatten {
        start_dim: usize,
        end_dim: usize,
    },
    /// Weight `[out, in]`.
    Linear {
        weight: ConstId,
        bias: Option<ConstId>,
    },
    Add,
    Concat {
        dim: usize,
    },
    Identity,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub op: FloatOp,
    pub inputs: Vec<ValueId>,
    pub output: ValueId,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Program {
    pub values: Vec<ValueInfo>,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
    pub steps: Vec<Step>,
    pub constants: Vec<Tensor>,
}

/// Why a program could not run on the inputs given.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RunError {
    #[error("the model takes {expected} inputs, {found} were given")]
    InputCount { expected: usize, found: usize },
    #[error("input `{name}` must have shape {expected}, found {found:?}")]
    InputShape {
        name: String,
        expected: String,
        found: Vec<usize>,
    },
    #[error("input `{name}` must be f32")]
    InputDType { name: String },
    #[error("`{node}` produced a non-finite value ({value}) at element {index}")]
    NonFinite { node: String, index: usize, value: f32 },
    #[error("backend: {0}")]
    Backend(String),
}

impl Program {
    /// Checks inputs against the declared shapes (any batch size).
    pub fn check_inputs(&self, inputs: &[Tensor]) -> Result<(), RunError> {
        if inputs.len() != self.inputs.len() {
            return Err(RunError::InputCount {
                expected: self.inputs.len(),
                found: inputs.len(),
            });
        }
        for (t, &id) in inputs.iter().zip(&self.inputs) {
            let info = &self.values[id];
            if t.as_f32().is_none() {
                return Err(RunError::InputDType {
                    name: info.name.clone(),
                });
            }
            let fits = t.shape.len() == info.shape.len()
                && t.shape
                    .iter()
                    .zip(&info.shape)
                    .all(|(d, want)| want.is_none_or(|w| w == *d));
            if !fits {
                let dims: Vec<String> = info
                    .shape
                    .iter()
                    .map(|d| d.map_or("N".to_string(), |n| n.to_string()))
                    .collect();
                return Err(RunError::InputShape {
                    name: info.name.clone(),
                    expected: format!("[{}]", dims.join(", ")),
                    found: t.shape.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Output length of a sliding window, PyTorch's `pooling_output_shape` exactly (floor division,
/// `ceil_mode` adding `stride - 1`, and a last window that would start in the right padding
/// dropped). `None` when a parameter is zero or the output would be empty. The compiler's shape
/// rule, the interpreter and the int8 kernels all use this one function.
pub fn window_out(n: usize, k: usize, s: usize, p: usize, d: usize, ceil_mode: bool) -> Option<usize> {
    if k == 0 || s == 0 || d == 0 || n == 0 {
        return None;
    }
    let (n, k, s, p, d) = (n as i128, k as i128, s as i128, p as i128, d as i128);
    let span = d * (k - 1) + 1;
    let extra = if ceil_mode { s - 1 } else { 0 };
    let mut out = (n + 2 * p - span + extra).div_euclid(s) + 1;
    if ceil_mode && (out - 1) * s >= n + p {
        out -= 1;
    }
    (out >= 1).then(|| usize::try_from(out).ok()).flatten()
}
