//! A program as a QDQ ONNX graph (opset 17, NCHW): the graph's inputs (normalized as `qc run`
//! does), outputs, initializers and the QuantizeLinear/DequantizeLinear pieces both kinds of
//! export share. `int8.rs` writes a compiled int8 program, `qat.rs` a QAT program's fake
//! quantization with its trained scales.

mod int8;
mod qat;

pub use qat::export_qat;

use std::collections::HashMap;

use prost::Message;
use qc_runtime::kernels::Activation;
use qc_runtime::model::Model;
use qc_runtime::program::{Layout, ValueId, Window};
use qc_runtime::quant::{Curve, QParams};
use qc_runtime::tensor::DType;

use crate::proto::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto, AttributeProto, GraphProto,
    ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

/// The ONNX opset the graph imports (per-channel DequantizeLinear needs 13).
pub const OPSET: i64 = 17;
/// The IR version that opset 17 belongs to.
pub const IR_VERSION: i64 = 8;

/// Why a program cannot be written as ONNX: the step (index, output name) and op at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExportError {
    #[error("step {index} (`{step}`, {op}): {message}")]
    Step {
        index: usize,
        step: String,
        op: &'static str,
        message: String,
    },
    #[error("value `{value}`: {message}")]
    Value { value: String, message: String },
}

/// An ONNX model's bytes (protobuf).
pub fn encode(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// The model as a serialized ONNX `ModelProto`.
pub fn export_bytes(model: &Model) -> Result<Vec<u8>, ExportError> {
    Ok(export(model)?.encode_to_vec())
}

/// The model as an ONNX `ModelProto`: same inputs (raw, normalized in the graph as `qc run`
/// does) and outputs, by name, in PyTorch's order with the batch dim `N`.
pub fn export(model: &Model) -> Result<ModelProto, ExportError> {
    build(Builder::new(model, None), "its int8 program")
}

/// The graph of every step of `b`'s program, as a `ModelProto` (`from` says what it was
/// exported from, in the graph's doc string).
fn build(mut b: Builder<'_>, from: &str) -> Result<ModelProto, ExportError> {
    let model = b.model;
    b.inputs()?;
    for index in 0..model.program().steps.len() {
        b.step(index)?;
    }
    b.outputs()?;
    let graph = GraphProto {
        node: b.nodes,
        name: Some(model.meta().model.clone()),
        initializer: b.inits,
        input: b.graph_inputs,
        output: b.graph_outputs,
        doc_string: Some(format!(
            "qc {} model `{}`, stage {}, exported from {from}",
            model.meta().qc_version,
            model.meta().model,
            model.meta().stage
        )),
        ..Default::default()
    };
    Ok(ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET),
        }],
        producer_name: Some("qc".into()),
        producer_version: Some(model.meta().qc_version.clone()),
        graph: Some(graph),
        ..Default::default()
    })
}

struct Builder<'m> {
    model: &'m Model,
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    graph_inputs: Vec<ValueInfoProto>,
    graph_outputs: Vec<ValueInfoProto>,
    /// Per program value: the ONNX tensor holding it (`uint8` for quantized values, else float).
    tensor: HashMap<ValueId, String>,
    /// Per quantized value: its DequantizeLinear output, made once.
    dequantized: HashMap<ValueId, String>,
    /// Per quantized value: its scale and zero point initializers.
    qparams: HashMap<ValueId, (String, String)>,
    /// A QAT program's fake quantizations (its float steps are exported then).
    qat: Option<qat::Sites<'m>>,
}

fn attr_int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        i: Some(i),
        r#type: Some(AttributeType::Int as i32),
        ..Default::default()
    }
}

fn attr_float(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        f: Some(f),
        r#type: Some(AttributeType::Float as i32),
        ..Default::default()
    }
}

fn attr_ints(name: &str, ints: &[usize]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        ints: ints.iter().map(|&v| v as i64).collect(),
        r#type: Some(AttributeType::Ints as i32),
        ..Default::default()
    }
}

/// The ONNX op of a pointwise curve and its attributes. ONNX's HardSigmoid is
/// `max(0, min(1, alpha·x + beta))`, default alpha 0.2; PyTorch's (and qc's) is alpha = 1/6,
/// beta = 0.5.
fn curve_op(curve: Curve) -> (&'static str, Vec<AttributeProto>) {
    match curve {
        Curve::HardSwish => ("HardSwish", vec![]),
        Curve::HardSigmoid => (
            "HardSigmoid",
            vec![attr_float("alpha", 1.0 / 6.0), attr_float("beta", 0.5)],
        ),
        Curve::Sigmoid => ("Sigmoid", vec![]),
    }
}

