//! Validation of a [`Program`]: everything that must hold before any step runs, checked once when a
//! program is loaded or built into an executor, so that running never panics on a malformed
//! program (one read from a `.qmodel` file in particular). Each failure is a [`ProgramError`]
//! naming the step, value or constant.
//!
//! Checked here: value ids and constant ids in range; every value computed once, before it is
//! read (topological order); value types (`f32` without parameters, `u8`/`i8` with parameters
//! whose range fits the type, channels last only at rank 3/4); each op's arity, input/output
//! dtypes, layouts and parameter rules; constant dtypes; and shapes, by running [`infer`] on the
//! declared input shapes with batch sizes 1 and 2 and comparing with every declared shape.
//!
//! [`infer`] is also what the executor runs before each step on the actual shapes (cheap), so a
//! tensor never reaches a kernel or the interpreter with a shape it cannot handle.

use crate::kernels::{Axis, Conv2dGeom, Pool2dGeom};
use crate::program::{
    broadcast_shape, from_torch_order, to_torch_order, window_out, ConstId, FloatOp, Layout, Program, ProgramError,
    QuantOp, Step, StepOp, ValueInfo, Window,
};
use crate::quant::RequantRule;
use crate::tensor::DType;

/// Largest kernel, stride, padding, dilation or adaptive output size accepted.
pub const MAX_WINDOW: usize = 1 << 16;
/// Largest element count of any value or constant.
pub const MAX_ELEMENTS: usize = 1 << 31;

/// Checks a program once; see the module doc.
pub fn validate(p: &Program) -> Result<(), ProgramError> {
    let count = p.values.len();
    for v in &p.values {
        check_value(v)?;
    }
    for (i, c) in p.constants.iter().enumerate() {
        let n = elements(&c.shape).ok_or_else(|| ProgramError::Value {
            value: format!("constant {i}"),
            message: format!("shape {:?} has too many elements", c.shape),
        })?;
        if n != c.data_len() {
            return Err(ProgramError::Value {
                value: format!("constant {i}"),
                message: format!("shape {:?} needs {n} elements, it holds {}", c.shape, c.data_len()),
            });
        }
    }
    let mut computed = vec![false; count];
    for &id in &p.inputs {
        if id >= count {
            return Err(ProgramError::ValueOutOfRange {
                what: "an input".into(),
                id,
                count,
            });
        }
        if computed[id] {
            return Err(ProgramError::ComputedTwice {
                value: p.values[id].name.clone(),
            });
        }
        computed[id] = true;
    }
    for (index, step) in p.steps.iter().enumerate() {
        let name = p.value_name(step.output).to_string();
        if step.output >= count {
            return Err(ProgramError::ValueOutOfRange {
                what: format!("step {index}'s output"),
                id: step.output,
                count,
            });
        }
        for &i in &step.inputs {
            if i >= count {
                return Err(ProgramError::ValueOutOfRange {
                    what: format!("step {index} (`{name}`)"),
                    id: i,
                    count,
                });
            }
            if !computed[i] {
                return Err(ProgramError::NotYetComputed {
                    index,
                    step: name,
                    value: p.values[i].name.clone(),
                });
            }
        }
        if computed[step.output] {
            return Err(ProgramError::ComputedTwice { value: name });
        }
        computed[step.output] = true;
        check_step(p, index, step)?;
    }
    for &id in &p.outputs {
        if id >= count {
            return Err(ProgramError::ValueOutOfRange {
                what: "an output".into(),
                id,
                count,
            });
        }
        if !computed[id] {
            return Err(ProgramError::OutputNotComputed {
                value: p.values[id].name.clone(),
            });
        }
    }
    // Shapes: propagate concrete shapes for two batch sizes; every declared fixed dim must match.
    for batch in [1, 2] {
        let mut shapes: Vec<Option<Vec<usize>>> = vec![None; count];
        for &id in &p.inputs {
            let shape: Vec<usize> = p.values[id].shape.iter().map(|d| d.unwrap_or(batch)).collect();
            if elements(&shape).is_none() {
                return Err(ProgramError::Value {
                    value: p.values[id].name.clone(),
                    message: format!("shape {} has over {MAX_ELEMENTS} elements", p.values[id].shape_string()),
                });
            }
            shapes[id] = Some(shape);
        }
        for (index, step) in p.steps.iter().enumerate() {
            let ins: Vec<&[usize]> = step
                .inputs
                .iter()
                .map(|&i| shapes[i].as_deref().unwrap_or(&[]))
                .collect();
            let out = infer(p, step, &ins).map_err(|message| step_error(p, index, step, message))?;
            let declared = &p.values[step.output].shape;
            let agrees =
                declared.len() == out.len() && declared.iter().zip(&out).all(|(d, o)| d.is_none_or(|d| d == *o));
            if !agrees {
                return Err(step_error(
                    p,
                    index,
                    step,
                    format!(
                        "computes shape {out:?} (batch {batch}) but its output is declared {}",
                        p.values[step.output].shape_string()
                    ),
                ));
            }
            shapes[step.output] = Some(out);
        }
    }
    Ok(())
}

