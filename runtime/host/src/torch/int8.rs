//! CUDA int8 through libtorch: a lowered program's int8 steps (and its float steps) on libtorch
//! tensors, on CUDA or the CPU, computing exactly what `qc_runtime::exec` computes: every int8 value
//! equals the CPU executor's bit for bit. Part of the `torch` module (tch types stay inside it);
//! built only with the `torch` feature. Design and exactness arguments: docs/numerics.md, section
//! "CUDA int8 through libtorch".
//!
//! Nothing here re-derives numerics: requantization parameters come from
//! [`requant_with_bias`], [`QAdd::new`] and [`ConcatPart::new`], and the tensor code evaluates
//! `Requant::apply`, `avg_round`, `avg_pool_out`, `QAdd::apply` and `quantize` with integer (or
//! provably exact float) tensor operations. Integer matrix products go through `_int_mm`
//! (int8 × int8 → int32, cuBLASLt on CUDA).

use tch::{Kind, Tensor as TT};

use super::forward::float_step;
use super::tensors::{from_tch, tch_device, to_tch};
use super::{Device, TorchError};
use qc_runtime::kernels::{
    check_epilogue, requant_with_bias, Activation, Axis, ConcatPart, Conv2dGeom, LayerBias, Pool2dGeom,
};
use qc_runtime::program::{FloatOp, Layout, Program, QuantOp, Step, StepOp, Window};
use qc_runtime::quant::{lut_table, QAdd, QMul, QParams, Requant, RequantRule};
use qc_runtime::tensor::{DType, Tensor};

fn err(e: tch::TchError) -> TorchError {
    TorchError::Torch(e.to_string())
}

fn i64s(v: &[usize]) -> Vec<i64> {
    v.iter().map(|&x| x as i64).collect()
}

/// An error naming step `index` of `p`.
fn step_error(p: &Program, step: &Step, message: impl Into<String>) -> TorchError {
    TorchError::Step {
        step: p.value_name(step.output).to_string(),
        op: step.op.name(),
        message: message.into(),
    }
}

/// `_int_mm` on CUDA (PyTorch 2.11, `_int_mm_out_cuda` in `aten/src/ATen/native/cuda/Blas.cpp`)
/// needs `A [m, k]` with `m > 16` and `k` a positive multiple of 8, and `B [k, n]` with `n` a
/// positive multiple of 8 (cuBLASLt's int8 GEMM limits). Operands are padded with zero rows and
/// columns to meet them: a zero column of `A` meets a zero row of `B` and adds nothing to any
/// dot product, and padded output rows and columns are cut away. The CPU device gets the same
/// padding, so that the CPU tests run the code CUDA runs.
const INT_MM_MIN_ROWS: usize = 17;
const INT_MM_MULTIPLE: usize = 8;

fn round_up(x: usize, m: usize) -> usize {
    x.div_ceil(m) * m
}

/// One [`Requant`] per channel (the last axis) as int64 tensors on the device (and, for
/// [`RequantRule::Float`], the `f32` multipliers and clamp bounds).
struct RequantT {
    /// `Some((float_bias, float_multiplier, qmin − zp, qmax − zp))` as f32 tensors for the float
    /// rule.
    float: Option<(TT, TT, TT, TT)>,
    multiplier: TT,
    round: TT,
    shift: TT,
    zero_point: TT,
    qmin: TT,
    qmax: TT,
}

impl RequantT {
    fn new(rs: &[Requant], dev: tch::Device) -> RequantT {
        let col = |f: &dyn Fn(&Requant) -> i64| TT::from_slice(&rs.iter().map(f).collect::<Vec<i64>>()).to_device(dev);
        let colf = |f: &dyn Fn(&Requant) -> f32| TT::from_slice(&rs.iter().map(f).collect::<Vec<f32>>()).to_device(dev);
        let float = (rs.first().map(|r| r.rule) == Some(RequantRule::Float)).then(|| {
            (
                colf(&|r| r.float_bias),
                colf(&|r| r.float_multiplier),
                colf(&|r| (r.qmin - r.zero_point) as f32),
                colf(&|r| (r.qmax - r.zero_point) as f32),
            )
        });
        RequantT {
            float,
            multiplier: col(&|r| r.multiplier as i64),
            round: col(&|r| 1i64 << (r.shift - 1)),
            shift: col(&|r| r.shift as i64),
            zero_point: col(&|r| r.zero_point as i64),
            qmin: col(&|r| r.qmin as i64),
            qmax: col(&|r| r.qmax as i64),
        }
    }

    /// `Requant::apply` on an int64 accumulator `[.., C]` (values of `i32`):
    /// `clamp(((acc · m + 2^(shift-1)) >> shift) + zp, qmin, qmax)` in int64, `>>` PyTorch's
    /// `bitwise_right_shift`, arithmetic on signed integers (floor), as Rust's `>>` on `i64`.
    /// `|acc| ≤ 2^31` and `m < 2^31` keep `acc · m + 2^61` below `2^63` (docs/numerics.md §4).
    /// Clamping is `max` then `min`, as `i64::clamp` for `qmin ≤ qmax`. Returns `u8`.
    ///
    /// The float rule is `requantize_float`: int64 → f32 (nearest even; the values are `i32`s,
    /// so the same rounding as `i32 as f32`), one f32 add (the float bias, zero without one), one
    /// f32 multiply (separate kernels: never fused), `maximum`/`minimum` with the integer
    /// bounds, `round` (half to even), int64, plus the zero point.
    fn apply(&self, acc: &TT) -> Result<TT, TorchError> {
        if let Some((b, m, lo, hi)) = &self.float {
            return acc
                .f_to_kind(Kind::Float)
                .and_then(|v| v.f_add(b))
                .and_then(|v| v.f_mul(m))
                .and_then(|v| v.f_maximum(lo))
                .and_then(|v| v.f_minimum(hi))
                .and_then(|v| v.f_round())
                .and_then(|v| v.f_to_kind(Kind::Int64))
                .and_then(|v| v.f_add(&self.zero_point))
                .and_then(|v| v.f_to_kind(Kind::Uint8))
                .map_err(err);
        }
        acc.f_mul(&self.multiplier)
            .and_then(|v| v.f_add(&self.round))
            .and_then(|v| v.f_bitwise_right_shift(&self.shift))
            .and_then(|v| v.f_add(&self.zero_point))
            .and_then(|v| v.f_maximum(&self.qmin))
            .and_then(|v| v.f_minimum(&self.qmax))
            .and_then(|v| v.f_to_kind(Kind::Uint8))
            .map_err(err)
    }
}

