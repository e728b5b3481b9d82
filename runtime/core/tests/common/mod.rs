//! Test support: a builder for hand-written programs that computes, next to every int8 step, its
//! float twin with fake quantization at every boundary (the reference of docs/numerics.md §7),
//! and choose each output's parameters from the twin's range (a one-batch calibration).

#![allow(dead_code)]

use qc_runtime::kernels::reference::{nchw_to_nhwc, nhwc_to_nchw};
use qc_runtime::kernels::Activation;
use qc_runtime::program::{
    from_torch_order, to_torch_order, FloatOp, Layout, Program, QuantOp, Step, StepOp, ValueInfo, Window,
};
use qc_runtime::quant::{qparams_affine, quantize_bias, QParams, QRange, RequantRule};
use qc_runtime::{DType, SplitMix64, Tensor, TensorData};

pub fn window(kernel: &[usize], stride: &[usize], pad: &[usize], dilation: &[usize], ceil_mode: bool) -> Window {
    Window {
        kernel: kernel.to_vec(),
        stride: stride.to_vec(),
        pad: pad.to_vec(),
        dilation: dilation.to_vec(),
        ceil_mode,
    }
}

/// `[N, C, H, W]` ↔ channels last for rank 3/4 data.
pub fn relayout<T: Copy + Default>(x: &[T], shape: &[usize], from: Layout, to: Layout) -> Vec<T> {
    if from == to || !(3..=4).contains(&shape.len()) {
        return x.to_vec();
    }
    let mut out = vec![T::default(); x.len()];
    let d4 = |s: &[usize], l: Layout| -> [usize; 4] {
        match (l, s.len()) {
            (Layout::Torch, 3) => [s[0], s[1], 1, s[2]],
            (Layout::ChannelsLast, 3) => [s[0], 1, s[1], s[2]],
            _ => [s[0], s[1], s[2], s[3]],
        }
    };
    match from {
        Layout::Torch => nchw_to_nhwc(x, d4(shape, from), &mut out).unwrap(),
        Layout::ChannelsLast => nhwc_to_nchw(x, d4(shape, from), &mut out).unwrap(),
    }
    out
}

/// A quantized tensor's codes in PyTorch's order.
pub fn codes_torch(t: &Tensor, info: &ValueInfo) -> Vec<u8> {
    relayout(t.as_u8().expect("u8"), &t.shape, info.layout, Layout::Torch)
}

/// Any value as f32 in PyTorch's order (quantized values dequantized).
pub fn float_torch(t: &Tensor, info: &ValueInfo) -> Tensor {
    let shape = to_torch_order(&t.shape, info.layout);
    let data: Vec<f32> = match (&t.data, info.quant) {
        (TensorData::F32(v), _) => v.clone(),
        (TensorData::U8(v), Some(q)) => v.iter().map(|&c| q.dequantize(c as i32)).collect(),
        (TensorData::I8(v), Some(q)) => v.iter().map(|&c| q.dequantize(c as i32)).collect(),
        _ => panic!("unexpected value {info:?}"),
    };
    Tensor::f32(shape, relayout(&data, &t.shape, info.layout, Layout::Torch))
}

/// `quantize` of a float tensor (PyTorch order) with `q`, as codes.
pub fn quantize_codes(t: &Tensor, q: &QParams) -> Vec<u8> {
    t.as_f32().unwrap().iter().map(|&v| q.quantize(v) as u8).collect()
}

fn act_steps(act: Activation) -> Vec<FloatOp> {
    match act {
        Activation::None => vec![],
        Activation::Relu => vec![FloatOp::Relu],
        Activation::Relu6 => vec![FloatOp::Clamp { min: 0.0, max: 6.0 }],
        Activation::Clamp { min, max } => vec![FloatOp::Clamp { min, max }],
    }
}

/// Runs float ops in sequence on the reference interpreter (first op takes all `inputs`).
fn run_float(ops: Vec<FloatOp>, constants: Vec<Tensor>, inputs: &[Tensor]) -> Tensor {
    if ops.is_empty() {
        return inputs[0].clone();
    }
    let mut values: Vec<ValueInfo> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| ValueInfo::float(format!("in{i}"), t.shape.iter().map(|&d| Some(d)).collect()))
        .collect();
    let n_in = values.len();
    let mut steps = vec![];
    for (i, op) in ops.into_iter().enumerate() {
        let ins = if i == 0 {
            (0..n_in).collect()
        } else {
            vec![values.len() - 1]
        };
        values.push(ValueInfo::float(format!("t{i}"), vec![]));
        steps.push(Step {
            op: StepOp::Float(op),
            inputs: ins,
            output: values.len() - 1,
        });
    }
    let last = values.len() - 1;
    // Output shapes are not known here: run once through the executor with shapes left open.
    let mut p = Program {
        values,
        inputs: (0..n_in).collect(),
        outputs: vec![last],
        steps,
        constants,
    };
    // Fill in the declared shapes by running the steps one by one.
    let mut shapes: Vec<Vec<usize>> = inputs.iter().map(|t| t.shape.clone()).collect();
    for i in 0..p.steps.len() {
        let ins: Vec<&[usize]> = p.steps[i].inputs.iter().map(|&v| shapes[v].as_slice()).collect();
        let out = qc_runtime::validate::infer(&p, &p.steps[i], &ins).expect("twin shapes");
        p.values[n_in + i].shape = out.iter().map(|&d| Some(d)).collect();
        shapes.push(out);
    }
    qc_runtime::interp::run(&p, inputs).expect("twin runs").remove(0)
}

