//! `qc eval`'s per-layer report: for every quantized value (the activation of each int8 node) and
//! every quantized weight, the SQNR in dB between the float value and its quantized form, the
//! range quantization chose, the share of values outside it (clipped), the observer and the recipe
//! line or scheme default that decided it (from the plan, as `qc plan` shows it). The float values
//! come from the PTQ compile's `fused` stage run with a value hook (libtorch's `Session` or qc's
//! executor), the quantized ones from the int8 program run with the executor's hook
//! (`exec::run_with`) or from the 16-bit simulation; values are matched by node name.

use std::collections::{HashMap, HashSet};

use qc_compiler::plan::{Decision, Plan, ResolvedSpec};
use qc_dsl::SourceMap;
use qc_runtime::program::{Layout, Program, QuantOp, StepOp, ValueId};
use qc_runtime::quant::QParams;
use qc_runtime::{DType, Tensor};

/// Bins of an activation histogram.
pub const BINS: usize = 80;

/// What a row measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Activation,
    Weight,
}

/// A histogram of float values over `[lo, hi]`.
#[derive(Clone, Debug)]
pub struct Histogram {
    pub lo: f32,
    pub hi: f32,
    pub counts: Vec<u64>,
}

/// One row of the per-layer report.
#[derive(Clone, Debug)]
pub struct LayerStat {
    /// The node (a PyTorch module path).
    pub node: String,
    pub kind: Kind,
    /// Signal to quantization noise, dB; infinite when the quantized values equal the float ones.
    pub sqnr_db: f64,
    /// The range quantization represents (widest over channels for weights).
    pub range: (f32, f32),
    /// Share of float values that saturate: outside the range by more than half a step.
    pub clipped: f64,
    /// Bits, granularity and observer, as the recipe words them.
    pub scheme: String,
    /// The recipe line or scheme default that decided the observer.
    pub decided_by: String,
    /// Activations: the float values' distribution.
    pub histogram: Option<Histogram>,
    /// Weights: each output channel's float (min, max).
    pub channels: Option<Vec<(f32, f32)>>,
    /// Weights: the range each output channel's scale represents.
    pub channel_ranges: Option<Vec<(f32, f32)>>,
}

/// A quantized weight next to its float original, both in PyTorch's layout `[Cout, ...]`.
pub struct WeightPair {
    pub node: String,
    pub float: Vec<f32>,
    pub quantized: Vec<f32>,
    /// Each output channel's representable range.
    pub ranges: Vec<(f32, f32)>,
}

/// The quantized side of a comparison hands over, per value: its node name, the range it
/// represents, its step (the scale) and its values dequantized in PyTorch's layout.
pub type OnQuantized<'a> = &'a mut dyn FnMut(&str, (f32, f32), f32, &[f32]);

/// The float values of `names` in `fused` on `inputs` (normalized), by name.
pub fn float_values(
    fused: &Program,
    inputs: &[Tensor],
    names: &HashSet<String>,
) -> Result<HashMap<String, Tensor>, String> {
    let watch: Vec<ValueId> = (0..fused.values.len())
        .filter(|&i| names.contains(fused.value_name(i)))
        .collect();
    let mut out = HashMap::new();
    let mut keep = |id: ValueId, t: &Tensor| {
        if watch.contains(&id) {
            out.insert(fused.value_name(id).to_string(), t.clone());
        }
        std::ops::ControlFlow::Continue(())
    };
    if qc_runtime_host::torch::COMPILED {
        let session = qc_runtime_host::torch::Session::new(fused.clone(), qc_runtime::program::Device::Cpu)
            .map_err(|e| e.to_string())?;
        session
            .run_watched(inputs, &watch, &mut keep)
            .map_err(|e| e.to_string())?;
    } else {
        qc_runtime::exec::run_with(fused, inputs, &mut keep).map_err(|e| e.to_string())?;
    }
    for (&id, t) in fused.inputs.iter().zip(inputs) {
        if names.contains(fused.value_name(id)) {
            out.insert(fused.value_name(id).to_string(), t.clone());
        }
    }
    Ok(out)
}

/// The quantized values of an int8 program's run on `inputs`, dequantized, through the
/// executor's per-value hook.
pub fn int8_values(program: &Program, inputs: &[Tensor], on: OnQuantized) -> Result<(), String> {
    let mut failed = None;
    qc_runtime::exec::run_with(program, inputs, &mut |id, t| {
        let info = &program.values[id];
        if let Some(p) = info.quant {
            match dequantized(t, info.layout, &p) {
                Ok(x) => on(&info.name, range_of(&p), p.scale(), &x),
                Err(e) => failed = Some(e),
            }
        }
        std::ops::ControlFlow::Continue(())
    })
    .map_err(|e| e.to_string())?;
    failed.map_or(Ok(()), Err)
}

/// The plan node a quantized value stands for: the input `x` for PyTorch's `quant` stub (the
/// quantize node named after the input's observer), the node of the same name otherwise.
pub fn node_of<'a>(plan: &'a Plan, value: &'a str) -> &'a str {
    plan.nodes
        .iter()
        .find(|n| {
            matches!(n.decision, Decision::Input { quantized: true })
                && n.observer
                    .as_deref()
                    .and_then(|o| o.strip_suffix(".activation_post_process"))
                    == Some(value)
        })
        .map_or(value, |n| n.node.as_str())
}

