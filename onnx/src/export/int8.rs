//! The int8 steps of a compiled program as QDQ ONNX: each `QuantOp` a float op between
//! DequantizeLinear and QuantizeLinear (weights int8 per channel, biases int32), written so
//! that ONNX Runtime fuses them into its int8 kernels and computes qc's numbers.

use qc_runtime::kernels::Activation;
use qc_runtime::program::{QuantOp, StepOp};
use qc_runtime::quant::quantize_bias;
use qc_runtime::tensor::Tensor;

use super::{attr_int, curve_op, tensor_proto, window_attrs, Builder, ExportError};
use crate::proto::tensor_proto::DataType;

impl Builder<'_> {
    /// Step `index`: its int8 op here; a QAT program's float steps in `qat.rs`.
    pub(super) fn step(&mut self, index: usize) -> Result<(), ExportError> {
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
        let op = match &step.op {
            StepOp::Quant(op) => op,
            StepOp::Float(_) if self.qat.is_some() => return self.qat_step(index),
            StepOp::Float(_) => {
                return Err(fail(
                    "float steps are not exported; only fully int8 programs are (compile without `skip` layers)".into(),
                ))
            }
        };
        let input = |i: usize| {
            step.inputs
                .get(i)
                .copied()
                .ok_or_else(|| fail(format!("has no input {i}")))
        };
        let constant = |id: usize| -> Result<&Tensor, ExportError> {
            p.constants
                .get(id)
                .ok_or_else(|| fail(format!("refers to a missing constant {id}")))
        };
        match op {
            QuantOp::Quantize => {
                let x = self.float_of(input(0)?)?;
                self.quantize_exact(x, out)?;
            }
            QuantOp::Dequantize => {
                let x = self.float_of(input(0)?)?;
                self.tensor.insert(out, x);
            }
            QuantOp::QConv {
                window,
                groups,
                weight,
                weight_scales,
                bias,
                act,
                ..
            } => {
                let x_id = input(0)?;
                let x = self.float_of(x_id)?;
                let s_in = self.params_of(x_id)?.scale();
                let w = constant(*weight)?;
                let (Some(wd), 3 | 4) = (w.as_i8(), w.shape.len()) else {
                    return Err(fail("the weight is not an i8 tensor of rank 3 or 4".into()));
                };
                // OHWI (or OKI) → OIHW (OIK).
                let cout = w.shape[0];
                let cin = w.shape[w.shape.len() - 1];
                let spatial: Vec<usize> = w.shape[1..w.shape.len() - 1].to_vec();
                let k: usize = spatial.iter().product();
                let mut oihw = vec![0u8; wd.len()];
                for o in 0..cout {
                    for s in 0..k {
                        for i in 0..cin {
                            oihw[(o * cin + i) * k + s] = wd[(o * k + s) * cin + i] as u8;
                        }
                    }
                }
                let mut dims = vec![cout, cin];
                dims.extend(&spatial);
                let mut attrs = window_attrs(window, true);
                attrs.push(attr_int("group", *groups as i64));
                let inputs = self
                    .weight_and_bias(
                        &name,
                        oihw,
                        &dims,
                        constant(*weight_scales)?,
                        bias.map(constant).transpose()?,
                        s_in,
                    )
                    .map_err(fail)?;
                let mut conv_in = vec![x];
                conv_in.extend(inputs);
                let y = format!("{name}_conv");
                self.node("Conv", name.clone(), conv_in, y.clone(), attrs);
                let y = self.activation(y, *act, &name);
                self.quantize_into(y, out)?;
            }
            QuantOp::QLinear {
                weight,
                weight_scales,
                bias,
                act,
                ..
            } => {
                let x_id = input(0)?;
                if p.values[x_id].shape.len() != 2 {
                    return Err(fail("only rank-2 inputs `[N, K]` are exported (as Gemm)".into()));
                }
                let x = self.float_of(x_id)?;
                let s_in = self.params_of(x_id)?.scale();
                let w = constant(*weight)?;
                let (Some(wd), 2) = (w.as_i8(), w.shape.len()) else {
                    return Err(fail("the weight is not an i8 matrix".into()));
                };
                let raw = wd.iter().map(|&v| v as u8).collect();
                let dims = w.shape.clone();
                let inputs = self
                    .weight_and_bias(
                        &name,
                        raw,
                        &dims,
                        constant(*weight_scales)?,
                        bias.map(constant).transpose()?,
                        s_in,
                    )
                    .map_err(fail)?;
                let mut gemm_in = vec![x];
                gemm_in.extend(inputs);
                let y = format!("{name}_gemm");
                self.node("Gemm", name.clone(), gemm_in, y.clone(), vec![attr_int("transB", 1)]);
                let y = self.activation(y, *act, &name);
                self.quantize_into(y, out)?;
            }
            QuantOp::QAdd { relu } => {
                let a = self.float_of(input(0)?)?;
                let b = self.float_of(input(1)?)?;
                let y = format!("{name}_add");
                self.node("Add", name.clone(), vec![a, b], y.clone(), vec![]);
                let act = if *relu { Activation::Relu } else { Activation::None };
                let y = self.activation(y, act, &name);
                self.quantize_into(y, out)?;
            }
            QuantOp::QMaxPool { window } => {
                let x = self.float_of(input(0)?)?;
                let mut attrs = window_attrs(window, true);
                attrs.push(attr_int("ceil_mode", window.ceil_mode as i64));
                let y = format!("{name}_maxpool");
                self.node("MaxPool", name.clone(), vec![x], y.clone(), attrs);
                self.quantize_into(y, out)?;
            }
            QuantOp::QAvgPool {
                window,
                count_include_pad,
            } => {
                let x = self.centred_codes(input(0)?)?;
                let mut attrs = window_attrs(window, false);
                attrs.push(attr_int("ceil_mode", window.ceil_mode as i64));
                attrs.push(attr_int("count_include_pad", *count_include_pad as i64));
                let y = format!("{name}_avgpool");
                self.node("AveragePool", name.clone(), vec![x], y.clone(), attrs);
                self.quantize_codes(y, out)?;
            }
            QuantOp::QAdaptiveAvgPool { output } => {
                if output.iter().any(|&o| o != 1) {
                    return Err(fail(format!(
                        "only global average pooling (output size all 1) is exported, found {output:?}"
                    )));
                }
                let x_id = input(0)?;
                let rank = p.values[x_id].shape.len();
                let n: usize = p.values[x_id].shape[1..rank - 1]
                    .iter()
                    .map(|d| d.ok_or_else(|| fail("the pooled size is not known".into())))
                    .product::<Result<usize, _>>()?;
                let x = self.centred_codes(x_id)?;
                // Channels last in qc, NCHW here: the spatial axes are 2.. in the graph.
                let axes: Vec<i64> = (2..rank as i64).collect();
                let axes_name = format!("{name}_axes");
                self.inits.push(tensor_proto(
                    &axes_name,
                    &[axes.len()],
                    DataType::Int64,
                    axes.iter().flat_map(|a| a.to_le_bytes()).collect(),
                ));
                let sum = format!("{name}_sum");
                self.node(
                    "ReduceSum",
                    format!("{name}_ReduceSum"),
                    vec![x, axes_name],
                    sum.clone(),
                    vec![attr_int("keepdims", 1)],
                );
                let count = self.init_f32(format!("{name}_count"), &[], &[n as f32]);
                let y = format!("{name}_gap");
                self.node("Div", name.clone(), vec![sum, count], y.clone(), vec![]);
                self.quantize_codes(y, out)?;
            }
            QuantOp::QConcat => {
                let xs = step
                    .inputs
                    .iter()
                    .map(|&v| self.float_of(v))
                    .collect::<Result<Vec<_>, _>>()?;
                let y = format!("{name}_concat");
                self.node("Concat", name.clone(), xs, y.clone(), vec![attr_int("axis", 1)]);
                self.quantize_into(y, out)?;
            }
            QuantOp::QFlatten => {
                let x = self.float_of(input(0)?)?;
                let y = format!("{name}_flatten");
                self.node("Flatten", name.clone(), vec![x], y.clone(), vec![attr_int("axis", 1)]);
                self.quantize_into(y, out)?;
            }
            QuantOp::QClamp { act } => {
                let x = self.float_of(input(0)?)?;
                let y = self.activation(x, *act, &name);
                self.quantize_into(y, out)?;
            }
            QuantOp::QLut(curve) => {
                let x = self.float_of(input(0)?)?;
                let (op, attrs) = curve_op(*curve);
                let y = format!("{name}_{}", curve.name());
                self.node(op, name.clone(), vec![x], y.clone(), attrs);
                self.quantize_into(y, out)?;
            }
            QuantOp::QMul => {
                let a = self.float_of(input(0)?)?;
                let b = self.float_of(input(1)?)?;
                let y = format!("{name}_mul");
                self.node("Mul", name.clone(), vec![a, b], y.clone(), vec![]);
                self.quantize_into(y, out)?;
            }
        }
        Ok(())
    }

    /// DequantizeLinear of the int8 weight (per output channel, axis 0, zero point 0) and of the
    /// int32 bias (scale `s_in · s_w[c]`): the Conv/Gemm inputs after the data.
    fn weight_and_bias(
        &mut self,
        name: &str,
        raw: Vec<u8>,
        dims: &[usize],
        scales: &Tensor,
        bias: Option<&Tensor>,
        s_in: f32,
    ) -> Result<Vec<String>, String> {
        let cout = dims[0];
        let Some(ws) = scales.as_f32().filter(|s| s.len() == cout) else {
            return Err(format!("the weight scales are not {cout} f32 values"));
        };
        let wq = format!("{name}.weight_quantized");
        self.inits.push(tensor_proto(&wq, dims, DataType::Int8, raw));
        let ws_name = self.init_f32(format!("{name}.weight_scale"), &[cout], ws);
        let wz = format!("{name}.weight_zero_point");
        self.inits
            .push(tensor_proto(&wz, &[cout], DataType::Int8, vec![0; cout]));
        let wdq = format!("{name}.weight");
        self.node(
            "DequantizeLinear",
            format!("{name}.weight_DequantizeLinear"),
            vec![wq, ws_name, wz],
            wdq.clone(),
            vec![attr_int("axis", 0)],
        );
        let mut out = vec![wdq];
        if let Some(bias) = bias {
            // A float bias (`requantize: float_bias`, PyTorch's fbgemm) has no ONNX form: QLinearConv
            // and QGemm take an int32 bias, so it is quantized here as `requantize: float` would
            // have (docs/numerics.md §4: the two stay within one step).
            let quantized: Vec<i32>;
            let bd = match (bias.as_i32(), bias.as_f32()) {
                (Some(b), _) if b.len() == cout => b,
                (_, Some(b)) if b.len() == cout => {
                    quantized = b
                        .iter()
                        .zip(ws)
                        .map(|(&x, &s_w)| quantize_bias(x, s_in, s_w).map(|q| q.value))
                        .collect::<Result<_, _>>()
                        .map_err(|e| format!("the float bias: {e}"))?;
                    &quantized
                }
                _ => return Err(format!("the bias is not {cout} i32 or f32 values")),
            };
            let bq = format!("{name}.bias_quantized");
            let raw = bd.iter().flat_map(|v| v.to_le_bytes()).collect();
            self.inits.push(tensor_proto(&bq, &[cout], DataType::Int32, raw));
            let bs: Vec<f32> = ws.iter().map(|&s| s_in * s).collect();
            let bs_name = self.init_f32(format!("{name}.bias_scale"), &[cout], &bs);
            let bz = format!("{name}.bias_zero_point");
            self.inits
                .push(tensor_proto(&bz, &[cout], DataType::Int32, vec![0; 4 * cout]));
            let bdq = format!("{name}.bias");
            self.node(
                "DequantizeLinear",
                format!("{name}.bias_DequantizeLinear"),
                vec![bq, bs_name, bz],
                bdq.clone(),
                vec![attr_int("axis", 0)],
            );
            out.push(bdq);
        }
        Ok(out)
    }
}