fn elements(shape: &[usize]) -> Option<usize> {
    shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= MAX_ELEMENTS)
}

fn check_value(v: &ValueInfo) -> Result<(), ProgramError> {
    let err = |message: String| ProgramError::Value {
        value: v.name.clone(),
        message,
    };
    if v.shape.contains(&Some(0)) {
        return Err(err(format!("shape {} has a zero dimension", v.shape_string())));
    }
    if v.layout == Layout::ChannelsLast && !(3..=4).contains(&v.shape.len()) {
        return Err(err(format!(
            "a channels-last value has rank 3 or 4, not {}",
            v.shape.len()
        )));
    }
    match (v.dtype, &v.quant) {
        (DType::F32, None) => Ok(()),
        (DType::F32, Some(_)) => Err(err("an f32 value has no quantization parameters".into())),
        (DType::U8 | DType::I8, None) => Err(err(format!("a {} value needs quantization parameters", v.dtype))),
        (DType::U8 | DType::I8, Some(q)) => {
            let (lo, hi) = if v.dtype == DType::U8 { (0, 255) } else { (-128, 127) };
            let r = q.range();
            if r.qmin() < lo || r.qmax() > hi {
                Err(err(format!(
                    "range [{}, {}] does not fit {}",
                    r.qmin(),
                    r.qmax(),
                    v.dtype
                )))
            } else {
                Ok(())
            }
        }
        (d, _) => Err(err(format!("values are f32, u8 or i8, not {d}"))),
    }
}

fn step_error(p: &Program, index: usize, step: &Step, message: String) -> ProgramError {
    ProgramError::Step {
        index,
        step: p.value_name(step.output).to_string(),
        op: step.op.name(),
        message,
    }
}

/// The static checks of one step (ids already in range): arity, dtypes, layouts, parameters,
/// constant dtypes.
fn check_step(p: &Program, index: usize, step: &Step) -> Result<(), ProgramError> {
    let check = StepCheck {
        p,
        index,
        step,
        ins: step.inputs.iter().map(|&i| &p.values[i]).collect(),
        out: &p.values[step.output],
    };
    match &step.op {
        StepOp::Float(op) => check.float(op),
        StepOp::Quant(op) => check.quant(op),
    }
}

/// One step under [`check_step`]: its inputs' and output's declarations, and the checks each op
/// is made of.
struct StepCheck<'a> {
    p: &'a Program,
    index: usize,
    step: &'a Step,
    ins: Vec<&'a ValueInfo>,
    out: &'a ValueInfo,
}