/// The float twin of an int8 step: its float op(s) on float inputs in PyTorch order, weights and
/// bias dequantized. The result is what the step's output codes must be within one step of once
/// quantized with the output's parameters.
pub fn twin(p: &Program, step: &Step, inputs: &[Tensor]) -> Tensor {
    let StepOp::Quant(op) = &step.op else {
        panic!("not an int8 step")
    };
    let in_q = p.values[step.inputs[0]].quant;
    let dequant_weight = |weight: usize, scales: usize, bias: Option<usize>, conv: bool| {
        let w = &p.constants[weight];
        let s = p.constants[scales].as_f32().unwrap();
        let cout = w.shape[0];
        let per = w.len() / cout;
        let wf: Vec<f32> = w
            .as_i8()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, &q)| q as f32 * s[i / per])
            .collect();
        let (wf, shape) = if conv {
            // OHWI → OIHW (channels-last → PyTorch with N = Cout).
            let torch = to_torch_order(&w.shape, Layout::ChannelsLast);
            (relayout(&wf, &w.shape, Layout::ChannelsLast, Layout::Torch), torch)
        } else {
            (wf, w.shape.clone())
        };
        let s_in = in_q.unwrap().scale() as f64;
        let b = bias.map(|b| {
            if let Some(bf) = p.constants[b].as_f32() {
                return Tensor::f32(vec![cout], bf.to_vec());
            }
            let bq = p.constants[b].as_i32().unwrap();
            Tensor::f32(
                vec![cout],
                bq.iter()
                    .zip(s)
                    .map(|(&q, &sw)| (q as f64 * s_in * sw as f64) as f32)
                    .collect(),
            )
        });
        (Tensor::f32(shape, wf), b)
    };
    let with_bias = |w: Tensor, b: Option<Tensor>| {
        let has = b.is_some();
        let mut c = vec![w];
        c.extend(b);
        (c, if has { Some(1) } else { None })
    };
    match op {
        QuantOp::Quantize | QuantOp::Dequantize => inputs[0].clone(),
        QuantOp::QConv {
            window,
            groups,
            weight,
            weight_scales,
            bias,
            act,
            ..
        } => {
            let (w, b) = dequant_weight(*weight, *weight_scales, *bias, true);
            let (constants, bias) = with_bias(w, b);
            let mut ops = vec![FloatOp::Conv {
                window: window.clone(),
                groups: *groups,
                weight: 0,
                bias,
            }];
            ops.extend(act_steps(*act));
            run_float(ops, constants, inputs)
        }
        QuantOp::QLinear {
            weight,
            weight_scales,
            bias,
            act,
            ..
        } => {
            let (w, b) = dequant_weight(*weight, *weight_scales, *bias, false);
            let (constants, bias) = with_bias(w, b);
            let mut ops = vec![FloatOp::Linear { weight: 0, bias }];
            ops.extend(act_steps(*act));
            run_float(ops, constants, inputs)
        }
        QuantOp::QAdd { relu } => {
            let mut ops = vec![FloatOp::Add];
            if *relu {
                ops.push(FloatOp::Relu);
            }
            run_float(ops, vec![], inputs)
        }
        QuantOp::QMaxPool { window } => run_float(vec![FloatOp::MaxPool { window: window.clone() }], vec![], inputs),
        QuantOp::QAvgPool {
            window,
            count_include_pad,
        } => run_float(
            vec![FloatOp::AvgPool {
                window: window.clone(),
                count_include_pad: *count_include_pad,
            }],
            vec![],
            inputs,
        ),
        QuantOp::QAdaptiveAvgPool { output } => run_float(
            vec![FloatOp::AdaptiveAvgPool { output: output.clone() }],
            vec![],
            inputs,
        ),
        QuantOp::QConcat => run_float(vec![FloatOp::Concat { dim: 1 }], vec![], inputs),
        QuantOp::QFlatten => run_float(
            vec![FloatOp::Flatten {
                start_dim: 1,
                end_dim: inputs[0].shape.len() - 1,
            }],
            vec![],
            inputs,
        ),
        QuantOp::QClamp { act } => run_float(act_steps(*act), vec![], inputs),
        QuantOp::QLut(curve) => run_float(vec![FloatOp::Curve(*curve)], vec![], inputs),
        QuantOp::QMul => run_float(vec![FloatOp::Mul], vec![], inputs),
    }
}

