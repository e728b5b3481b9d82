//! A QAT program (stage `observed` with `--qat`) as QDQ ONNX with its trained scales: each
//! activation fake quantization a QuantizeLinear/DequantizeLinear pair, each fake-quantized
//! weight an int8 initializer and its per-channel DequantizeLinear, batch norm folded as the
//! fake-quant model evaluates it, biases and the ops between in float: what the QAT model
//! computes, in the form TensorRT and ONNX Runtime read as explicit quantization.

use std::collections::HashMap;

use qc_runtime::kernels::Activation;
use qc_runtime::model::Model;
use qc_runtime::program::{FakeQuantAt, FakeQuantSite, FloatOp, QatPlan, StepOp, ValueId};
use qc_runtime::quant::{QParams, QRange};
use qc_runtime::tensor::{Tensor, TensorData};
use qc_runtime_host::fold::on_the_fly;

use super::{attr_float, attr_int, build, tensor_proto, window_attrs, Builder, ExportError};
use crate::proto::{tensor_proto::DataType, ModelProto};

/// The fake quantizations of a QAT program, found by where they apply.
pub(super) struct Sites<'p> {
    /// The site fake-quantizing each value (the output of a fake-quant node's identity step).
    on_value: HashMap<ValueId, &'p FakeQuantSite>,
    /// The site fake-quantizing each weighted step's weight.
    on_weight: HashMap<usize, &'p FakeQuantSite>,
    /// Batch-norm steps folded into the weighted step before them: step → the ONNX tensor
    /// that already holds their output.
    folded: HashMap<usize, String>,
}

/// A QAT program (`compiler::lower::lower_qat` of stage `observed` compiled with `--qat`, in a
/// [`Model`] for its inputs, outputs and normalization) as a QDQ ONNX graph that computes what
/// its fake-quantized evaluation does (observers still, batch norm with running statistics).
pub fn export_qat(model: &Model, plan: &QatPlan) -> Result<ModelProto, ExportError> {
    let mut sites = Sites {
        on_value: HashMap::new(),
        on_weight: HashMap::new(),
        folded: HashMap::new(),
    };
    for site in &plan.sites {
        match site.at {
            FakeQuantAt::Value(v) => sites.on_value.insert(v, site),
            FakeQuantAt::Weight { step, .. } => sites.on_weight.insert(step, site),
        };
    }
    build(
        Builder::new(model, Some(sites)),
        "its QAT program (fake quantization with the trained scales)",
    )
}

/// A site's trained scales and zero points (one per channel, or one).
type TrainedParams = (Vec<f32>, Vec<i64>);

/// Integer values of a zero-point or flag constant.
fn integers(t: &Tensor) -> Option<Vec<i64>> {
    match &t.data {
        TensorData::I64(v) => Some(v.clone()),
        TensorData::I32(v) => Some(v.iter().map(|&x| x as i64).collect()),
        _ => None,
    }
}

/// The ONNX element type of codes in `[qmin, qmax]`: `uint8` or `int8`.
fn code_type(qmin: i64, qmax: i64) -> Result<DataType, String> {
    match (qmin, qmax) {
        (0.., ..=255) => Ok(DataType::Uint8),
        (-128.., ..=127) => Ok(DataType::Int8),
        _ => Err(format!(
            "a quantization range of [{qmin}, {qmax}] is not 8 bits; ONNX's QuantizeLinear holds uint8 or int8"
        )),
    }
}

/// The full range of an ONNX code type.
fn type_range(t: DataType) -> (i64, i64) {
    if t == DataType::Uint8 {
        (0, 255)
    } else {
        (-128, 127)
    }
}

/// A code as the raw byte of its ONNX type.
fn code_byte(q: i64) -> u8 {
    q as i8 as u8
}