impl StepCheck<'_> {
    fn fail(&self, message: String) -> ProgramError {
        step_error(self.p, self.index, self.step, message)
    }

    /// The step takes `n` inputs.
    fn arity(&self, n: usize) -> Result<(), ProgramError> {
        if self.ins.len() == n {
            Ok(())
        } else {
            Err(self.fail(format!("takes {n} input(s), has {}", self.ins.len())))
        }
    }

    /// Constant `id` exists and is `dtype`.
    fn constant(&self, id: ConstId, dtype: DType, what: &str) -> Result<(), ProgramError> {
        let c = self.p.constants.get(id).ok_or_else(|| ProgramError::ConstOutOfRange {
            index: self.index,
            step: self.out.name.clone(),
            id,
            count: self.p.constants.len(),
        })?;
        if c.dtype() != dtype {
            return Err(ProgramError::Constant {
                index: self.index,
                step: self.out.name.clone(),
                op: self.step.op.name(),
                constant: id,
                message: format!("the {what} must be {dtype}, found {}", c.dtype()),
            });
        }
        Ok(())
    }

    /// `v` is one of `dtypes`, in `layout` when given.
    fn is(&self, v: &ValueInfo, dtypes: &[DType], layout: Option<Layout>, what: &str) -> Result<(), ProgramError> {
        if !dtypes.contains(&v.dtype) {
            let names: Vec<&str> = dtypes.iter().map(|d| d.name()).collect();
            return Err(self.fail(format!(
                "{what} `{}` must be {}, found {}",
                v.name,
                names.join(" or "),
                v.dtype
            )));
        }
        if let Some(l) = layout {
            if v.layout != l {
                return Err(self.fail(format!(
                    "{what} `{}` must be in the {} layout, found {}",
                    v.name,
                    l.name(),
                    v.layout.name()
                )));
            }
        }
        Ok(())
    }

    /// The output keeps the first input's quantization parameters.
    fn same_params(&self) -> Result<(), ProgramError> {
        let (i, o) = (self.ins[0], self.out);
        if i.quant == o.quant {
            Ok(())
        } else {
            Err(self.fail(format!(
                "keeps its input's quantization parameters, but `{}` has {:?} and `{}` {:?}",
                i.name, i.quant, o.name, o.quant
            )))
        }
    }

    /// A float step: `f32` values in the torch layout, `f32` constants.
    fn float(&self, op: &FloatOp) -> Result<(), ProgramError> {
        for v in &self.ins {
            self.is(v, &[DType::F32], Some(Layout::Torch), "input")?;
        }
        self.is(self.out, &[DType::F32], Some(Layout::Torch), "output")?;
        match op {
            FloatOp::Conv { weight, bias, .. } | FloatOp::Linear { weight, bias } => {
                self.arity(1)?;
                self.constant(*weight, DType::F32, "weight")?;
                if let Some(b) = bias {
                    self.constant(*b, DType::F32, "bias")?;
                }
            }
            FloatOp::BatchNorm {
                weight,
                bias,
                mean,
                var,
                ..
            } => {
                self.arity(1)?;
                for (c, what) in [
                    (weight, "weight"),
                    (bias, "bias"),
                    (mean, "running mean"),
                    (var, "running variance"),
                ] {
                    self.constant(*c, DType::F32, what)?;
                }
            }
            FloatOp::Clamp { min, max } => {
                self.arity(1)?;
                if min.partial_cmp(max).is_none_or(|o| o.is_gt()) {
                    return Err(self.fail(format!("clamp bounds [{min}, {max}] are NaN or inverted")));
                }
            }
            FloatOp::Add | FloatOp::Mul => self.arity(2)?,
            FloatOp::Concat { .. } => {
                if self.ins.is_empty() {
                    return Err(self.fail("takes at least one input".into()));
                }
            }
            FloatOp::Relu
            | FloatOp::MaxPool { .. }
            | FloatOp::AvgPool { .. }
            | FloatOp::AdaptiveAvgPool { .. }
            | FloatOp::Flatten { .. }
            | FloatOp::Curve(_)
            | FloatOp::Identity => self.arity(1)?,
        }
        Ok(())
    }

    /// An int8 step: dtypes, layouts, parameters kept where the op keeps them, constants.
    fn quant(&self, op: &QuantOp) -> Result<(), ProgramError> {
        let q8 = [DType::U8, DType::I8];
        let u8_ = [DType::U8];
        let cl = Some(Layout::ChannelsLast);
        match op {
            QuantOp::Quantize => {
                self.arity(1)?;
                self.is(self.ins[0], &[DType::F32], None, "input")?;
                self.is(self.out, &q8, None, "output")?;
            }
            QuantOp::Dequantize => {
                self.arity(1)?;
                self.is(self.ins[0], &q8, None, "input")?;
                self.is(self.out, &[DType::F32], None, "output")?;
            }
            QuantOp::QConv {
                weight,
                weight_scales,
                bias,
                act,
                requantize,
                ..
            }
            | QuantOp::QLinear {
                weight,
                weight_scales,
                bias,
                act,
                requantize,
            } => {
                self.arity(1)?;
                let layout = if matches!(op, QuantOp::QConv { .. }) {
                    cl
                } else {
                    Some(Layout::Torch)
                };
                self.is(self.ins[0], &u8_, layout, "input")?;
                self.is(self.out, &u8_, layout, "output")?;
                self.constant(*weight, DType::I8, "weight")?;
                self.constant(*weight_scales, DType::F32, "weight scales")?;
                if let Some(b) = bias {
                    // An `f32` bias is added in float before the multiply: the float rule only.
                    let float_bias = *requantize == RequantRule::Float
                        && self.p.constants.get(*b).is_some_and(|c| c.dtype() == DType::F32);
                    self.constant(*b, if float_bias { DType::F32 } else { DType::I32 }, "bias")?;
                }
                act.check().map_err(|e| self.fail(e.to_string()))?;
            }
            QuantOp::QAdd { .. } => {
                self.arity(2)?;
                for v in &self.ins {
                    self.is(v, &u8_, Some(self.out.layout), "input")?;
                }
                self.is(self.out, &u8_, None, "output")?;
            }
            QuantOp::QMaxPool { .. } | QuantOp::QAvgPool { .. } | QuantOp::QAdaptiveAvgPool { .. } => {
                self.arity(1)?;
                self.is(self.ins[0], &u8_, cl, "input")?;
                self.is(self.out, &u8_, cl, "output")?;
                self.same_params()?;
            }
            QuantOp::QConcat => {
                if self.ins.is_empty() {
                    return Err(self.fail("takes at least one input".into()));
                }
                for v in &self.ins {
                    self.is(v, &u8_, Some(self.out.layout), "input")?;
                }
                self.is(self.out, &u8_, None, "output")?;
                if self.out.layout == Layout::Torch && self.out.shape.len() != 2 {
                    return Err(self.fail(format!(
                        "concatenates channels: channels-last values or rank-2 values, not rank {} in the torch layout",
                        self.out.shape.len()
                    )));
                }
            }
            QuantOp::QFlatten => {
                self.arity(1)?;
                self.is(self.ins[0], &u8_, None, "input")?;
                self.is(self.out, &u8_, Some(Layout::Torch), "output")?;
                self.same_params()?;
            }
            QuantOp::QClamp { act } => {
                self.arity(1)?;
                self.is(self.ins[0], &u8_, Some(self.out.layout), "input")?;
                self.is(self.out, &u8_, None, "output")?;
                self.same_params()?;
                act.check().map_err(|e| self.fail(e.to_string()))?;
            }
            QuantOp::QLut(_) => {
                self.arity(1)?;
                self.is(self.ins[0], &u8_, Some(self.out.layout), "input")?;
                self.is(self.out, &u8_, None, "output")?;
            }
            QuantOp::QMul => {
                self.arity(2)?;
                for v in &self.ins {
                    self.is(v, &u8_, Some(self.out.layout), "input")?;
                    if v.shape.len() != self.out.shape.len() {
                        return Err(self.fail(format!(
                            "multiplies values of the output's rank {}, but `{}` has rank {}",
                            self.out.shape.len(),
                            v.name,
                            v.shape.len()
                        )));
                    }
                }
                self.is(self.out, &u8_, None, "output")?;
            }
        }
        Ok(())
    }
}