fn tensor_proto(name: &str, dims: &[usize], data_type: DataType, raw: Vec<u8>) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: Some(data_type as i32),
        raw_data: Some(raw),
        ..Default::default()
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn value_info(name: &str, elem: DataType, shape: &[Option<usize>]) -> ValueInfoProto {
    let dim = shape
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                Some(n) => tensor_shape_proto::dimension::Value::DimValue(*n as i64),
                None => tensor_shape_proto::dimension::Value::DimParam("N".into()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Window attributes: kernel_shape, strides, pads (all begins, then all ends), dilations.
fn window_attrs(w: &Window, dilations: bool) -> Vec<AttributeProto> {
    let pads: Vec<usize> = w.pad.iter().chain(&w.pad).copied().collect();
    let mut a = vec![
        attr_ints("kernel_shape", &w.kernel),
        attr_ints("strides", &w.stride),
        attr_ints("pads", &pads),
    ];
    if dilations {
        a.push(attr_ints("dilations", &w.dilation));
    }
    a
}

impl<'m> Builder<'m> {
    fn new(model: &'m Model, qat: Option<qat::Sites<'m>>) -> Builder<'m> {
        Builder {
            qat,
            model,
            nodes: Vec::new(),
            inits: Vec::new(),
            graph_inputs: Vec::new(),
            graph_outputs: Vec::new(),
            tensor: HashMap::new(),
            dequantized: HashMap::new(),
            qparams: HashMap::new(),
        }
    }

    fn name(&self, v: ValueId) -> &str {
        self.model.program().value_name(v)
    }

    fn node(&mut self, op: &str, name: String, inputs: Vec<String>, output: String, attrs: Vec<AttributeProto>) {
        self.nodes.push(NodeProto {
            input: inputs,
            output: vec![output],
            name: Some(name),
            op_type: Some(op.into()),
            attribute: attrs,
            ..Default::default()
        });
    }

    fn init_f64(&mut self, name: String, dims: &[usize], v: &[f64]) -> String {
        let raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.inits.push(tensor_proto(&name, dims, DataType::Double, raw));
        name
    }

    fn init_f32(&mut self, name: String, dims: &[usize], v: &[f32]) -> String {
        self.inits
            .push(tensor_proto(&name, dims, DataType::Float, f32_bytes(v)));
        name
    }

    fn params_of(&self, v: ValueId) -> Result<QParams, ExportError> {
        let info = &self.model.program().values[v];
        match (info.quant, info.dtype) {
            (Some(q), DType::U8) => Ok(q),
            _ => Err(ExportError::Value {
                value: info.name.clone(),
                message: format!("expected a u8 quantized value, found {}", info.dtype),
            }),
        }
    }

    /// The scale and zero point initializers of quantized value `v`.
    fn qparam_inits(&mut self, v: ValueId) -> Result<(String, String), ExportError> {
        if let Some(p) = self.qparams.get(&v) {
            return Ok(p.clone());
        }
        let q = self.params_of(v)?;
        let base = self.name(v).to_string();
        let scale = self.init_f32(format!("{base}_scale"), &[], &[q.scale()]);
        let zp = format!("{base}_zero_point");
        self.inits
            .push(tensor_proto(&zp, &[], DataType::Uint8, vec![q.zero_point() as u8]));
        self.qparams.insert(v, (scale.clone(), zp.clone()));
        Ok((scale, zp))
    }

    /// QuantizeLinear of float tensor `x` into quantized value `v` (its tensor named after it).
    /// A range narrower than u8's (7-bit activations) saturates as qc does, through a Clip
    /// between a DequantizeLinear/QuantizeLinear pair of the same parameters.
    fn quantize_into(&mut self, x: String, v: ValueId) -> Result<(), ExportError> {
        let params = self.qparam_inits(v)?;
        let scale = self.params_of(v)?.scale();
        self.quantize_with(x, v, params, scale)
    }

    /// QuantizeLinear of `x` with the `(scale, zero point)` initializers given (`scale` holding
    /// `scale_value`), into `v` (saturated to `v`'s range as [`Self::quantize_into`] says).
    fn quantize_with(
        &mut self,
        x: String,
        v: ValueId,
        (scale, zp): (String, String),
        scale_value: f32,
    ) -> Result<(), ExportError> {
        let q = self.params_of(v)?;
        let name = self.name(v).to_string();
        let full = q.range().qmin() == 0 && q.range().qmax() == 255;
        let first = if full {
            name.clone()
        } else {
            format!("{name}_unclipped")
        };
        self.node(
            "QuantizeLinear",
            format!("{name}_QuantizeLinear"),
            vec![x, scale.clone(), zp.clone()],
            first.clone(),
            vec![],
        );
        if !full {
            let lo = (q.range().qmin() - q.zero_point()) as f32 * scale_value;
            let hi = (q.range().qmax() - q.zero_point()) as f32 * scale_value;
            let dq = format!("{name}_unclipped_dequantized");
            self.node(
                "DequantizeLinear",
                format!("{name}_range_DequantizeLinear"),
                vec![first, scale.clone(), zp.clone()],
                dq.clone(),
                vec![],
            );
            let clipped = self.clip(dq, lo, hi, &format!("{name}_range"));
            self.node(
                "QuantizeLinear",
                format!("{name}_range_QuantizeLinear"),
                vec![clipped, scale, zp],
                name.clone(),
                vec![],
            );
        }
        self.tensor.insert(v, name);
        Ok(())
    }

    /// qc's `quantize` (`rint(x · (1/s)) + zp`, docs/numerics.md §1) of float tensor `x` into `v`
    /// at a float → int8 boundary. ONNX's QuantizeLinear divides by the scale, which rounds
    /// differently on some ties, so the graph multiplies by qc's `f32` reciprocal first and
    /// quantizes with scale 1 (`x / 1` is exact); the value's own scale and zero point dequantize it.
    fn quantize_exact(&mut self, x: String, v: ValueId) -> Result<(), ExportError> {
        let q = self.params_of(v)?;
        let name = self.name(v).to_string();
        let inv = self.init_f32(format!("{name}_inverse_scale"), &[], &[1.0f32 / q.scale()]);
        let scaled = format!("{name}_scaled");
        self.node("Mul", format!("{name}_scale_Mul"), vec![x, inv], scaled.clone(), vec![]);
        let one = self.init_f32(format!("{name}_unit_scale"), &[], &[1.0]);
        let (_, zp) = self.qparam_inits(v)?;
        self.quantize_with(scaled, v, (one, zp), 1.0)
    }

    /// The codes of quantized value `v` minus its zero point, as exact `f32` integers (Cast, Sub):
    /// what qc's integer averages sum (docs/numerics.md §5).
    fn centred_codes(&mut self, v: ValueId) -> Result<String, ExportError> {
        let Some(t) = self.tensor.get(&v).cloned() else {
            return Err(ExportError::Value {
                value: self.name(v).to_string(),
                message: "read before it is computed".into(),
            });
        };
        let zp = self.params_of(v)?.zero_point();
        let zp = self.init_f32(format!("{t}_zero_point_f32"), &[], &[zp as f32]);
        let codes = format!("{t}_codes");
        let centred = format!("{t}_centred_codes");
        let cast = vec![attr_int("to", DataType::Float as i64)];
        self.node("Cast", format!("{t}_codes_Cast"), vec![t.clone()], codes.clone(), cast);
        self.node(
            "Sub",
            format!("{t}_codes_Sub"),
            vec![codes, zp],
            centred.clone(),
            vec![],
        );
        Ok(centred)
    }

    /// An average of centred codes (`Σ (q − zp) / n`, one correctly rounded f32 division of an
    /// exact integer sum) into `v`: rounded to nearest even plus the zero point, as qc's
    /// `avg_round` (docs/numerics.md §5), by QuantizeLinear with scale 1. ONNX Runtime's own
    /// QLinearAveragePool averages dequantized floats and divides by the scale, which moves exact
    /// ties (an even window) either way.
    fn quantize_codes(&mut self, y: String, v: ValueId) -> Result<(), ExportError> {
        let name = self.name(v).to_string();
        let one = self.init_f32(format!("{name}_unit_scale"), &[], &[1.0]);
        let (_, zp) = self.qparam_inits(v)?;
        self.quantize_with(y, v, (one, zp), 1.0)
    }

    /// The float tensor of value `v`: itself when float, else its DequantizeLinear output.
    fn float_of(&mut self, v: ValueId) -> Result<String, ExportError> {
        let info = &self.model.program().values[v];
        let Some(t) = self.tensor.get(&v).cloned() else {
            return Err(ExportError::Value {
                value: info.name.clone(),
                message: "read before it is computed".into(),
            });
        };
        if info.quant.is_none() {
            return Ok(t);
        }
        if let Some(d) = self.dequantized.get(&v) {
            return Ok(d.clone());
        }
        let (scale, zp) = self.qparam_inits(v)?;
        let out = format!("{t}_dequantized");
        self.node(
            "DequantizeLinear",
            format!("{t}_DequantizeLinear"),
            vec![t, scale, zp],
            out.clone(),
            vec![],
        );
        self.dequantized.insert(v, out.clone());
        Ok(out)
    }

    /// Relu or Clip for a fused activation, applied to float tensor `x`.
    fn activation(&mut self, x: String, act: Activation, base: &str) -> String {
        let (min, max) = match act {
            Activation::None => return x,
            Activation::Relu => {
                let out = format!("{base}_relu");
                self.node("Relu", format!("{base}_Relu"), vec![x], out.clone(), vec![]);
                return out;
            }
            Activation::Relu6 => (0.0, 6.0),
            Activation::Clamp { min, max } => (min, max),
        };
        self.clip(x, min, max, &format!("{base}_clip"))
    }

    /// `Clip(x, lo, hi)` with its bounds as initializers; the output tensor is `out`
    /// (bounds `{out}_min`/`{out}_max`, node `{out}_Clip`).
    fn clip(&mut self, x: String, lo: f32, hi: f32, out: &str) -> String {
        let lo = self.init_f32(format!("{out}_min"), &[], &[lo]);
        let hi = self.init_f32(format!("{out}_max"), &[], &[hi]);
        self.node("Clip", format!("{out}_Clip"), vec![x, lo, hi], out.to_string(), vec![]);
        out.to_string()
    }

    fn inputs(&mut self) -> Result<(), ExportError> {
        let p = self.model.program();
        let meta = self.model.meta();
        for (spec, &v) in meta.inputs.iter().zip(&p.inputs) {
            let info = &p.values[v];
            if info.dtype != DType::F32 || info.layout != Layout::Torch {
                return Err(ExportError::Value {
                    value: info.name.clone(),
                    message: format!("only f32 inputs in PyTorch's layout are exported, found {}", info.dtype),
                });
            }
            self.graph_inputs
                .push(value_info(&spec.name, DataType::Float, &info.torch_shape()));
            let mut x = spec.name.clone();
            if let Some(n) = meta.input_normalize.get(&spec.name) {
                // qc normalizes in f64 and rounds once to f32 (`Normalize::apply`): Cast to
                // double, Sub, Div, Cast back gives those bits (an f32 Sub/Div would round twice).
                let dims: Vec<usize> = if n.is_per_channel() {
                    let mut d = vec![1; info.shape.len()];
                    d[1] = n.channels();
                    d
                } else {
                    vec![]
                };
                let mean = self.init_f64(format!("{}_normalize_mean", spec.name), &dims, &n.mean);
                let std = self.init_f64(format!("{}_normalize_std", spec.name), &dims, &n.std);
                let wide = format!("{}_f64", spec.name);
                let centred = format!("{}_centred", spec.name);
                let scaled = format!("{}_normalized_f64", spec.name);
                let normalized = format!("{}_normalized", spec.name);
                let cast = |to: DataType| vec![attr_int("to", to as i64)];
                self.node(
                    "Cast",
                    format!("{}_normalize_Cast", spec.name),
                    vec![x],
                    wide.clone(),
                    cast(DataType::Double),
                );
                self.node(
                    "Sub",
                    format!("{}_normalize_Sub", spec.name),
                    vec![wide, mean],
                    centred.clone(),
                    vec![],
                );
                self.node(
                    "Div",
                    format!("{}_normalize_Div", spec.name),
                    vec![centred, std],
                    scaled.clone(),
                    vec![],
                );
                self.node(
                    "Cast",
                    format!("{}_normalize_Cast_back", spec.name),
                    vec![scaled],
                    normalized.clone(),
                    cast(DataType::Float),
                );
                x = normalized;
            }
            self.tensor.insert(v, x);
        }
        Ok(())
    }

    fn outputs(&mut self) -> Result<(), ExportError> {
        let p = self.model.program();
        for (spec, &v) in self.model.meta().outputs.iter().zip(&p.outputs) {
            let info = &p.values[v];
            let t = self.tensor.get(&v).cloned().unwrap_or_default();
            let elem = match info.dtype {
                DType::F32 => DataType::Float,
                DType::U8 => DataType::Uint8,
                other => {
                    return Err(ExportError::Value {
                        value: info.name.clone(),
                        message: format!("outputs of dtype {other} are not exported"),
                    })
                }
            };
            if t != spec.name {
                self.node(
                    "Identity",
                    format!("{}_Identity", spec.name),
                    vec![t],
                    spec.name.clone(),
                    vec![],
                );
            }
            self.graph_outputs
                .push(value_info(&spec.name, elem, &info.torch_shape()));
        }
        Ok(())
    }
}