/// A conv or linear layer as integer matrix products (`_int_mm`), one per group.
///
/// `acc[c] = bias[c] + Σ_k (x_k − zp)·w[c,k]` is computed as
/// `Σ_k (x_k − o)·w[c,k] + (bias[c] + (o − zp)·Σ_k w[c,k])`: the first sum by `_int_mm` on
/// `x − o`, the second (`addend`) once at load, in i64. `o = qmin + ceil((qmax − qmin)/2)`, the
/// middle of the input's range, puts `x − o` in `[−ceil(d/2), floor(d/2)] ⊂ [−128, 127]`
/// (`d = qmax − qmin ≤ 255`), so it is an int8 operand (`o = 128` for the full u8 range, 64 for
/// 7-bit activations). Every partial sum of `_int_mm` is bounded by `K · ceil(d/2) · 128`,
/// which is at most `K · max|x − zp| · 128 ≤ 2^31 − 1` because `accumulator_fits` holds
/// (checked at load, as the CPU executor does): the int32 accumulation never wraps or
/// saturates, whatever order cuBLASLt sums in. The sum of the two parts is the exact `acc`
/// (the CPU's i32 value, which does not wrap either), formed in int64.
/// Padded taps of a convolution hold `zp − o` (real 0): they add `(zp − o)·w` to the product and
/// the addend's `(o − zp)·w` cancels it, exactly as `(zp − zp)·w = 0` on the CPU.
struct Gemm {
    /// Per group: `B = wᵀ`, int8 `[round8(K), round8(Cout/groups)]`, zero-padded.
    b: Vec<TT>,
    /// `K` per group (`KH·KW·Cin/groups`, or the linear layer's `in_features`).
    k: usize,
    /// Output channels per group.
    cog: usize,
    offset: i64,
    /// `bias[c] + (o − zp)·Σ_k w[c,k]`, int64 `[Cout]`.
    addend: TT,
    requant: RequantT,
}

impl Gemm {
    /// `w`: `Cout` rows of `K = len / Cout` weights (OHWI conv weights and `[M, K]` linear
    /// weights both are), `groups` consecutive blocks of output channels.
    fn new(
        w: &[i8],
        cout: usize,
        groups: usize,
        input: &QParams,
        bias: Option<&[i32]>,
        requant: &[Requant],
        dev: tch::Device,
    ) -> Result<Gemm, String> {
        let k = w.len() / cout.max(1);
        if cout == 0 || k == 0 || k * cout != w.len() || cout.checked_rem(groups) != Some(0) {
            return Err(format!("weights of {} elements for {cout} output channels", w.len()));
        }
        let zp = input.zero_point();
        check_epilogue(cout, k, zp, requant, bias).map_err(|e| e.to_string())?;
        let (qmin, qmax) = (input.range().qmin(), input.range().qmax());
        let half = (qmax - qmin + 1) / 2; // ceil((qmax - qmin) / 2)
        let offset = (qmin + half) as i64;
        // Implied by `accumulator_fits`; checked so the argument above never rests on it silently.
        if (k as u64) * (half as u64) * 128 > i32::MAX as u64 {
            return Err(format!("an int32 accumulator over {k} terms may overflow"));
        }
        let cog = cout / groups;
        let (kp, np) = (round_up(k, INT_MM_MULTIPLE), round_up(cog, INT_MM_MULTIPLE));
        let b = (0..groups)
            .map(|g| {
                let mut m = vec![0i8; kp * np];
                for c in 0..cog {
                    let row = &w[(g * cog + c) * k..][..k];
                    for (j, &v) in row.iter().enumerate() {
                        m[j * np + c] = v;
                    }
                }
                TT::from_slice(&m).reshape([kp as i64, np as i64]).to_device(dev)
            })
            .collect();
        let addend: Vec<i64> = (0..cout)
            .map(|c| {
                let sum_w: i64 = w[c * k..][..k].iter().map(|&v| v as i64).sum();
                bias.map_or(0, |b| b[c] as i64) + (offset - zp as i64) * sum_w
            })
            .collect();
        Ok(Gemm {
            b,
            k,
            cog,
            offset,
            addend: TT::from_slice(&addend).to_device(dev),
            requant: RequantT::new(requant, dev),
        })
    }

    /// `A [R, K]` int8 of group `g` → `A·B_g`, int32 `[R, Cout/groups]` (padded as
    /// [`INT_MM_MIN_ROWS`] explains, then cut back).
    fn product(&self, a: &TT, g: usize) -> Result<TT, TorchError> {
        let r = a.size()[0];
        let kp = self.b[g].size()[0];
        let extra_rows = (INT_MM_MIN_ROWS as i64 - r).max(0);
        // Row-major operands (`_int_mm_out_cuda` notes cuBLAS trouble with some transposed ones).
        let a = if extra_rows > 0 || kp > self.k as i64 {
            a.f_constant_pad_nd([0, kp - self.k as i64, 0, extra_rows])
                .map_err(err)?
        } else {
            a.f_contiguous().map_err(err)?
        };
        a.f_internal_int_mm(&self.b[g])
            .and_then(|y| y.f_narrow(0, 0, r))
            .and_then(|y| y.f_narrow(1, 0, self.cog as i64))
            .map_err(err)
    }

    /// `acc` int32 `[R, Cout]` → output codes `[R, Cout]`.
    fn finish(&self, acc: &TT) -> Result<TT, TorchError> {
        let acc = acc
            .f_to_kind(Kind::Int64)
            .and_then(|a| a.f_add(&self.addend))
            .map_err(err)?;
        self.requant.apply(&acc)
    }
}

/// A convolution with one input channel per group (depthwise, any channel multiplier) as exact
/// integer tensor arithmetic instead of one tiny `_int_mm` per channel: `(x − zp)·w` per tap in
/// int32 (`|·| ≤ 255·128`), summed over the taps in int64, plus the bias, then `Requant`.
/// Padding is 0 in the centred domain (the input's zero point, real 0).
struct Depthwise {
    /// int32 `[taps, Cout]`.
    w: TT,
    /// Output channel `c` reads input channel `c / multiplier`: int64 `[Cout]`, when the
    /// multiplier is not 1.
    channel: Option<TT>,
    /// int64 `[Cout]`.
    bias: TT,
    requant: RequantT,
}