impl Builder<'_> {
    fn site_constant(&self, id: usize, site: &FakeQuantSite) -> Result<&Tensor, String> {
        self.model
            .program()
            .constants
            .get(id)
            .ok_or_else(|| format!("`{}` refers to a missing constant {id}", site.name))
    }

    /// The site's scales and zero points (one per channel, or one), or `None` when its fake
    /// quantization is switched off (`fake_quant_enabled` 0: the identity).
    fn site_params(&self, site: &FakeQuantSite) -> Result<Option<TrainedParams>, String> {
        let enabled = integers(self.site_constant(site.fake_quant_enabled, site)?)
            .ok_or_else(|| format!("`{}.fake_quant_enabled` is not an integer flag", site.name))?;
        if enabled.first() == Some(&0) {
            return Ok(None);
        }
        let scales = self
            .site_constant(site.scale, site)?
            .as_f32()
            .ok_or_else(|| format!("`{}.scale` is not f32", site.name))?
            .to_vec();
        let zero_points = integers(self.site_constant(site.zero_point, site)?)
            .ok_or_else(|| format!("`{}.zero_point` is not an integer tensor", site.name))?;
        if scales.is_empty() || scales.len() != zero_points.len() {
            return Err(format!(
                "`{}` has {} scales and {} zero points",
                site.name,
                scales.len(),
                zero_points.len()
            ));
        }
        if let Some(bad) = scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(format!(
                "`{}.scale` holds {bad}; a trained scale is positive and finite",
                site.name
            ));
        }
        // A power-of-two site quantizes with `pow2_scale` of its continuous scale.
        let scales = scales.iter().map(|&s| site.quantizing_scale(s)).collect();
        Ok(Some((scales, zero_points)))
    }

    /// The fake quantization of float tensor `x` by an activation site, named `name`: Clip to
    /// the site's range where it is narrower than the code type's (7-bit activations), then
    /// QuantizeLinear and DequantizeLinear with the trained scale and zero point.
    fn fake_quantize_value(&mut self, x: String, site: &FakeQuantSite, name: &str) -> Result<String, String> {
        let Some((scales, zero_points)) = self.site_params(site)? else {
            return Ok(x);
        };
        if scales.len() != 1 {
            return Err(format!(
                "`{}` is per channel; activations are exported per tensor",
                site.name
            ));
        }
        let (scale, zp) = (scales[0], zero_points[0]);
        let elem = code_type(site.quant_min, site.quant_max)?;
        if !(site.quant_min..=site.quant_max).contains(&zp) {
            return Err(format!(
                "`{}.zero_point` {zp} lies outside [{}, {}]",
                site.name, site.quant_min, site.quant_max
            ));
        }
        let mut input = x;
        if (site.quant_min, site.quant_max) != type_range(elem) {
            let lo = (site.quant_min - zp) as f32 * scale;
            let hi = (site.quant_max - zp) as f32 * scale;
            input = self.clip(input, lo, hi, &format!("{name}_range"));
        }
        let s = self.init_f32(format!("{name}.scale"), &[], &[scale]);
        let z = format!("{name}.zero_point");
        self.inits.push(tensor_proto(&z, &[], elem, vec![code_byte(zp)]));
        let q = format!("{name}_quantized");
        self.node(
            "QuantizeLinear",
            format!("{name}_QuantizeLinear"),
            vec![input, s.clone(), z.clone()],
            q.clone(),
            vec![],
        );
        self.node(
            "DequantizeLinear",
            format!("{name}_DequantizeLinear"),
            vec![q, s, z],
            name.to_string(),
            vec![],
        );
        Ok(name.to_string())
    }

    /// The weight of weighted step `index` (`[Cout, ...]`, float) and its bias, as the QAT
    /// model evaluates them: with a weight site, the weight (times `γ / √(var + ε)` when the
    /// step's batch norm is folded on the fly) quantized with the trained per-channel scales to
    /// int8 codes and dequantized in the graph; the batch norm folded into the bias
    /// (`(b − mean) · γ / √(var + ε) + β`, equal to the on-the-fly form's output correction and
    /// batch norm). Returns the Conv/Gemm weight input and the bias values, which the caller adds
    /// with an `Add` after the op: ONNX Runtime quantizes a Conv's or Gemm's own float bias to
    /// int32 where its weight is dequantized, which the QAT model does not do.
    fn qat_weight_and_bias(
        &mut self,
        index: usize,
        name: &str,
        weight: usize,
        bias: Option<usize>,
    ) -> Result<(String, Option<Vec<f32>>), String> {
        let p = self.model.program();
        let constant = |id: usize| {
            p.constants
                .get(id)
                .ok_or_else(|| format!("refers to a missing constant {id}"))
        };
        let w = constant(weight)?;
        let cout = w.shape[0];
        let wd = w.as_f32().ok_or("the weight is not f32")?;
        let mut b: Option<Vec<f32>> = match bias {
            Some(id) => Some(
                constant(id)?
                    .as_f32()
                    .filter(|b| b.len() == cout)
                    .ok_or_else(|| format!("the bias is not {cout} f32 values"))?
                    .to_vec(),
            ),
            None => None,
        };
        let Some(site) = self.qat.as_ref().and_then(|q| q.on_weight.get(&index)).copied() else {
            let w_name = self.init_f32(format!("{name}.weight"), &w.shape, wd);
            return Ok((w_name, b));
        };
        let mut scaled = w.clone();
        if let FakeQuantAt::Weight { bn_step: Some(bn), .. } = site.at {
            let StepOp::Float(FloatOp::BatchNorm {
                eps,
                weight: gamma,
                bias: beta,
                mean,
                var,
            }) = &p.steps[bn].op
            else {
                return Err(format!("step {bn}, the folded batch norm, is not a batch norm"));
            };
            let fold_err = |e: qc_runtime_host::fold::FoldError| format!("folding the batch norm: {e}");
            let factor = on_the_fly::scale_factor(constant(*gamma)?, constant(*var)?, *eps as f64).map_err(fold_err)?;
            scaled = on_the_fly::scale_weight(w, &factor).map_err(fold_err)?;
            let per_channel = |id: usize, what: &str| -> Result<Vec<f32>, String> {
                constant(id)?
                    .as_f32()
                    .filter(|v| v.len() == cout)
                    .map(<[f32]>::to_vec)
                    .ok_or_else(|| format!("the batch norm's {what} is not {cout} f32 values"))
            };
            let (f, m, be) = (
                per_channel_of(&factor, cout)?,
                per_channel(*mean, "running mean")?,
                per_channel(*beta, "bias")?,
            );
            let old = b.take().unwrap_or_else(|| vec![0.0; cout]);
            b = Some(
                (0..cout)
                    .map(|c| ((old[c] as f64 - m[c] as f64) * f[c] as f64 + be[c] as f64) as f32)
                    .collect(),
            );
        }
        let Some((scales, zero_points)) = self.site_params(site)? else {
            let w_name = self.init_f32(format!("{name}.weight"), &scaled.shape, scaled.as_f32().unwrap_or(&[]));
            return Ok((w_name, b));
        };
        let channels = scales.len();
        if channels != 1 && channels != cout {
            return Err(format!(
                "`{}` has {channels} scales for {cout} output channels",
                site.name
            ));
        }
        let elem = code_type(site.quant_min, site.quant_max)?;
        let range = QRange::custom(site.quant_min as i32, site.quant_max as i32).map_err(|e| e.to_string())?;
        let params: Vec<QParams> = scales
            .iter()
            .zip(&zero_points)
            .map(|(&s, &z)| QParams::new(s, z as i32, range).map_err(|e| format!("`{}`: {e}", site.name)))
            .collect::<Result<_, _>>()?;
        let sd = scaled.as_f32().ok_or("the scaled weight is not f32")?;
        let inner = sd.len() / cout.max(1);
        // PyTorch's fake quantization: `clamp(nearbyint(x · (1/s)) + zp)`, qc's `quantize`.
        let codes: Vec<u8> = sd
            .iter()
            .enumerate()
            .map(|(i, &v)| code_byte(params[(i / inner.max(1)).min(channels - 1)].quantize(v) as i64))
            .collect();
        let wq = format!("{name}.weight_quantized");
        self.inits.push(tensor_proto(&wq, &scaled.shape, elem, codes));
        let ws = self.init_f32(format!("{name}.weight_scale"), &[channels], &scales);
        let wz = format!("{name}.weight_zero_point");
        let zp_bytes = zero_points.iter().map(|&z| code_byte(z)).collect();
        self.inits.push(tensor_proto(&wz, &[channels], elem, zp_bytes));
        let wdq = format!("{name}.weight");
        let attrs = if channels == 1 {
            vec![]
        } else {
            vec![attr_int("axis", 0)]
        };
        let (ws, wz) = if channels == 1 {
            // Per tensor: scalar scale and zero point.
            let s = self.init_f32(format!("{name}.weight_scale_scalar"), &[], &scales);
            let z = format!("{name}.weight_zero_point_scalar");
            self.inits
                .push(tensor_proto(&z, &[], elem, vec![code_byte(zero_points[0])]));
            (s, z)
        } else {
            (ws, wz)
        };
        self.node(
            "DequantizeLinear",
            format!("{name}.weight_DequantizeLinear"),
            vec![wq, ws, wz],
            wdq.clone(),
            attrs,
        );
        Ok((wdq, b))
    }

    /// `y + bias` along the channel axis 1 of a rank-`rank` output, as its own `Add` node
    /// (its output the tensor `name`); `y` itself without a bias.
    fn add_bias(&mut self, y: String, bias: Option<Vec<f32>>, rank: usize, name: &str) -> String {
        let Some(b) = bias else { return y };
        let mut dims = vec![b.len()];
        dims.extend(std::iter::repeat_n(1, rank.saturating_sub(2)));
        let b = self.init_f32(format!("{name}.bias"), &dims, &b);
        self.node("Add", format!("{name}_bias_Add"), vec![y, b], name.to_string(), vec![]);
        name.to_string()
    }

    /// Float step `index` of a QAT program.
    pub(super) fn qat_step(&mut self, index: usize) -> Result<(), ExportError> {
        let p = self.model.program();
        let step = &p.steps[index];
        let out = step.output;
        let name = self.name(out).to_string();
        let fail = |message: String| ExportError::Step {
            index,
            step: name.clone(),
            op: step.op.name(),
            message,
        };
        let StepOp::Float(op) = &step.op else {
            return Err(fail("not a float step".into()));
        };
        let input = |i: usize| {
            step.inputs
                .get(i)
                .copied()
                .ok_or_else(|| fail(format!("has no input {i}")))
        };
        let folded = self.qat.as_ref().and_then(|q| q.folded.get(&index).cloned());
        if let Some(t) = folded {
            self.tensor.insert(out, t);
            return Ok(());
        }
        let y = match op {
            FloatOp::Conv {
                window,
                groups,
                weight,
                bias,
            } => {
                let x = self.float_of(input(0)?)?;
                let mut attrs = window_attrs(window, true);
                attrs.push(attr_int("group", *groups as i64));
                let (w, b) = self.qat_weight_and_bias(index, &name, *weight, *bias).map_err(fail)?;
                let y = format!("{name}_conv");
                self.node("Conv", name.clone(), vec![x, w], y.clone(), attrs);
                let y = self.add_bias(y, b, p.values[out].shape.len(), &name);
                self.fold_batch_norm_after(index, &y);
                y
            }
            FloatOp::Linear { weight, bias } => {
                let x_id = input(0)?;
                if p.values[x_id].shape.len() != 2 {
                    return Err(fail("only rank-2 inputs `[N, K]` are exported (as Gemm)".into()));
                }
                let x = self.float_of(x_id)?;
                let (w, b) = self.qat_weight_and_bias(index, &name, *weight, *bias).map_err(fail)?;
                let y = format!("{name}_gemm");
                self.node("Gemm", name.clone(), vec![x, w], y.clone(), vec![attr_int("transB", 1)]);
                let y = self.add_bias(y, b, 2, &name);
                self.fold_batch_norm_after(index, &y);
                y
            }
            FloatOp::BatchNorm {
                eps,
                weight,
                bias,
                mean,
                var,
            } => {
                let x = self.float_of(input(0)?)?;
                let mut inputs = vec![x];
                for (id, role) in [
                    (weight, "weight"),
                    (bias, "bias"),
                    (mean, "running_mean"),
                    (var, "running_var"),
                ] {
                    let t = p
                        .constants
                        .get(*id)
                        .and_then(|t| t.as_f32().map(|v| (t.shape.clone(), v)))
                        .ok_or_else(|| fail(format!("its {role} is not an f32 constant")))?;
                    inputs.push(self.init_f32(format!("{name}.{role}"), &t.0, t.1));
                }
                self.node(
                    "BatchNormalization",
                    name.clone(),
                    inputs,
                    name.clone(),
                    vec![attr_float("epsilon", *eps)],
                );
                name.clone()
            }
            FloatOp::Relu => {
                let x = self.float_of(input(0)?)?;
                self.activation(x, Activation::Relu, &name)
            }
            FloatOp::Clamp { min, max } => {
                let x = self.float_of(input(0)?)?;
                self.activation(x, Activation::Clamp { min: *min, max: *max }, &name)
            }
            FloatOp::MaxPool { window } => {
                let x = self.float_of(input(0)?)?;
                let mut attrs = window_attrs(window, true);
                attrs.push(attr_int("ceil_mode", window.ceil_mode as i64));
                self.node("MaxPool", name.clone(), vec![x], name.clone(), attrs);
                name.clone()
            }
            FloatOp::AvgPool {
                window,
                count_include_pad,
            } => {
                let x = self.float_of(input(0)?)?;
                let mut attrs = window_attrs(window, false);
                attrs.push(attr_int("ceil_mode", window.ceil_mode as i64));
                attrs.push(attr_int("count_include_pad", *count_include_pad as i64));
                self.node("AveragePool", name.clone(), vec![x], name.clone(), attrs);
                name.clone()
            }
            FloatOp::AdaptiveAvgPool { output } => {
                if output.iter().any(|&o| o != 1) {
                    return Err(fail(format!(
                        "only global average pooling (output size all 1) is exported, found {output:?}"
                    )));
                }
                let x = self.float_of(input(0)?)?;
                self.node("GlobalAveragePool", name.clone(), vec![x], name.clone(), vec![]);
                name.clone()
            }
            FloatOp::Flatten { start_dim, end_dim } => {
                let x_id = input(0)?;
                let rank = p.values[x_id].shape.len();
                if *start_dim != 1 || *end_dim + 1 != rank {
                    return Err(fail(format!(
                        "only flatten(start_dim=1) to rank 2 is exported, found dims {start_dim}..={end_dim} of rank {rank}"
                    )));
                }
                let x = self.float_of(x_id)?;
                self.node(
                    "Flatten",
                    name.clone(),
                    vec![x],
                    name.clone(),
                    vec![attr_int("axis", 1)],
                );
                name.clone()
            }
            FloatOp::Add | FloatOp::Mul => {
                let a = self.float_of(input(0)?)?;
                let b = self.float_of(input(1)?)?;
                let onnx_op = if matches!(op, FloatOp::Add) { "Add" } else { "Mul" };
                self.node(onnx_op, name.clone(), vec![a, b], name.clone(), vec![]);
                name.clone()
            }
            FloatOp::Concat { dim } => {
                let xs = step
                    .inputs
                    .iter()
                    .map(|&v| self.float_of(v))
                    .collect::<Result<Vec<_>, _>>()?;
                self.node(
                    "Concat",
                    name.clone(),
                    xs,
                    name.clone(),
                    vec![attr_int("axis", *dim as i64)],
                );
                name.clone()
            }
            FloatOp::Curve(curve) => {
                let x = self.float_of(input(0)?)?;
                let (onnx_op, attrs) = super::curve_op(*curve);
                self.node(onnx_op, name.clone(), vec![x], name.clone(), attrs);
                name.clone()
            }
            FloatOp::Identity => {
                let x = self.float_of(input(0)?)?;
                let site = self.qat.as_ref().and_then(|q| q.on_value.get(&out)).copied();
                match site {
                    Some(site) => self.fake_quantize_value(x, site, &name).map_err(fail)?,
                    None => x,
                }
            }
        };
        self.tensor.insert(out, y);
        Ok(())
    }

    /// Marks the batch norm folded into weighted step `index` (its weight site's `bn_step`) as
    /// computed by `tensor`, the Conv/Gemm output that already includes it.
    fn fold_batch_norm_after(&mut self, index: usize, tensor: &str) {
        let Some(q) = self.qat.as_mut() else { return };
        if let Some(FakeQuantAt::Weight { bn_step: Some(bn), .. }) = q.on_weight.get(&index).map(|s| &s.at) {
            q.folded.insert(*bn, tensor.to_string());
        }
    }
}

/// The per-channel values of a `[C]` (or `[C, 1, ...]`) f32 tensor.
fn per_channel_of(t: &Tensor, cout: usize) -> Result<Vec<f32>, String> {
    t.as_f32()
        .filter(|v| v.len() == cout)
        .map(<[f32]>::to_vec)
        .ok_or_else(|| format!("the folding factor is not {cout} f32 values"))
}