/// `[lo, hi]`: the reals the parameters represent.
pub fn range_of(p: &QParams) -> (f32, f32) {
    (p.dequantize(p.range().qmin()), p.dequantize(p.range().qmax()))
}

/// A `u8`/`i8` tensor as reals in PyTorch's layout.
fn dequantized(t: &Tensor, layout: Layout, p: &QParams) -> Result<Vec<f32>, String> {
    let mut x = vec![0f32; t.len()];
    match t.dtype() {
        DType::U8 => qc_runtime::quant::dequantize_per_tensor(t.as_u8().unwrap_or_default(), p, &mut x),
        DType::I8 => qc_runtime::quant::dequantize_per_tensor(t.as_i8().unwrap_or_default(), p, &mut x),
        d => return Err(format!("a quantized value of type {}", d.name())),
    }
    .map_err(|e| e.to_string())?;
    let nhwc = match (layout, t.shape.as_slice()) {
        (Layout::ChannelsLast, &[n, h, w, c]) => [n, h, w, c],
        (Layout::ChannelsLast, &[n, l, c]) => [n, 1, l, c],
        _ => return Ok(x),
    };
    let mut out = vec![0f32; x.len()];
    qc_runtime::kernels::reference::layout::nhwc_to_nchw(&x, nhwc, &mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// The int8 weights of `program`'s convolutions and linear layers next to the float weights of
/// `fused` (matched by node name), dequantized with their per-channel scales.
pub fn int8_weights(program: &Program, fused: &Program) -> Vec<WeightPair> {
    let base = |p: &Program, v: ValueId| p.value_name(v).split('#').next().unwrap_or_default().to_string();
    let float_weights: HashMap<String, &Tensor> = fused
        .steps
        .iter()
        .filter_map(|s| match &s.op {
            StepOp::Float(qc_runtime::program::FloatOp::Conv { weight, .. })
            | StepOp::Float(qc_runtime::program::FloatOp::Linear { weight, .. }) => {
                Some((base(fused, s.output), &fused.constants[*weight]))
            }
            _ => None,
        })
        .collect();
    let mut pairs = vec![];
    for step in &program.steps {
        let (weight, scales) = match &step.op {
            StepOp::Quant(QuantOp::QConv {
                weight, weight_scales, ..
            })
            | StepOp::Quant(QuantOp::QLinear {
                weight, weight_scales, ..
            }) => (&program.constants[*weight], &program.constants[*weight_scales]),
            _ => continue,
        };
        let node = base(program, step.output);
        let (Some(f), Some(q), Some(s)) = (float_weights.get(&node), weight.as_i8(), scales.as_f32()) else {
            continue;
        };
        let Some(fv) = f.as_f32() else { continue };
        if fv.len() != q.len() || s.is_empty() || q.len() % s.len() != 0 {
            continue;
        }
        // The kernels' OHWI (or OKI) order back to PyTorch's OIHW (OIK): the input channels move
        // from last to second.
        let per = q.len() / s.len();
        let shape = &weight.shape;
        let cin = *shape.last().unwrap_or(&1);
        let spatial = per / cin.max(1);
        let mut quantized = vec![0f32; q.len()];
        for (o, &scale) in s.iter().enumerate() {
            for k in 0..spatial {
                for i in 0..cin {
                    let from = o * per + k * cin + i;
                    let to = o * per + i * spatial + k;
                    quantized[to] = q[from] as f32 * scale;
                }
            }
        }
        let ranges = s.iter().map(|&scale| (-128.0 * scale, 127.0 * scale)).collect();
        pairs.push(WeightPair {
            node,
            float: fv.to_vec(),
            quantized,
            ranges,
        });
    }
    pairs
}

/// Per-layer statistics: every quantized value matched with the float value of the same name,
/// and every weight pair; worst SQNR first.
pub fn report(
    plan: &Plan,
    sources: &SourceMap,
    floats: &HashMap<String, Tensor>,
    quantized: &mut dyn FnMut(OnQuantized) -> Result<(), String>,
    weights: &[WeightPair],
    bits: u8,
) -> Result<Vec<LayerStat>, String> {
    let mut rows = vec![];
    let mut seen = HashSet::new();
    quantized(&mut |value, range, step, q| {
        let name = node_of(plan, value);
        let Some(f) = floats.get(name).and_then(|t| t.as_f32()) else {
            return;
        };
        if f.len() != q.len() || !seen.insert(name.to_string()) {
            return;
        }
        let (sqnr_db, clipped) = sqnr_and_clipped(f, q, |_| widened(range, step));
        let (scheme, decided_by) = activation_words(plan, name, sources, bits);
        rows.push(LayerStat {
            node: name.to_string(),
            kind: Kind::Activation,
            sqnr_db,
            range,
            clipped,
            scheme,
            decided_by,
            histogram: Some(histogram(f, range)),
            channels: None,
            channel_ranges: None,
        });
    })?;
    for w in weights {
        let channels = w.ranges.len().max(1);
        let per = w.float.len() / channels;
        let levels = ((1u64 << bits) - 1) as f32;
        let (sqnr_db, clipped) = sqnr_and_clipped(&w.float, &w.quantized, |i| {
            let r = w.ranges[(i / per.max(1)).min(channels - 1)];
            widened(r, (r.1 - r.0) / levels)
        });
        let spec = plan.node(&w.node).and_then(|n| n.weights.as_ref());
        let (scheme, decided_by) = words(spec, sources, bits);
        let lo = w.ranges.iter().map(|r| r.0).fold(f32::INFINITY, f32::min);
        let hi = w.ranges.iter().map(|r| r.1).fold(f32::NEG_INFINITY, f32::max);
        let per_channel = w
            .float
            .chunks(per.max(1))
            .map(|c| {
                (
                    c.iter().copied().fold(f32::INFINITY, f32::min),
                    c.iter().copied().fold(f32::NEG_INFINITY, f32::max),
                )
            })
            .collect();
        rows.push(LayerStat {
            node: w.node.clone(),
            kind: Kind::Weight,
            sqnr_db,
            range: (lo, hi),
            clipped,
            scheme,
            decided_by,
            histogram: None,
            channels: Some(per_channel),
            channel_ranges: Some(w.ranges.clone()),
        });
    }
    rows.sort_by(|a, b| a.sqnr_db.total_cmp(&b.sqnr_db).then_with(|| a.node.cmp(&b.node)));
    Ok(rows)
}

/// `range` widened by half a step on each side: values inside round to a level, values outside
/// saturate (are clipped). A symmetric weight's largest magnitude sits exactly half a step out
/// (PyTorch's scale is `max|w| / 127.5`); a hair of tolerance keeps f32 rounding from counting it.
fn widened(range: (f32, f32), step: f32) -> (f32, f32) {
    let half = step * 0.5005;
    (range.0 - half, range.1 + half)
}

/// SQNR in dB, `10·log10(Σx² / Σ(x − x̂)²)`, and the share of `x` outside the range of its index.
pub fn sqnr_and_clipped(x: &[f32], q: &[f32], range: impl Fn(usize) -> (f32, f32)) -> (f64, f64) {
    let mut signal = 0f64;
    let mut noise = 0f64;
    let mut clipped = 0usize;
    for (i, (&a, &b)) in x.iter().zip(q).enumerate() {
        signal += (a as f64) * (a as f64);
        noise += ((a - b) as f64) * ((a - b) as f64);
        let (lo, hi) = range(i);
        clipped += usize::from(a < lo || a > hi);
    }
    let sqnr = if noise == 0.0 {
        f64::INFINITY
    } else if signal == 0.0 {
        f64::NEG_INFINITY
    } else {
        10.0 * (signal / noise).log10()
    };
    (sqnr, clipped as f64 / x.len().max(1) as f64)
}

/// The histogram of `x` over the range, widened to every value.
fn histogram(x: &[f32], range: (f32, f32)) -> Histogram {
    let finite = x.iter().copied().filter(|v| v.is_finite());
    let (mut lo, mut hi) = finite.fold(range, |(l, h), v| (l.min(v), h.max(v)));
    if hi <= lo {
        hi = lo + 1.0;
        lo -= 1.0;
    }
    let mut counts = vec![0u64; BINS];
    let width = (hi - lo) / BINS as f32;
    for &v in x.iter().filter(|v| v.is_finite()) {
        let b = (((v - lo) / width) as usize).min(BINS - 1);
        counts[b] += 1;
    }
    Histogram { lo, hi, counts }
}

/// The words and the decider of an activation's quantization: its own plan entry, or that of
/// the node whose parameters it shares.
fn activation_words(plan: &Plan, name: &str, sources: &SourceMap, bits: u8) -> (String, String) {
    let mut node = plan.node(name);
    for _ in 0..plan.nodes.len() {
        match node.map(|n| &n.decision) {
            Some(Decision::Shares { input }) => node = plan.node(input),
            _ => break,
        }
    }
    let spec = node.and_then(|n| n.activations.as_ref());
    let (scheme, by) = words(spec, sources, bits);
    match node.filter(|n| n.node != name) {
        Some(owner) => (format!("{scheme} (shares {}'s)", owner.node), by),
        None => (scheme, by),
    }
}

/// `uint7 affine per_tensor histogram(bins: 2048)` and who decided the observer.
fn words(spec: Option<&ResolvedSpec>, sources: &SourceMap, bits: u8) -> (String, String) {
    let Some(spec) = spec else {
        return ("-".into(), "-".into());
    };
    let mut w = spec.words();
    if bits != 8 {
        w[0].0 = format!("{}int{bits} (simulated)", if spec.signed.value { "" } else { "u" });
    }
    let text = w
        .iter()
        .filter(|(word, _)| word != "any scale")
        .map(|(word, _)| word.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    (text, spec.observer.by.describe(sources))
}