/// What a step needs beyond the program, on the device, made once.
enum Prepared {
    Nothing,
    Conv(Box<Gemm>),
    Depthwise(Box<Depthwise>),
    Linear(Box<Gemm>),
    Add(QAdd),
    Concat(Vec<ConcatPart>),
    /// `qlut`: the CPU runtime's table ([`lut_table`]) as an int64 tensor `[256]`.
    Lut(TT),
    Mul(QMul),
}

/// A program with its constants and int8 parameters on a device, ready to run any number of
/// batches (any batch size): [`Int8Session::run`] gives the bits `qc_runtime::exec::run` gives, for
/// every int8 value; float steps run on libtorch (as [`super::run_program`]), so values
/// computed by float steps agree with the CPU's reference interpreter to float rounding only.
pub struct Int8Session {
    program: Program,
    device: tch::Device,
    /// The `f32` constants (the float steps' weights) on the device; others empty.
    consts: Vec<TT>,
    prepared: Vec<Prepared>,
    /// For each value, the last step reading it (`None`: never read, or an output).
    last_use: Vec<Option<usize>>,
}

impl Int8Session {
    /// Validates `program` (as `Executor::new` does), derives the integer parameters with the
    /// CPU runtime's functions, and uploads weights and parameters to `device`.
    pub fn new(program: Program, device: Device) -> Result<Int8Session, TorchError> {
        qc_runtime::validate::validate(&program).map_err(|e| TorchError::Torch(e.to_string()))?;
        let dev = tch_device(device)?;
        let consts = program
            .constants
            .iter()
            .map(|c| match c.dtype() {
                DType::F32 => to_tch(c).map(|t| t.to_device(dev)),
                _ => Ok(TT::new()),
            })
            .collect::<Result<_, _>>()?;
        let prepared = program
            .steps
            .iter()
            .map(|step| prepare(&program, step, dev).map_err(|m| step_error(&program, step, m)))
            .collect::<Result<_, _>>()?;
        let last_use = program.last_uses();
        Ok(Int8Session {
            program,
            device: dev,
            consts,
            prepared,
            last_use,
        })
    }

    pub fn program(&self) -> &Program {
        &self.program
    }

    /// Runs on host `inputs` (in `program.inputs` order, any batch size); returns the outputs
    /// on the host, in `program.outputs` order.
    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, TorchError> {
        let p = &self.program;
        p.check_inputs(inputs).map_err(|e| TorchError::Torch(e.to_string()))?;
        let _guard = tch::no_grad_guard();
        let mut values: Vec<Option<TT>> = (0..p.values.len()).map(|_| None).collect();
        for (t, &id) in inputs.iter().zip(&p.inputs) {
            values[id] = Some(to_tch(t)?.to_device(self.device));
        }
        for (index, step) in p.steps.iter().enumerate() {
            let args: Vec<&TT> = step
                .inputs
                .iter()
                .map(|&i| {
                    values[i]
                        .as_ref()
                        .ok_or_else(|| step_error(p, step, "an input is not computed"))
                })
                .collect::<Result<_, _>>()?;
            let shapes: Vec<Vec<usize>> = args
                .iter()
                .map(|t| t.size().iter().map(|&d| d as usize).collect())
                .collect();
            let shape_refs: Vec<&[usize]> = shapes.iter().map(|s| s.as_slice()).collect();
            let out_shape = qc_runtime::validate::infer(p, step, &shape_refs).map_err(|m| step_error(p, step, m))?;
            let out = match &step.op {
                StepOp::Float(op) => {
                    let out = self.float(op, &args)?;
                    // The CPU executor refuses a non-finite float step output; so does this.
                    let finite = out.f_isfinite().and_then(|f| f.f_all()).map_err(err)?;
                    if !bool::try_from(&finite).map_err(err)? {
                        return Err(TorchError::NonFiniteValue {
                            value: p.value_name(step.output).to_string(),
                        });
                    }
                    out
                }
                StepOp::Quant(op) => {
                    let input = StepIn {
                        p,
                        step,
                        prep: &self.prepared[index],
                        args: &args,
                        shapes: &shapes,
                        out_shape: &out_shape,
                    };
                    quant_step(&input, op)?
                }
            };
            if out.size() != i64s(&out_shape) {
                return Err(step_error(
                    p,
                    step,
                    format!("produced {:?}, expected {out_shape:?}", out.size()),
                ));
            }
            values[step.output] = Some(out);
            for &i in &step.inputs {
                if self.last_use[i] == Some(index) {
                    values[i] = None;
                }
            }
        }
        p.outputs
            .iter()
            .map(|&id| match &values[id] {
                Some(t) => from_tch(t),
                None => Err(TorchError::Torch(format!(
                    "output `{}` is not computed",
                    p.value_name(id)
                ))),
            })
            .collect()
    }

    /// A float step, as [`super::run_program`] runs it.
    fn float(&self, op: &FloatOp, args: &[&TT]) -> Result<TT, TorchError> {
        let x = args[0];
        match op {
            FloatOp::Conv {
                window: w,
                groups,
                weight,
                bias,
            } => {
                let bias = bias.map(|b| &self.consts[b]);
                let (s, p, d) = (i64s(&w.stride), i64s(&w.pad), i64s(&w.dilation));
                if w.kernel.len() == 1 {
                    x.f_conv1d(&self.consts[*weight], bias, s, p, d, *groups as i64)
                } else {
                    x.f_conv2d(&self.consts[*weight], bias, s, p, d, *groups as i64)
                }
                .map_err(err)
            }
            FloatOp::Linear { weight, bias } => x
                .f_linear(&self.consts[*weight], bias.map(|b| &self.consts[b]))
                .map_err(err),
            other => float_step(other, &self.consts, args, false),
        }
    }
}

/// Validates `program` and runs it once through [`Int8Session`] on `device`.
pub fn run_program_int8(program: &Program, inputs: &[Tensor], device: Device) -> Result<Vec<Tensor>, TorchError> {
    Int8Session::new(program.clone(), device)?.run(inputs)
}

