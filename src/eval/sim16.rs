//! `qc eval --bits 16`: the model with everything quantized at 16 bits, simulated. qc's kernels
//! are 8-bit only, so the model is the recipe's QAT form (stage `observed` with `--qat`, lowered
//! with its fake quantizations) evaluated through libtorch: every activation fake-quantized with
//! 65,536 levels over the range PTQ calibration chose for it (the same clipping, 256 times finer
//! steps than 8 bits), every weight quantized per output channel (or per tensor, as the recipe
//! says) with 65,536 symmetric levels. Batch norms fold on the fly with their running statistics,
//! which per-channel weight scales absorb exactly.

use std::collections::HashMap;

use qc_compiler::ir::Stage;
use qc_compiler::plan::Plan;
use qc_compiler::RunOptions;
use qc_runtime::program::{Device, FakeQuantAt, FloatOp, Program, StepOp, ValueId};
use qc_runtime::{Tensor, TensorData};
use qc_runtime_host::torch::Session;

use super::layers::OnQuantized;

/// The 16-bit model, ready to run.
pub struct Sim16 {
    session: Session,
    /// Each fake-quantized activation: the node it quantizes and the range it represents.
    sites: HashMap<ValueId, (String, (f32, f32), f32)>,
}

/// Levels of a 16-bit quantization, as integer ranges.
const SIGNED: (i64, i64) = (-32768, 32767);
const UNSIGNED: (i64, i64) = (0, 65535);

impl Sim16 {
    /// Builds the simulation of `loaded` (the recipe binding the float weights) with the ranges
    /// of the PTQ program `ptq` (its quantized values, by node name) under `plan`.
    pub fn build(loaded: &qc_dsl::Loaded, ptq: &Program, plan: &Plan, device: Device) -> Result<Sim16, String> {
        let opts = RunOptions {
            stop_after: Some(Stage::Observed),
            qat: true,
            ..Default::default()
        };
        let module = qc_compiler::compile(loaded, &opts, &mut |_| {}, &mut |_, _| {})
            .map_err(|e| format!("the QAT form does not compile: {e:?}"))?;
        let (mut program, _, mut qat) =
            qc_compiler::lower::lower_qat(&module, false).map_err(|e| format!("the QAT form does not lower: {e}"))?;
        let ranges: HashMap<&str, (f32, f32, bool)> = ptq
            .values
            .iter()
            .filter_map(|v| {
                v.quant.map(|p| {
                    let (lo, hi) = super::layers::range_of(&p);
                    // The 8-bit range with the half step at each end that still rounds into it.
                    let half = p.scale() / 2.0;
                    (
                        super::layers::node_of(plan, &v.name),
                        (lo - half, hi + half, p.range().qmin() < 0),
                    )
                })
            })
            .collect();
        let observed_node: HashMap<&str, &str> = plan
            .nodes
            .iter()
            .filter_map(|n| n.observer.as_deref().map(|o| (o, n.node.as_str())))
            .collect();
        let mut sites = HashMap::new();
        for site in &mut qat.sites {
            match site.at {
                FakeQuantAt::Value(v) => {
                    let node = observed_node
                        .get(site.name.as_str())
                        .copied()
                        .unwrap_or(site.name.as_str());
                    let Some(&(lo, hi, signed)) = ranges.get(node) else {
                        return Err(format!("`{}` has no range in the PTQ model", site.name));
                    };
                    let (qmin, qmax) = if signed { SIGNED } else { UNSIGNED };
                    let scale = ((hi - lo) as f64 / (qmax - qmin) as f64) as f32;
                    let zero_point = (qmin as f64 - (lo as f64 / scale as f64).round()).clamp(qmin as f64, qmax as f64);
                    site.quant_min = qmin;
                    site.quant_max = qmax;
                    // 16 bits over PTQ's range as it is, not rounded to a power of two.
                    site.power_of_two = false;
                    // libtorch's fused fake quantization derives scale and zero point from the
                    // running range on every call: the range is what to set.
                    set(&mut program.constants[site.min_val], lo as f64);
                    set(&mut program.constants[site.max_val], hi as f64);
                    set(&mut program.constants[site.scale], scale as f64);
                    set(&mut program.constants[site.zero_point], zero_point);
                    set(&mut program.constants[site.fake_quant_enabled], 1.0);
                    let real = |q: f64| ((q - zero_point) * scale as f64) as f32;
                    sites.insert(v, (node.to_string(), (real(qmin as f64), real(qmax as f64)), scale));
                }
                FakeQuantAt::Weight { step, .. } => {
                    // The weight itself quantized at 16 bits; its 8-bit fake quantization off.
                    set(&mut program.constants[site.fake_quant_enabled], 0.0);
                    let weight = match &program.steps[step].op {
                        StepOp::Float(FloatOp::Conv { weight, .. }) | StepOp::Float(FloatOp::Linear { weight, .. }) => {
                            *weight
                        }
                        _ => return Err(format!("`{}` is not on a conv or linear step", site.name)),
                    };
                    let w = &mut program.constants[weight];
                    let channels = if site.per_channel {
                        w.shape.first().copied().unwrap_or(1)
                    } else {
                        1
                    };
                    if let TensorData::F32(values) = &mut w.data {
                        let q = quantize_weight(values, channels, 16);
                        *values = q.0;
                    }
                }
            }
        }
        let session = Session::with_qat(program, qat, device).map_err(|e| e.to_string())?;
        Ok(Sim16 { session, sites })
    }