/// Builds a program step by step and carries the fake-quant float reference along: `refs[v]` is
/// value `v` in PyTorch order as the fake-quant network computes it (quantized values
/// fake-quantized with their parameters).
pub struct Builder {
    pub p: Program,
    pub refs: Vec<Tensor>,
    pub rng: SplitMix64,
    /// The range of the activations it calibrates (default [`QRange::U8`]; `[0, 127]` gives
    /// PyTorch x86's reduce_range activations and the 7-bit kernels).
    pub act_range: QRange,
    /// The requantization rule of the conv/linear steps it builds (default integer).
    pub requantize: RequantRule,
    /// With the float rule: biases kept as `f32` constants, added before the multiply
    /// (`requantize: float_bias`); else `i32` (default).
    pub float_bias: bool,
}

impl Builder {
    pub fn new(seed: u64) -> Builder {
        Builder {
            p: Program {
                values: vec![],
                inputs: vec![],
                outputs: vec![],
                steps: vec![],
                constants: vec![],
            },
            refs: vec![],
            rng: SplitMix64::new(seed),
            act_range: QRange::U8,
            requantize: RequantRule::Integer,
            float_bias: false,
        }
    }

    /// A float input `[N, ...]` (PyTorch order) with the reference data `data`.
    pub fn input(&mut self, name: &str, data: Tensor) -> usize {
        let mut shape: Vec<Option<usize>> = data.shape.iter().map(|&d| Some(d)).collect();
        shape[0] = None;
        self.p.values.push(ValueInfo::float(name, shape));
        self.refs.push(data);
        self.p.inputs.push(self.p.values.len() - 1);
        self.p.values.len() - 1
    }

    pub fn constant(&mut self, t: Tensor) -> usize {
        self.p.constants.push(t);
        self.p.constants.len() - 1
    }

    /// Random i8 weights `shape`, per-channel scales around `scale`, and (optionally) a random
    /// float bias of magnitude `bias_mag`: `f32` with [`Builder::float_bias`], else an `i32`
    /// quantized for input scale `s_in`.
    pub fn weights(
        &mut self,
        shape: Vec<usize>,
        scale: f32,
        bias_mag: Option<f32>,
        s_in: f32,
    ) -> (usize, usize, Option<usize>) {
        let n: usize = shape.iter().product();
        let cout = shape[0];
        let w: Vec<i8> = (0..n)
            .map(|_| ((self.rng.next_u64() % 255) as i32 - 127) as i8)
            .collect();
        let scales: Vec<f32> = (0..cout).map(|_| scale * self.rng.uniform(0.5, 1.5)).collect();
        let bias = bias_mag.map(|m| {
            if self.float_bias {
                let b: Vec<f32> = (0..cout).map(|_| self.rng.uniform(-m, m)).collect();
                return self.constant(Tensor::f32(vec![cout], b));
            }
            let b: Vec<i32> = scales
                .iter()
                .map(|&sw| quantize_bias(self.rng.uniform(-m, m), s_in, sw).unwrap().value)
                .collect();
            self.constant(Tensor::i32(vec![cout], b))
        });
        let w = self.constant(Tensor::i8(shape, w));
        let s = self.constant(Tensor::f32(vec![cout], scales));
        (w, s, bias)
    }

    pub fn params(&self, id: usize) -> QParams {
        self.p.values[id].quant.expect("quantized")
    }