fn quant_of(p: &Program, id: usize) -> Result<QParams, String> {
    p.values
        .get(id)
        .and_then(|v| v.quant)
        .ok_or_else(|| "a quantized value without parameters".to_string())
}

/// Derives one step's integer parameters (with the CPU runtime's functions) and uploads them.
fn prepare(p: &Program, step: &Step, dev: tch::Device) -> Result<Prepared, String> {
    let StepOp::Quant(op) = &step.op else {
        return Ok(Prepared::Nothing);
    };
    Ok(match op {
        QuantOp::QConv {
            weight,
            weight_scales,
            bias,
            act,
            groups,
            requantize,
            ..
        } => prepare_weighted(
            p,
            step,
            (*weight, *weight_scales, *bias, *act, *requantize),
            Some(*groups),
            dev,
        )?,
        QuantOp::QLinear {
            weight,
            weight_scales,
            bias,
            act,
            requantize,
        } => prepare_weighted(p, step, (*weight, *weight_scales, *bias, *act, *requantize), None, dev)?,
        QuantOp::QAdd { relu } => {
            let add = QAdd::new(
                &quant_of(p, step.inputs[0])?,
                &quant_of(p, step.inputs[1])?,
                &quant_of(p, step.output)?,
            )
            .map_err(|e| e.to_string())?;
            Prepared::Add(if *relu { add.with_relu() } else { add })
        }
        QuantOp::QConcat => {
            let out = quant_of(p, step.output)?;
            Prepared::Concat(
                step.inputs
                    .iter()
                    .map(|&i| ConcatPart::new(0, &quant_of(p, i)?, &out).map_err(|e| e.to_string()))
                    .collect::<Result<_, _>>()?,
            )
        }
        QuantOp::QLut(curve) => {
            let table = lut_table(*curve, &quant_of(p, step.inputs[0])?, &quant_of(p, step.output)?);
            let table: Vec<i64> = table.iter().map(|&v| v as i64).collect();
            Prepared::Lut(TT::from_slice(&table).to_device(dev))
        }
        QuantOp::QMul => Prepared::Mul(
            QMul::new(
                &quant_of(p, step.inputs[0])?,
                &quant_of(p, step.inputs[1])?,
                &quant_of(p, step.output)?,
            )
            .map_err(|e| e.to_string())?,
        ),
        _ => Prepared::Nothing,
    })
}

/// A `qconv` (`groups` given) or `qlinear`: requantization from the CPU runtime's
/// [`requant_with_bias`], then a [`Gemm`] (or, one input channel per group, a [`Depthwise`]).
fn prepare_weighted(
    p: &Program,
    step: &Step,
    (weight, weight_scales, bias, act, rule): (
        usize,
        usize,
        Option<usize>,
        qc_runtime::kernels::Activation,
        RequantRule,
    ),
    groups: Option<usize>,
    dev: tch::Device,
) -> Result<Prepared, String> {
    let (input, output) = (quant_of(p, step.inputs[0])?, quant_of(p, step.output)?);
    let scales = p.constants[weight_scales].as_f32().ok_or("weight scales are not f32")?;
    let bias = bias
        .map(|b| LayerBias::of(&p.constants[b]).ok_or("the bias is neither i32 nor f32"))
        .transpose()?;
    let (requant, bias) =
        requant_with_bias(&input, scales, &output, act, rule, bias).map_err(|e| format!("requantization: {e}"))?;
    let wt = &p.constants[weight];
    let w = wt.as_i8().ok_or("weights are not i8")?;
    let cout = requant.len();
    let cig = wt.shape.last().copied().unwrap_or(0);
    let Some(groups) = groups else {
        return Ok(Prepared::Linear(Box::new(Gemm::new(
            w, cout, 1, &input, bias, &requant, dev,
        )?)));
    };
    if cig != 1 || groups == 1 {
        return Ok(Prepared::Conv(Box::new(Gemm::new(
            w, cout, groups, &input, bias, &requant, dev,
        )?)));
    }
    let taps = w.len() / cout.max(1);
    if cout == 0 || taps * cout != w.len() || cout.checked_rem(groups) != Some(0) {
        return Err(format!("weights of {} elements for {cout} output channels", w.len()));
    }
    check_epilogue(cout, taps, input.zero_point(), &requant, bias).map_err(|e| e.to_string())?;
    let mut w_t = vec![0i32; taps * cout];
    for c in 0..cout {
        for t in 0..taps {
            w_t[t * cout + c] = w[c * taps + t] as i32;
        }
    }
    let multiplier = cout / groups;
    let channel = (multiplier != 1).then(|| {
        let idx: Vec<i64> = (0..cout).map(|c| (c / multiplier) as i64).collect();
        TT::from_slice(&idx).to_device(dev)
    });
    let b: Vec<i64> = (0..cout).map(|c| bias.map_or(0, |b| b[c] as i64)).collect();
    Ok(Prepared::Depthwise(Box::new(Depthwise {
        w: TT::from_slice(&w_t).reshape([taps as i64, cout as i64]).to_device(dev),
        channel,
        bias: TT::from_slice(&b).to_device(dev),
        requant: RequantT::new(&requant, dev),
    })))
}

/// The `(H, W)` axes of a window (1-D: an `H` axis of one tap), as the CPU executor builds them.
fn axes(w: &Window) -> (Axis, Axis) {
    let a = |i: usize| Axis::new(w.kernel[i], w.stride[i], w.pad[i], w.dilation[i]);
    if w.kernel.len() == 1 {
        (Axis::new(1, 1, 0, 1), a(0))
    } else {
        (a(0), a(1))
    }
}

/// A channels-last value as `[N, H, W, C]` (`[N, L, C]` read as `H = 1`).
fn nhwc(x: &TT, shape: &[usize]) -> Result<(TT, [usize; 4]), TorchError> {
    let d = match *shape {
        [n, l, c] => [n, 1, l, c],
        [n, h, w, c] => [n, h, w, c],
        _ => return Err(TorchError::Torch(format!("a channels-last value of shape {shape:?}"))),
    };
    Ok((x.f_reshape(i64s(&d)).map_err(err)?, d))
}