fn check_window(w: &Window, spatial: usize) -> Result<(), String> {
    let lens = [w.kernel.len(), w.stride.len(), w.pad.len(), w.dilation.len()];
    if lens.iter().any(|&l| l != spatial) {
        return Err(format!(
            "a window over {spatial} spatial dim(s) needs {spatial} kernel, stride, padding and dilation values, found {lens:?}"
        ));
    }
    let all = w.kernel.iter().chain(&w.stride).chain(&w.pad).chain(&w.dilation);
    if all.clone().any(|&v| v > MAX_WINDOW) {
        return Err(format!("window parameters are limited to {MAX_WINDOW}: {w:?}"));
    }
    if w.kernel.iter().chain(&w.stride).chain(&w.dilation).any(|&v| v == 0) {
        return Err(format!("kernel, stride and dilation must be positive: {w:?}"));
    }
    Ok(())
}

/// Output sizes of a window over the spatial dims `dims`.
fn window_dims(w: &Window, dims: &[usize]) -> Result<Vec<usize>, String> {
    check_window(w, dims.len())?;
    dims.iter()
        .enumerate()
        .map(|(i, &n)| {
            window_out(n, w.kernel[i], w.stride[i], w.pad[i], w.dilation[i], w.ceil_mode).ok_or_else(|| {
                format!(
                    "a window of kernel {}, stride {}, padding {}, dilation {} does not fit an input of size {n}",
                    w.kernel[i], w.stride[i], w.pad[i], w.dilation[i]
                )
            })
        })
        .collect()
}