    /// Adds an int8 step. The output's parameters: `params`, else the input's for ops that keep
    /// them, else calibrated (affine u8) on the reference output. Output dtype `u8` except for a
    /// `Dequantize` (f32); layout `layout`.
    pub fn step(
        &mut self,
        name: &str,
        op: QuantOp,
        inputs: Vec<usize>,
        layout: Layout,
        params: Option<QParams>,
    ) -> usize {
        let step = Step {
            op: StepOp::Quant(op.clone()),
            inputs: inputs.clone(),
            output: self.p.values.len(),
        };
        let ins: Vec<Tensor> = inputs.iter().map(|&i| self.refs[i].clone()).collect();
        let y = twin(&self.p, &step, &ins);
        let mut shape: Vec<Option<usize>> = from_torch_order(&y.shape, layout).into_iter().map(Some).collect();
        shape[0] = None;
        let keeps = matches!(
            op,
            QuantOp::QMaxPool { .. }
                | QuantOp::QAvgPool { .. }
                | QuantOp::QAdaptiveAvgPool { .. }
                | QuantOp::QFlatten
                | QuantOp::QClamp { .. }
        );
        let (info, reference) = if matches!(op, QuantOp::Dequantize) {
            (
                ValueInfo {
                    layout,
                    ..ValueInfo::float(name, shape)
                },
                y,
            )
        } else {
            let q = params.unwrap_or_else(|| {
                if keeps {
                    self.params(inputs[0])
                } else {
                    let v = y.as_f32().unwrap();
                    let (lo, hi) = v.iter().fold((0f32, 0f32), |(a, b), &x| (a.min(x), b.max(x)));
                    qparams_affine(lo, hi, self.act_range, false).unwrap()
                }
            });
            let fq = Tensor::f32(
                y.shape.clone(),
                y.as_f32()
                    .unwrap()
                    .iter()
                    .map(|&v| q.dequantize(q.quantize(v)))
                    .collect(),
            );
            (ValueInfo::quantized(name, shape, DType::U8, layout, q), fq)
        };
        self.p.values.push(info);
        self.refs.push(reference);
        self.p.steps.push(step);
        self.p.values.len() - 1
    }

    pub fn output(&mut self, id: usize) {
        self.p.outputs.push(id);
    }

    /// A quantize step of `x` into `layout`, its parameters calibrated.
    pub fn quantize(&mut self, name: &str, x: usize, layout: Layout) -> usize {
        self.step(name, QuantOp::Quantize, vec![x], layout, None)
    }

    /// A dequantize step of `x` (PyTorch order).
    pub fn dequantize(&mut self, name: &str, x: usize) -> usize {
        self.step(name, QuantOp::Dequantize, vec![x], Layout::Torch, None)
    }

    /// A channels-last int8 convolution of `x` with random weights ([`Builder::weights`]:
    /// `(OHWI shape, scale, bias magnitude)`, quantized for `x`'s scale), output calibrated.
    pub fn qconv(
        &mut self,
        name: &str,
        x: usize,
        window: Window,
        groups: usize,
        act: Activation,
        weights: (Vec<usize>, f32, Option<f32>),
    ) -> usize {
        let (shape, scale, bias_mag) = weights;
        let s_in = self.params(x).scale();
        let (weight, weight_scales, bias) = self.weights(shape, scale, bias_mag, s_in);
        let op = QuantOp::QConv {
            window,
            groups,
            weight,
            weight_scales,
            bias,
            act,
            requantize: self.requantize,
        };
        self.step(name, op, vec![x], Layout::ChannelsLast, None)
    }

    /// An int8 linear layer on the flat value `x` with `out` features, random weights of scale
    /// `scale` and bias magnitude `bias_mag` (quantized for `x`'s scale), output calibrated.
    pub fn qlinear(
        &mut self,
        name: &str,
        x: usize,
        out: usize,
        scale: f32,
        bias_mag: Option<f32>,
        act: Activation,
    ) -> usize {
        let k = self.p.values[x].shape[1].expect("flat features known");
        let s_in = self.params(x).scale();
        let (weight, weight_scales, bias) = self.weights(vec![out, k], scale, bias_mag, s_in);
        let op = QuantOp::QLinear {
            weight,
            weight_scales,
            bias,
            act,
            requantize: self.requantize,
        };
        self.step(name, op, vec![x], Layout::Torch, None)
    }

    /// A channels-last max pooling of `x`.
    pub fn maxpool(&mut self, name: &str, x: usize, window: Window) -> usize {
        self.step(name, QuantOp::QMaxPool { window }, vec![x], Layout::ChannelsLast, None)
    }

    /// A channels-last average pooling of `x`.
    pub fn avgpool(&mut self, name: &str, x: usize, window: Window, count_include_pad: bool) -> usize {
        let op = QuantOp::QAvgPool {
            window,
            count_include_pad,
        };
        self.step(name, op, vec![x], Layout::ChannelsLast, None)
    }

    /// A channels-last adaptive average pooling of `x` to `output`.
    pub fn adaptive(&mut self, name: &str, x: usize, output: &[usize]) -> usize {
        let op = QuantOp::QAdaptiveAvgPool {
            output: output.to_vec(),
        };
        self.step(name, op, vec![x], Layout::ChannelsLast, None)
    }

    /// A flatten of `x` into PyTorch order.
    pub fn flatten(&mut self, name: &str, x: usize) -> usize {
        self.step(name, QuantOp::QFlatten, vec![x], Layout::Torch, None)
    }
}

/// Random float data in `[lo, hi)`.
pub fn random(rng: &mut SplitMix64, shape: Vec<usize>, lo: f32, hi: f32) -> Tensor {
    let n = shape.iter().product();
    Tensor::f32(shape, (0..n).map(|_| rng.uniform(lo, hi)).collect())
}