/// Moves a tensor of layout `from` into layout `to` (rank 3 and 4; others are the same in both).
fn relayout(x: &TT, from: Layout, to: Layout) -> Result<TT, TorchError> {
    let dims: &[i64] = match (from, to, x.dim()) {
        (Layout::Torch, Layout::ChannelsLast, 4) => &[0, 2, 3, 1],
        (Layout::ChannelsLast, Layout::Torch, 4) => &[0, 3, 1, 2],
        (Layout::Torch, Layout::ChannelsLast, 3) | (Layout::ChannelsLast, Layout::Torch, 3) => &[0, 2, 1],
        _ => return Ok(x.shallow_clone()),
    };
    x.f_permute(dims).and_then(|t| t.f_contiguous()).map_err(err)
}

/// `[N, Hp, Wp, C]` (padded) → the windows `[N, OH, OW, KH, KW, C]` of a convolution (a view
/// where possible): `unfold` over the dilated span, then every `dilation`-th tap.
fn im2col(x: &TT, h: &Axis, w: &Axis, oh: usize, ow: usize) -> Result<TT, TorchError> {
    let (sh, sw) = (h.span() as i64, w.span() as i64);
    x.f_unfold(1, sh, h.stride as i64)
        .and_then(|v| v.f_slice(4, 0, sh, h.dilation as i64))
        .and_then(|v| v.f_unfold(2, sw, w.stride as i64))
        .and_then(|v| v.f_slice(5, 0, sw, w.dilation as i64))
        .and_then(|v| v.f_narrow(1, 0, oh as i64))
        .and_then(|v| v.f_narrow(2, 0, ow as i64))
        .and_then(|v| v.f_permute([0, 1, 2, 4, 5, 3]))
        .map_err(err)
}

/// `avg_round(sum, count)` elementwise on int64 tensors (`count ≥ 1`): floor division (PyTorch's
/// `rounding_mode="floor"` is exact on integers), remainder `r ∈ [0, count)`, then up when
/// `2r > count`, and to even on a tie, exactly as `quant::avg_round`.
fn avg_round(sum: &TT, count: &TT) -> Result<TT, TorchError> {
    let q = sum.f_div_tensor_mode(count, "floor").map_err(err)?;
    let r = sum.f_sub(&q.f_mul(count).map_err(err)?).map_err(err)?;
    let twice = r.f_mul_scalar(2).map_err(err)?;
    let up = twice
        .f_gt_tensor(count)
        .and_then(|t| t.f_to_kind(Kind::Int64))
        .map_err(err)?;
    let tie = twice
        .f_eq_tensor(count)
        .and_then(|t| t.f_to_kind(Kind::Int64))
        .and_then(|t| t.f_mul(&q.f_bitwise_and(1)?))
        .map_err(err)?;
    q.f_add(&up).and_then(|v| v.f_add(&tie)).map_err(err)
}

/// `avg_pool_out(sum, elems, divisor, zp, range)` on int64 tensors (broadcasting): the centring
/// `sum − elems·zp` is exact in int64 (the CPU's i32 does not wrap for the windows both accept).
fn avg_pool_out(sum: &TT, elems: &TT, divisor: &TT, q: &QParams) -> Result<TT, TorchError> {
    let zp = q.zero_point() as i64;
    let centred = sum.f_sub(&elems.f_mul_scalar(zp).map_err(err)?).map_err(err)?;
    avg_round(&centred, divisor)?
        .f_add_scalar(zp)
        .and_then(|v| v.f_clamp(q.range().qmin() as i64, q.range().qmax() as i64))
        .and_then(|v| v.f_to_kind(Kind::Uint8))
        .map_err(err)
}

/// A host int64 vector as a device tensor of `shape`.
fn i64_tensor(v: &[i64], shape: &[i64], dev: tch::Device) -> Result<TT, TorchError> {
    TT::from_slice(v)
        .f_reshape(shape)
        .map(|t| t.to_device(dev))
        .map_err(err)
}

fn kernel_error(e: qc_runtime::kernels::KernelError) -> String {
    e.to_string()
}

/// One int8 step's program, prepared operands, device inputs and shapes, as [`quant_step`]'s
/// per-op functions read them.
struct StepIn<'a> {
    p: &'a Program,
    step: &'a Step,
    prep: &'a Prepared,
    args: &'a [&'a TT],
    /// The inputs' shapes.
    shapes: &'a [Vec<usize>],
    /// What `validate::infer` says the output is.
    out_shape: &'a [usize],
}

impl StepIn<'_> {
    /// An error naming the step.
    fn fail(&self, message: String) -> TorchError {
        step_error(self.p, self.step, message)
    }

    /// Value `id`'s quantization parameters.
    fn param(&self, id: usize) -> Result<QParams, TorchError> {
        quant_of(self.p, id).map_err(|m| self.fail(m))
    }
}

/// One int8 step on device tensors: the op's function, then the output's shape.
fn quant_step(s: &StepIn, op: &QuantOp) -> Result<TT, TorchError> {
    let out = match op {
        QuantOp::Quantize => quantize(s)?,
        QuantOp::Dequantize => dequantize(s)?,
        QuantOp::QConv { window, groups, .. } => conv(s, window, *groups)?,
        QuantOp::QLinear { .. } => linear(s)?,
        QuantOp::QAdd { .. } => add(s)?,
        QuantOp::QMaxPool { window } => max_pool(s, window)?,
        QuantOp::QAvgPool {
            window,
            count_include_pad,
        } => avg_pool(s, window, *count_include_pad)?,
        QuantOp::QAdaptiveAvgPool { output } => adaptive_avg_pool(s, output)?,
        QuantOp::QConcat => concat(s)?,
        QuantOp::QFlatten => flatten(s)?,
        QuantOp::QClamp { act } => clamp(s, *act)?,
        QuantOp::QLut(_) => lut(s)?,
        QuantOp::QMul => mul(s)?,
    };
    out.f_reshape(i64s(s.out_shape).as_slice()).map_err(err)
}