fn pool_pad(w: &Window) -> Result<(), String> {
    if w.pad.iter().zip(&w.kernel).any(|(&p, &k)| 2 * p > k) {
        return Err(format!("pooling padding must be at most half the kernel: {w:?}"));
    }
    Ok(())
}

fn spatial_rank(x: &[usize]) -> Result<usize, String> {
    match x.len() {
        3 | 4 => Ok(x.len() - 2),
        r => Err(format!("needs a rank-3 or rank-4 input, found rank {r}")),
    }
}

/// Axes of a (1-D or 2-D) window in the kernels' form; 1-D gets the unit H axis.
fn axes(w: &Window) -> (Axis, Axis) {
    let a = |i: usize| Axis::new(w.kernel[i], w.stride[i], w.pad[i], w.dilation[i]);
    if w.kernel.len() == 1 {
        (Axis::new(1, 1, 0, 1), a(0))
    } else {
        (a(0), a(1))
    }
}

/// Channels-last `[N, (H,) W, C]` as `(n, h, w, c)`.
fn nhwc(x: &[usize]) -> (usize, usize, usize, usize) {
    if x.len() == 3 {
        (x[0], 1, x[1], x[2])
    } else {
        (x[0], x[1], x[2], x[3])
    }
}

/// The output shape of `step` for the concrete input shapes `ins` (in memory order), or why the
/// step cannot run on them. Checks everything the interpreter and the kernels index with.
pub fn infer(p: &Program, step: &Step, ins: &[&[usize]]) -> Result<Vec<usize>, String> {
    let out = infer_unchecked(p, step, ins)?;
    if out.contains(&0) || elements(&out).is_none() {
        return Err(format!(
            "the output shape {out:?} is empty or has over {MAX_ELEMENTS} elements"
        ));
    }
    Ok(out)
}

fn const_shape(p: &Program, id: ConstId) -> Result<&[usize], String> {
    p.constants
        .get(id)
        .map(|c| c.shape.as_slice())
        .ok_or_else(|| format!("constant {id} does not exist"))
}

fn expect_shape(p: &Program, id: ConstId, what: &str, want: &[usize]) -> Result<(), String> {
    let got = const_shape(p, id)?;
    if got == want {
        Ok(())
    } else {
        Err(format!(
            "the {what} (constant {id}) must have shape {want:?}, found {got:?}"
        ))
    }
}

fn infer_unchecked(p: &Program, step: &Step, ins: &[&[usize]]) -> Result<Vec<usize>, String> {
    let x = *ins.first().ok_or("has no input")?;
    if x.contains(&0) {
        return Err(format!("input shape {x:?} is empty"));
    }
    match &step.op {
        StepOp::Float(op) => infer_float(p, op, ins, x),
        StepOp::Quant(op) => infer_quant(p, step, op, ins, x),
    }
}