    /// Runs on normalized inputs; returns the outputs.
    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, String> {
        self.session
            .run_watched(inputs, &[], &mut |_, _| std::ops::ControlFlow::Continue(()))
            .map_err(|e| e.to_string())
    }

    /// Runs on normalized inputs, handing each fake-quantized activation to `on`.
    pub fn values(&self, inputs: &[Tensor], on: OnQuantized) -> Result<(), String> {
        let watch: Vec<ValueId> = self.sites.keys().copied().collect();
        self.session
            .run_watched(inputs, &watch, &mut |id, t| {
                if let (Some((node, range, step)), Some(x)) = (self.sites.get(&id), t.as_f32()) {
                    on(node, *range, *step, x);
                }
                std::ops::ControlFlow::Continue(())
            })
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// Sets every element of a scalar-like state constant, keeping its type.
fn set(t: &mut Tensor, v: f64) {
    match &mut t.data {
        TensorData::F32(x) => x.iter_mut().for_each(|e| *e = v as f32),
        TensorData::I32(x) => x.iter_mut().for_each(|e| *e = v as i32),
        TensorData::I64(x) => x.iter_mut().for_each(|e| *e = v as i64),
        _ => {}
    }
}

/// `w` (`[C, ...]`) quantized symmetrically with `bits` bits, one scale per channel (of
/// `channels`), and dequantized; with each channel's range.
pub fn quantize_weight(w: &[f32], channels: usize, bits: u32) -> (Vec<f32>, Vec<(f32, f32)>) {
    let qmax = ((1i64 << (bits - 1)) - 1) as f64;
    let qmin = -(1i64 << (bits - 1)) as f64;
    let per = w.len() / channels.max(1);
    let mut out = Vec::with_capacity(w.len());
    let mut ranges = Vec::with_capacity(channels);
    for c in w.chunks(per.max(1)) {
        let amax = c.iter().fold(0f64, |m, &v| m.max((v as f64).abs()));
        let scale = if amax > 0.0 { amax / qmax } else { 1.0 };
        out.extend(
            c.iter()
                .map(|&v| ((v as f64 / scale).round().clamp(qmin, qmax) * scale) as f32),
        );
        ranges.push(((qmin * scale) as f32, (qmax * scale) as f32));
    }
    (out, ranges)
}