/// `quantize`: f32 → codes, with the CPU's rounding and saturation.
fn quantize(s: &StepIn) -> Result<TT, TorchError> {
    let x = s.args[0];
    let in_info = &s.p.values[s.step.inputs[0]];
    let out_info = &s.p.values[s.step.output];
    let step = s.step;
    // quantize(x) = clamp(rint(x · inv_s) + zp, qmin, qmax), all f32: `mul_scalar`
    // multiplies f32 by the f32 `1/s` (the scalar is exact in f32; one IEEE product, no
    // FMA); `round` is round-half-to-even (`nearbyint`); NaN → 0 → zp. Clamping the
    // integer-valued float to `[qmin − zp, qmax − zp]` before adding `zp` equals the
    // CPU's saturating cast, add and clamp (its bounds lie inside i32). The codes are
    // then exact small integers, cast exactly to u8/i8.
    let q = s.param(step.output)?;
    let (lo, hi) = (q.range().qmin() - q.zero_point(), q.range().qmax() - q.zero_point());
    let kind = match out_info.dtype {
        DType::I8 => Kind::Int8,
        _ => Kind::Uint8,
    };
    let codes = x
        .f_mul_scalar(q.inv_scale() as f64)
        .and_then(|v| v.f_round())
        .and_then(|v| v.f_nan_to_num(0.0, None, None))
        .and_then(|v| v.f_clamp(lo as f64, hi as f64))
        .and_then(|v| v.f_add_scalar(q.zero_point() as f64))
        .and_then(|v| v.f_to_kind(kind))
        .map_err(err)?;
    relayout(&codes, in_info.layout, out_info.layout)
}

/// `dequantize`: codes → f32, one rounding.
fn dequantize(s: &StepIn) -> Result<TT, TorchError> {
    let x = s.args[0];
    let in_info = &s.p.values[s.step.inputs[0]];
    let out_info = &s.p.values[s.step.output];
    let step = s.step;
    // (q − zp) as f32 · s: the difference is exact in int32 and in f32, one rounding.
    let q = s.param(step.inputs[0])?;
    let moved = relayout(x, in_info.layout, out_info.layout)?;
    moved
        .f_to_kind(Kind::Int)
        .and_then(|v| v.f_sub_scalar(q.zero_point() as i64))
        .and_then(|v| v.f_to_kind(Kind::Float))
        .and_then(|v| v.f_mul_scalar(q.scale() as f64))
        .map_err(err)
}