/// [`infer_unchecked`] for a float op; `x` is the first input's shape (not empty).
fn infer_float(p: &Program, op: &FloatOp, ins: &[&[usize]], x: &[usize]) -> Result<Vec<usize>, String> {
    match op {
        FloatOp::Conv {
            window,
            groups,
            weight,
            bias,
        } => {
            let s = spatial_rank(x)?;
            if window.ceil_mode {
                return Err("a convolution has no ceil_mode".into());
            }
            let w = const_shape(p, *weight)?;
            let g = *groups;
            if w.len() != x.len() || g == 0 || w[0] % g != 0 || w[1].checked_mul(g) != Some(x[1]) {
                return Err(format!(
                    "weight {w:?} with {g} groups does not fit input {x:?} ([Cout, Cin/groups, k...], groups dividing Cout)"
                ));
            }
            if w[2..] != window.kernel[..] {
                return Err(format!("weight {w:?} does not match kernel {:?}", window.kernel));
            }
            if let Some(b) = bias {
                expect_shape(p, *b, "bias", &[w[0]])?;
            }
            let mut out = vec![x[0], w[0]];
            out.extend(window_dims(window, &x[2..2 + s])?);
            Ok(out)
        }
        FloatOp::BatchNorm {
            weight,
            bias,
            mean,
            var,
            ..
        } => {
            if x.len() < 2 {
                return Err(format!("needs a rank >= 2 input, found {x:?}"));
            }
            for (c, what) in [
                (weight, "weight"),
                (bias, "bias"),
                (mean, "running mean"),
                (var, "running variance"),
            ] {
                expect_shape(p, *c, what, &[x[1]])?;
            }
            Ok(x.to_vec())
        }
        FloatOp::Relu | FloatOp::Clamp { .. } | FloatOp::Identity => Ok(x.to_vec()),
        FloatOp::MaxPool { window } | FloatOp::AvgPool { window, .. } => {
            let s = spatial_rank(x)?;
            let dims = window_dims(window, &x[2..2 + s])?;
            pool_pad(window)?;
            if matches!(op, FloatOp::AvgPool { .. }) && window.dilation.iter().any(|&d| d != 1) {
                return Err("average pooling has no dilation".into());
            }
            let mut out = x[..2].to_vec();
            out.extend(dims);
            Ok(out)
        }
        FloatOp::AdaptiveAvgPool { output } => {
            let s = spatial_rank(x)?;
            if output.len() != s || output.iter().any(|&o| o == 0 || o > MAX_WINDOW) {
                return Err(format!("output size {output:?} does not fit a rank-{} input", x.len()));
            }
            let mut out = x[..2].to_vec();
            out.extend(output);
            Ok(out)
        }
        FloatOp::Flatten { start_dim, end_dim } => {
            if !(start_dim <= end_dim && *end_dim < x.len()) {
                return Err(format!("flatten({start_dim}, {end_dim}) on rank {}", x.len()));
            }
            let mut out = x[..*start_dim].to_vec();
            out.push(x[*start_dim..=*end_dim].iter().product());
            out.extend_from_slice(&x[end_dim + 1..]);
            Ok(out)
        }
        FloatOp::Linear { weight, bias } => {
            let w = const_shape(p, *weight)?;
            if w.len() != 2 || x.last() != Some(&w[1]) || w[0] == 0 {
                return Err(format!("weight {w:?} ([out, in]) does not fit input {x:?}"));
            }
            if let Some(b) = bias {
                expect_shape(p, *b, "bias", &[w[0]])?;
            }
            let mut out = x.to_vec();
            *out.last_mut().ok_or("rank 0")? = w[0];
            Ok(out)
        }
        FloatOp::Add => same_as_all(ins, x, "add"),
        FloatOp::Concat { dim } => concat(ins, *dim),
        FloatOp::Curve(_) => Ok(x.to_vec()),
        FloatOp::Mul => broadcast(ins, "mul"),
    }
}