/// `qconv`: a grouped convolution through `_int_mm` on im2col rows, or a depthwise one by
/// multiply and sum, then the requantization.
fn conv(s: &StepIn, window: &Window, groups: usize) -> Result<TT, TorchError> {
    let x = s.args[0];
    let shapes = s.shapes;
    let out_shape = s.out_shape;
    let prep = s.prep;
    let step = s.step;
    let input = s.param(step.inputs[0])?;
    let zp = input.zero_point() as i64;
    let (x4, [n, h, w, c]) = nhwc(x, &shapes[0])?;
    let (ah, aw) = axes(window);
    let out_c = *out_shape.last().unwrap_or(&0);
    let geom = Conv2dGeom {
        batch: n,
        in_h: h,
        in_w: w,
        in_c: c,
        out_c,
        h: ah,
        w: aw,
        groups,
    };
    let [oh, ow] = geom.out_hw().map_err(kernel_error).map_err(|m| s.fail(m))?;
    let pad = [
        0,
        0,
        aw.padding as i64,
        aw.padding as i64,
        ah.padding as i64,
        ah.padding as i64,
    ];
    // Centred input, padded with 0 = real 0 (the CPU skips padded taps: same sum).
    let centred = x4
        .f_to_kind(Kind::Int16)
        .and_then(|v| v.f_sub_scalar(zp))
        .and_then(|v| v.f_constant_pad_nd(pad))
        .map_err(err)?;
    let rows = (n * oh * ow) as i64;
    let acc_rows = match prep {
        Prepared::Conv(g) => {
            // x − o = (x − zp) + (zp − o) ∈ [−128, 127] (see `Gemm`): exact as int8.
            let a = centred
                .f_add_scalar(zp - g.offset)
                .and_then(|v| v.f_to_kind(Kind::Int8))
                .map_err(err)?;
            let cols = im2col(&a, &ah, &aw, oh, ow)?;
            let cig = (c / groups) as i64;
            let k = (ah.kernel * aw.kernel) as i64 * cig;
            let parts = (0..groups)
                .map(|gi| {
                    let ag = cols
                        .f_narrow(5, gi as i64 * cig, cig)
                        .and_then(|v| v.f_reshape([rows, k]))
                        .map_err(err)?;
                    g.product(&ag, gi)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let acc = if parts.len() == 1 {
                parts[0].shallow_clone()
            } else {
                TT::f_cat(&parts, 1).map_err(err)?
            };
            g.finish(&acc)?
        }
        Prepared::Depthwise(d) => {
            let taps = (ah.kernel * aw.kernel) as i64;
            let cols = im2col(&centred.f_to_kind(Kind::Int).map_err(err)?, &ah, &aw, oh, ow)?
                .f_reshape([rows, taps, c as i64])
                .map_err(err)?;
            let cols = match &d.channel {
                Some(idx) => cols.f_index_select(2, idx).map_err(err)?,
                None => cols,
            };
            let acc = cols
                .f_mul(&d.w)
                .and_then(|v| v.f_sum_dim_intlist([1i64].as_slice(), false, Kind::Int64))
                .and_then(|v| v.f_add(&d.bias))
                .map_err(err)?;
            d.requant.apply(&acc)?
        }
        _ => return Err(s.fail("qconv is not prepared".into())),
    };
    Ok(acc_rows)
}

/// `qlinear`: `_int_mm` on the offset input rows, then the requantization.
fn linear(s: &StepIn) -> Result<TT, TorchError> {
    let x = s.args[0];
    let shapes = s.shapes;
    let prep = s.prep;
    let Prepared::Linear(g) = prep else {
        return Err(s.fail("qlinear is not prepared".into()));
    };
    let k = *shapes[0].last().unwrap_or(&0) as i64;
    let rows = shapes[0].iter().product::<usize>() as i64 / k.max(1);
    let a = x
        .f_reshape([rows, k])
        .and_then(|v| v.f_to_kind(Kind::Int16))
        .and_then(|v| v.f_sub_scalar(g.offset))
        .and_then(|v| v.f_to_kind(Kind::Int8))
        .map_err(err)?;
    g.finish(&g.product(&a, 0)?)
}

/// `qadd`: [`QAdd::apply`] in int64.
fn add(s: &StepIn) -> Result<TT, TorchError> {
    let x = s.args[0];
    let dev = x.device();
    let prep = s.prep;
    let args = s.args;
    let Prepared::Add(add) = prep else {
        return Err(s.fail("qadd is not prepared".into()));
    };
    // QAdd::apply in int64: ((q − zp) << 20) is below 2^28, times m < 2^31 below 2^59.
    let lift = |t: &TT, zp: i32, m: i32, sh: u32| -> Result<TT, TorchError> {
        t.f_to_kind(Kind::Int64)
            .and_then(|v| v.f_sub_scalar(zp as i64))
            .and_then(|v| v.f_mul_scalar(1i64 << qc_runtime::quant::QADD_LEFT_SHIFT))
            .and_then(|v| v.f_mul_scalar(m as i64))
            .and_then(|v| v.f_add_scalar(1i64 << (sh - 1)))
            .and_then(|v| v.f_bitwise_right_shift_tensor_scalar(sh as i64))
            .map_err(err)
    };
    let a = lift(x, add.a_zero_point, add.a_multiplier, add.a_shift)?;
    let b = lift(args[1], add.b_zero_point, add.b_multiplier, add.b_shift)?;
    let sum = a.f_add(&b).map_err(err)?;
    RequantT::new(&[add.out], dev).apply(&sum)
}

/// `qmaxpool`: PyTorch's `max_pool2d` on the codes as f32 (exact).
fn max_pool(s: &StepIn, window: &Window) -> Result<TT, TorchError> {
    let x = s.args[0];
    let shapes = s.shapes;
    // The codes as f32 (exact), PyTorch's max_pool2d (padding never wins, dilation,
    // ceil_mode: the rules the CPU kernel follows; the geometry checks are the CPU's),
    // back to u8: a max selects one of the exact values.
    let (x4, [n, h, w, c]) = nhwc(x, &shapes[0])?;
    let (ah, aw) = axes(window);
    pool_geom(n, h, w, c, ah, aw, window.ceil_mode).map_err(|m| s.fail(m))?;
    x4.f_to_kind(Kind::Float)
        .and_then(|v| v.f_permute([0, 3, 1, 2]))
        .and_then(|v| {
            v.f_max_pool2d(
                [ah.kernel as i64, aw.kernel as i64],
                [ah.stride as i64, aw.stride as i64],
                [ah.padding as i64, aw.padding as i64],
                [ah.dilation as i64, aw.dilation as i64],
                window.ceil_mode,
            )
        })
        .and_then(|v| v.f_permute([0, 2, 3, 1]))
        .and_then(|v| v.f_to_kind(Kind::Uint8))
        .map_err(err)
}

/// `qavgpool`: exact window sums, the CPU's element counts and divisors, [`avg_pool_out`].
fn avg_pool(s: &StepIn, window: &Window, count_include_pad: bool) -> Result<TT, TorchError> {
    let x = s.args[0];
    let dev = x.device();
    let shapes = s.shapes;
    let step = s.step;
    let q = s.param(step.inputs[0])?;
    let (x4, [n, h, w, c]) = nhwc(x, &shapes[0])?;
    let (ah, aw) = axes(window);
    if ah.dilation != 1 || aw.dilation != 1 {
        return Err(s.fail("average pooling has no dilation".into()));
    }
    if ah.kernel.saturating_mul(aw.kernel) > 1 << 23 {
        return Err(s.fail("average pooling window over 2^23 elements".into()));
    }
    let [oh, ow] = pool_geom(n, h, w, c, ah, aw, window.ceil_mode).map_err(|m| s.fail(m))?;
    // Window sums of the codes: PyTorch's avg_pool2d in f64 with divisor 1 sums the real
    // elements of PyTorch's windows (the CPU kernel's, `Axis::avg_bounds`). Every partial
    // sum is an integer below 2^23 · 255 < 2^53: exact in f64 in any order.
    let sums = x4
        .f_to_kind(Kind::Double)
        .and_then(|v| v.f_permute([0, 3, 1, 2]))
        .and_then(|v| {
            v.f_avg_pool2d(
                [ah.kernel as i64, aw.kernel as i64],
                [ah.stride as i64, aw.stride as i64],
                [ah.padding as i64, aw.padding as i64],
                window.ceil_mode,
                true,
                Some(1),
            )
        })
        .and_then(|v| v.f_permute([0, 2, 3, 1]))
        .and_then(|v| v.f_to_kind(Kind::Int64))
        .map_err(err)?;
    // Element counts and divisors per output position, on the host, as the CPU does.
    let hb: Vec<(usize, usize, usize)> = (0..oh).map(|o| ah.avg_bounds(o, h)).collect();
    let wb: Vec<(usize, usize, usize)> = (0..ow).map(|o| aw.avg_bounds(o, w)).collect();
    let mut elems = Vec::with_capacity(oh * ow);
    let mut divisor = Vec::with_capacity(oh * ow);
    for &(h0, h1, hp) in &hb {
        for &(w0, w1, wp) in &wb {
            let e = ((h1 - h0) * (w1 - w0)) as i64;
            elems.push(e);
            divisor.push(if count_include_pad { (hp * wp) as i64 } else { e });
        }
    }
    let shape = [1, oh as i64, ow as i64, 1];
    let elems = i64_tensor(&elems, &shape, dev)?;
    let divisor = i64_tensor(&divisor, &shape, dev)?;
    avg_pool_out(&sums, &elems, &divisor, &q)
}

/// `qadaptive_avgpool`: window sums from 2-D prefix sums, [`avg_pool_out`].
fn adaptive_avg_pool(s: &StepIn, output: &[usize]) -> Result<TT, TorchError> {
    let x = s.args[0];
    let dev = x.device();
    let shapes = s.shapes;
    let step = s.step;
    // Window sums from 2-D prefix sums in int64 (exact), windows as the CPU's
    // (`[floor(o·H/OH), ceil((o+1)·H/OH))`), then avg_pool_out with divisor = elements.
    let q = s.param(step.inputs[0])?;
    let (x4, [_, h, w, _]) = nhwc(x, &shapes[0])?;
    let [oh, ow] = match output[..] {
        [l] => [1, l],
        [a, b] => [a, b],
        _ => return Err(s.fail("adaptive pooling over 1 or 2 dims".into())),
    };
    if (h.div_ceil(oh) + 1).saturating_mul(w.div_ceil(ow) + 1) > 1 << 23 {
        return Err(s.fail("adaptive average pooling window over 2^23 elements".into()));
    }
    let bounds = |o: usize, n: usize, on: usize| (o * n / on, ((o + 1) * n).div_ceil(on));
    let hb: Vec<(usize, usize)> = (0..oh).map(|o| bounds(o, h, oh)).collect();
    let wb: Vec<(usize, usize)> = (0..ow).map(|o| bounds(o, w, ow)).collect();
    let prefix = x4
        .f_cumsum(1, Kind::Int64)
        .and_then(|v| v.f_cumsum(2, Kind::Int64))
        .and_then(|v| v.f_constant_pad_nd([0, 0, 1, 0, 1, 0]))
        .map_err(err)?;
    let idx = |v: Vec<i64>| i64_tensor(&v, &[v.len() as i64], dev);
    let h0 = idx(hb.iter().map(|b| b.0 as i64).collect())?;
    let h1 = idx(hb.iter().map(|b| b.1 as i64).collect())?;
    let w0 = idx(wb.iter().map(|b| b.0 as i64).collect())?;
    let w1 = idx(wb.iter().map(|b| b.1 as i64).collect())?;
    let corner = |hi: &TT, wi: &TT| {
        prefix
            .f_index_select(1, hi)
            .and_then(|v| v.f_index_select(2, wi))
            .map_err(err)
    };
    let (c11, c01, c10, c00) = (
        corner(&h1, &w1)?,
        corner(&h0, &w1)?,
        corner(&h1, &w0)?,
        corner(&h0, &w0)?,
    );
    let sums = c11
        .f_sub(&c01)
        .and_then(|v| v.f_sub(&c10))
        .and_then(|v| v.f_add(&c00))
        .map_err(err)?;
    let mut elems = Vec::with_capacity(oh * ow);
    for &(a, b) in &hb {
        for &(c0, c1) in &wb {
            elems.push(((b - a) * (c1 - c0)) as i64);
        }
    }
    let elems = i64_tensor(&elems, &[1, oh as i64, ow as i64, 1], dev)?;
    avg_pool_out(&sums, &elems, &elems, &q)
}

/// `qconcat`: each input requantized to the output's parameters, along the last axis.
fn concat(s: &StepIn) -> Result<TT, TorchError> {
    let x = s.args[0];
    let dev = x.device();
    let prep = s.prep;
    let args = s.args;
    let Prepared::Concat(parts) = prep else {
        return Err(s.fail("qconcat is not prepared".into()));
    };
    // Each input: requant.apply(q − zp_i) (ConcatPart), along the last axis.
    let moved = parts
        .iter()
        .zip(args)
        .map(|(part, t)| {
            let centred = t
                .f_to_kind(Kind::Int64)
                .and_then(|v| v.f_sub_scalar(part.input_zero_point as i64))
                .map_err(err)?;
            RequantT::new(&[part.requant], dev).apply(&centred)
        })
        .collect::<Result<Vec<_>, _>>()?;
    TT::f_cat(&moved, x.dim() as i64 - 1).map_err(err)
}

/// `qflatten`: PyTorch's `flatten(1)` of the NCHW view.
fn flatten(s: &StepIn) -> Result<TT, TorchError> {
    let x = s.args[0];
    let in_info = &s.p.values[s.step.inputs[0]];
    let out_dims = i64s(s.out_shape);
    // PyTorch's flatten(1) of the NCHW view: channels-last data moves to (c, h, w) order.
    let moved = if in_info.layout == Layout::ChannelsLast {
        relayout(x, Layout::ChannelsLast, Layout::Torch)?
    } else {
        x.shallow_clone()
    };
    moved.f_reshape(out_dims.as_slice()).map_err(err)
}

/// `qlut`: each code looked up in the CPU runtime's table (`index_select`, exact).
fn lut(s: &StepIn) -> Result<TT, TorchError> {
    let Prepared::Lut(table) = s.prep else {
        return Err(s.fail("qlut is not prepared".into()));
    };
    let x = s.args[0];
    x.f_to_kind(Kind::Int64)
        .and_then(|v| v.f_flatten(0, -1))
        .and_then(|v| table.f_index_select(0, &v))
        .and_then(|v| v.f_to_kind(Kind::Uint8))
        .and_then(|v| v.f_reshape(x.size().as_slice()))
        .map_err(err)
}

/// `qmul`: [`QMul::apply`] in int64, PyTorch's broadcasting on the codes (the inputs have one
/// rank and layout; validated).
fn mul(s: &StepIn) -> Result<TT, TorchError> {
    let Prepared::Mul(m) = s.prep else {
        return Err(s.fail("qmul is not prepared".into()));
    };
    let centred = |t: &TT, zp: i32| t.f_to_kind(Kind::Int64).and_then(|v| v.f_sub_scalar(zp as i64));
    let a = centred(s.args[0], m.a_zero_point).map_err(err)?;
    let b = centred(s.args[1], m.b_zero_point).map_err(err)?;
    let acc = a.f_mul(&b).map_err(err)?;
    RequantT::new(&[m.out], acc.device()).apply(&acc)
}

/// `qclamp`: the activation's bounds on the codes.
fn clamp(s: &StepIn, act: Activation) -> Result<TT, TorchError> {
    let x = s.args[0];
    let step = s.step;
    let q = s.param(step.inputs[0])?;
    act.check().map_err(kernel_error).map_err(|m| s.fail(m))?;
    let (lo, hi) = act.bounds(&q);
    // `max` then `min`, as the CPU kernel.
    x.f_to_kind(Kind::Int64)
        .and_then(|v| v.f_clamp_min(lo as i64))
        .and_then(|v| v.f_clamp_max(hi as i64))
        .and_then(|v| v.f_to_kind(Kind::Uint8))
        .map_err(err)
}

/// The CPU kernels' pooling geometry checks (`Pool2dGeom::out_hw`); returns `[OH, OW]`.
fn pool_geom(
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    ah: Axis,
    aw: Axis,
    ceil_mode: bool,
) -> Result<[usize; 2], String> {
    Pool2dGeom {
        batch: n,
        in_h: h,
        in_w: w,
        channels: c,
        h: ah,
        w: aw,
        ceil_mode,
    }
    .out_hw()
    .map_err(kernel_error)
}