/// [`infer_unchecked`] for an int8 op; `x` is the first input's shape (not empty).
fn infer_quant(p: &Program, step: &Step, op: &QuantOp, ins: &[&[usize]], x: &[usize]) -> Result<Vec<usize>, String> {
    match op {
        QuantOp::Quantize | QuantOp::Dequantize => {
            let (from, to) = (value(p, step.inputs[0])?.layout, value(p, step.output)?.layout);
            if from != to && !(3..=4).contains(&x.len()) {
                return Err(format!("changes the layout of a rank-{} value", x.len()));
            }
            Ok(from_torch_order(&to_torch_order(x, from), to))
        }
        QuantOp::QConv {
            window,
            groups,
            weight,
            weight_scales,
            bias,
            ..
        } => {
            let s = spatial_rank(x)?;
            check_window(window, s)?;
            if window.ceil_mode {
                return Err("a convolution has no ceil_mode".into());
            }
            let w = const_shape(p, *weight)?;
            let g = *groups;
            let (n, h, wd, c) = nhwc(x);
            if w.len() != x.len()
                || g == 0
                || w[w.len() - 1].checked_mul(g) != Some(c)
                || w[1..w.len() - 1] != window.kernel[..]
            {
                return Err(format!(
                    "weight {w:?} with {g} groups and kernel {:?} does not fit input {x:?} ([Cout, k..., Cin/groups])",
                    window.kernel
                ));
            }
            expect_shape(p, *weight_scales, "weight scales", &[w[0]])?;
            if let Some(b) = bias {
                expect_shape(p, *b, "bias", &[w[0]])?;
            }
            let (ah, aw) = axes(window);
            let geom = Conv2dGeom {
                batch: n,
                in_h: h,
                in_w: wd,
                in_c: c,
                out_c: w[0],
                h: ah,
                w: aw,
                groups: g,
            };
            let [oh, ow] = geom.out_hw().map_err(|e| e.to_string())?;
            Ok(if s == 1 {
                vec![n, ow, w[0]]
            } else {
                vec![n, oh, ow, w[0]]
            })
        }
        QuantOp::QLinear {
            weight,
            weight_scales,
            bias,
            ..
        } => {
            let w = const_shape(p, *weight)?;
            if x.len() < 2 || w.len() != 2 || x.last() != Some(&w[1]) || w[0] == 0 {
                return Err(format!("weight {w:?} ([out, in]) does not fit input {x:?} (rank >= 2)"));
            }
            expect_shape(p, *weight_scales, "weight scales", &[w[0]])?;
            if let Some(b) = bias {
                expect_shape(p, *b, "bias", &[w[0]])?;
            }
            let mut out = x.to_vec();
            *out.last_mut().ok_or("rank 0")? = w[0];
            Ok(out)
        }
        QuantOp::QAdd { .. } => same_as_all(ins, x, "qadd"),
        QuantOp::QMaxPool { window } | QuantOp::QAvgPool { window, .. } => {
            let s = spatial_rank(x)?;
            check_window(window, s)?;
            if matches!(op, QuantOp::QAvgPool { .. }) && window.dilation.iter().any(|&d| d != 1) {
                return Err("average pooling has no dilation".into());
            }
            let (n, h, wd, c) = nhwc(x);
            let (ah, aw) = axes(window);
            let geom = Pool2dGeom {
                batch: n,
                in_h: h,
                in_w: wd,
                channels: c,
                h: ah,
                w: aw,
                ceil_mode: window.ceil_mode,
            };
            let [oh, ow] = geom.out_hw().map_err(|e| e.to_string())?;
            Ok(if s == 1 { vec![n, ow, c] } else { vec![n, oh, ow, c] })
        }
        QuantOp::QAdaptiveAvgPool { output } => {
            let s = spatial_rank(x)?;
            if output.len() != s || output.iter().any(|&o| o == 0 || o > MAX_WINDOW) {
                return Err(format!("output size {output:?} does not fit a rank-{} input", x.len()));
            }
            let mut out = vec![x[0]];
            out.extend(output);
            out.push(x[x.len() - 1]);
            Ok(out)
        }
        QuantOp::QConcat => concat(ins, x.len().saturating_sub(1)),
        QuantOp::QFlatten => {
            if x.len() < 2 {
                return Err(format!("needs a rank >= 2 input, found {x:?}"));
            }
            Ok(vec![x[0], x[1..].iter().product()])
        }
        QuantOp::QClamp { .. } | QuantOp::QLut(_) => Ok(x.to_vec()),
        QuantOp::QMul => {
            if ins.len() != 2 || ins[0].len() != ins[1].len() {
                return Err(format!("qmul needs two inputs of one rank, found {ins:?}"));
            }
            broadcast(ins, "qmul")
        }
    }
}

/// The broadcast shape of two inputs (PyTorch's rule: shapes aligned at the right, each dim
/// equal or 1), or an error naming `what`.
fn broadcast(ins: &[&[usize]], what: &str) -> Result<Vec<usize>, String> {
    match ins {
        [a, b] => broadcast_shape(a, b).ok_or_else(|| format!("{what} cannot broadcast {a:?} with {b:?}")),
        _ => Err(format!("{what} takes two inputs, found {}", ins.len())),
    }
}

/// `x` when every input has shape `x`, else an error naming `what`.
fn same_as_all(ins: &[&[usize]], x: &[usize], what: &str) -> Result<Vec<usize>, String> {
    if ins.iter().all(|s| *s == x) {
        Ok(x.to_vec())
    } else {
        Err(format!("{what} needs inputs of one shape, found {ins:?}"))
    }
}

/// Value `i` of `p`, or an error saying it does not exist.
fn value(p: &Program, i: usize) -> Result<&ValueInfo, String> {
    p.values.get(i).ok_or_else(|| format!("value {i} does not exist"))
}

fn concat(ins: &[&[usize]], dim: usize) -> Result<Vec<usize>, String> {
    let x = ins[0];
    if dim >= x.len() {
        return Err(format!("concatenation along dim {dim} of rank {}", x.len()));
    }
    let mut total = 0usize;
    for s in ins {
        let fits = s.len() == x.len() && s.iter().zip(x).enumerate().all(|(i, (a, b))| i == dim || a == b);
        if !fits || s.contains(&0) {
            return Err(format!("cannot concatenate shapes {ins:?} along dim {dim}"));
        }
        total = total.checked_add(s[dim]).ok_or("too many channels")?;
    }
    let mut out = x.to_vec();
    out[dim] = total;
    Ok(out)
}
