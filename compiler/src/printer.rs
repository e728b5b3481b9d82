//! The IR text format: one line per input, parameter, node and output, in topological order
//! (ties by source order). Printing goes Module → `IrDoc` → text; `parse` reads text back into
//! an `IrDoc`, rebuilding each op through `Op::build_ir`, so the format stays parseable.
//!
//! ```text
//! module fashion_cnn stage quantized
//! input x: f32[N, 1, 28, 28] normalize(mean: 0.286, std: 0.353)  # fashion_cnn.qrecipe:18
//! param quant.scale: f32[1] = 0.022305993 <- qparams(quant.activation_post_process.{histogram, min_val, max_val})
//! param conv1.weight: i8[16, 1, 3, 3] #f1f6387a093cc5e6 range -128..127 !q(axis 0, 16 scales 0.000911..0.0026 #cc6be7a49a2994f5, zero_point 0, [-128, 127])
//!     <- quantize_per_channel∘fold_bn(conv1.{weight, bias}, bn1.{weight, bias, running_mean, running_var})
//! node conv1 = qconv2d(quant) {act: relu, kernel: [3, 3], out: 16, pad: [1, 1], requantize: float, w: int8 per_channel symmetric minmax}
//!     [weight, bias, scale, zero_point] : u8[N, 16, 28, 28] !q(0.016996684, 0, [0, 127] = 0..2.16)  # fashion_cnn.qrecipe:20
//! output fc2
//! ```
//!
//! What a line shows, for a reader:
//! - values: a parameter of at most 8 elements prints them (`= 0.022305993`, `= [0, 3]`, floats
//!   exact in shortest round-trip form); a longer one its content hash and range, and per-channel
//!   scales their count and range (`dump_values`). `!q(...)` ends with the real range it covers.
//! - attributes: sorted; a quantization spec is one attribute (`w: int8 per_channel symmetric
//!   minmax`); an attribute is left out where the op's builder gives the same op without it
//!   (`dump_attrs`). A parameter keyed `NODE.ROLE` is listed by its role alone.
//! - provenance: keys that share a prefix are grouped (`conv1.{weight, bias}`).
//! - width: a line longer than [`LINE_WIDTH`] breaks at a space into continuation lines indented
//!   by four spaces (`parse` joins them back with one space).
//!
//! A module calibrated on random data says so at the end of its header line:
//! `module resnet18 stage calibrated  # not calibrated for accuracy: random data (resnet18.qrecipe:63)`.

use std::fmt::Write;

use qc_dsl::SourceMap;

use crate::dump_attrs::{expand, parse_list, short_attrs};
use crate::dump_values::{grouped_keys, param_quant_text, quant_text, tensor_text};
use crate::ir::{Module, Provenance, Stage};
use crate::ops::Op;
use crate::types::{DType, Dim, QuantParams, TensorType};
use qc_runtime::normalize::Normalize;

pub use crate::dump_values::content_hash;
pub use crate::fmt::fmt_f64;

/// No dump line is longer than this: longer ones continue on lines indented by [`CONTINUATION`].
pub const LINE_WIDTH: usize = 160;

/// The indent of a continuation line.
pub const CONTINUATION: &str = "    ";

/// A parsed or printable IR dump.
#[derive(Clone, Debug, PartialEq)]
pub struct IrDoc {
    pub module: String,
    pub stage: Stage,
    /// A comment on the header line: `not calibrated for accuracy: random data (FILE:LINE)`.
    pub note: Option<String>,
    pub lines: Vec<IrLine>,
}

#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant)] // one per dump line; boxing buys nothing here
pub enum IrLine {
    Input {
        name: String,
        ty: TensorType,
        /// The input line's `normalize(mean: ..., std: ...)`.
        normalize: Option<Normalize>,
        tail: String,
    },
    Param {
        key: String,
        dtype: DType,
        shape: Option<Vec<usize>>,
        /// The value as printed: `= 0.05`, `= [0, 3]` or `#<hash> range MIN..MAX`.
        value: Option<String>,
        /// An integer parameter's quantization, as printed (`!q(...)`).
        quant: Option<String>,
        /// Where the value came from, keys grouped (`fold_bn(conv1.{weight, bias}, ...)`).
        origin: String,
    },
    Node {
        name: String,
        op: Op,
        inputs: Vec<String>,
        params: Vec<(String, String)>,
        ty: Option<TensorType>,
        tail: String,
    },
    /// A step of the lowered program (stage `lowered`), kept as printed:
    /// `step NAME = OP(INPUTS) {ATTRS} [CONSTANTS] : TYPE LAYOUT !q(..)  # TAIL`.
    Step {
        text: String,
    },
    Output {
        name: String,
    },
}

/// Builds the document of a module. `sources` turns spans into `file:line` tails.
pub fn document(module: &Module, sources: &SourceMap) -> IrDoc {
    let g = &module.graph;
    let tail = |id| {
        let node = g.node(id);
        let loc = sources.location(node.origin.span);
        let file = std::path::Path::new(&loc.file)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or(loc.file);
        match node.origin.instances.last() {
            Some(inst) => format!("{file}:{} in {}@{}", loc.line, inst.block, inst.name),
            None => format!("{file}:{}", loc.line),
        }
    };
    let mut lines = vec![];
    let order = g.topo_order();
    for &id in &order {
        let n = g.node(id);
        if let (Op::Input { normalize, .. }, Some(ty)) = (&n.op, &n.ty) {
            lines.push(IrLine::Input {
                name: n.name.clone(),
                ty: ty.clone(),
                normalize: normalize.clone(),
                tail: tail(id),
            });
        }
    }
    for (key, p) in &module.params {
        let known = !matches!(p.provenance, Provenance::Declared);
        lines.push(IrLine::Param {
            key: key.clone(),
            dtype: p.dtype,
            shape: known.then(|| p.shape.clone()),
            value: p.value.as_ref().map(tensor_text),
            quant: p.quant.as_ref().map(param_quant_text),
            origin: match &p.provenance {
                Provenance::Derived { transform, from } => format!("{transform}({})", grouped_keys(from)),
                other => other.to_string(),
            },
        });
    }
    let program = module.program.as_ref().filter(|_| module.stage == Stage::Lowered);
    if let Some(program) = program {
        for step in &program.steps {
            let name = &program.values[step.output].name;
            let base = name.split('#').next().unwrap_or(name);
            let tail = g.find(base).map(tail).unwrap_or_default();
            lines.push(IrLine::Step {
                text: format!("{}  # {tail}", step_text(program, step)),
            });
        }
    }
    for &id in &order {
        let n = g.node(id);
        if matches!(n.op, Op::Input { .. }) || program.is_some() {
            continue;
        }
        lines.push(IrLine::Node {
            name: n.name.clone(),
            op: n.op.clone(),
            inputs: g.inputs_of(id).into_iter().map(|i| g.node(i).name.clone()).collect(),
            params: n.params.iter().map(|(r, k)| (r.to_string(), k.clone())).collect(),
            ty: n.ty.clone(),
            tail: tail(id),
        });
    }
    for (name, id) in &g.outputs {
        let _ = id;
        lines.push(IrLine::Output { name: name.clone() });
    }
    let note = (!module.calibrated_for_accuracy).then(|| {
        format!(
            "not calibrated for accuracy: {}",
            module.calibration_note.as_deref().unwrap_or("no real data")
        )
    });
    IrDoc {
        module: module.name.clone(),
        stage: module.stage,
        note,
        lines,
    }
}

/// Prints a module at its current stage.
pub fn print(module: &Module, sources: &SourceMap) -> String {
    render(&document(module, sources))
}

fn fmt_shape(shape: &[usize]) -> String {
    let parts: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

/// A type as a dump prints it: `u8[N, 16, 28, 28] !q(0.016996684, 0, [0, 127] = 0..2.16)`.
fn fmt_type(ty: &TensorType) -> String {
    let plain = ty.plain().to_string();
    match &ty.quant {
        Some(q) => format!("{plain} {}", quant_text(q)),
        None => plain,
    }
}

/// Whether a break may replace the space at byte `i` of `line`: a single space, so that
/// joining with one space gives the line back.
fn breakable(line: &[u8], i: usize) -> bool {
    line[i] == b' ' && i > 0 && line[i - 1] != b' ' && line.get(i + 1).is_some_and(|&c| c != b' ')
}

/// Writes `line` (without its newline) broken into lines of at most [`LINE_WIDTH`] where it can
/// be, never inside the `  # ` tail. A break goes, by preference, at the last space outside any
/// bracket before ` <- `, ` : `, ` [`, ` {` or ` !q(` (where that leaves the line at least a
/// third full), else after the last comma of a top-level list, else at the last space that fits.
fn write_wrapped(out: &mut String, line: &str) {
    let tail_at = line.find("  # ").unwrap_or(line.len());
    let bytes = line.as_bytes();
    let mut depth = vec![0i32; bytes.len() + 1];
    for (i, &c) in bytes.iter().enumerate() {
        depth[i + 1] = depth[i]
            + match c {
                b'(' | b'[' | b'{' => 1,
                b')' | b']' | b'}' => -1,
                _ => 0,
            };
    }
    let mut start = 0;
    let mut width = LINE_WIDTH;
    while line.len() - start > width {
        let limit = start + width;
        let candidates: Vec<usize> = (start + 1..=limit.min(tail_at.saturating_sub(1)))
            .filter(|&i| breakable(bytes, i))
            .collect();
        let structural = candidates.iter().rev().find(|&&i| {
            let rest = &line[i..];
            depth[i] == 0 && [" <- ", " : ", " [", " {", " !q("].iter().any(|p| rest.starts_with(p))
        });
        let after_comma = candidates
            .iter()
            .rev()
            .find(|&&i| bytes[i - 1] == b',' && depth[i] == 1);
        let at = structural
            .filter(|&&i| i - start >= width / 3)
            .or(after_comma)
            .or(structural)
            .or(candidates.last());
        let Some(&at) = at else {
            break;
        };
        out.push_str(&line[start..at]);
        out.push('\n');
        out.push_str(CONTINUATION);
        start = at + 1;
        width = LINE_WIDTH - CONTINUATION.len();
    }
    out.push_str(&line[start..]);
    out.push('\n');
}

/// One document line as a single (unbroken) line of text.
fn line_text(line: &IrLine) -> String {
    match line {
        IrLine::Input {
            name,
            ty,
            normalize,
            tail,
        } => {
            let normalize = normalize.as_ref().map(|n| format!(" {n}")).unwrap_or_default();
            format!("input {name}: {}{normalize}  # {tail}", fmt_type(ty))
        }
        IrLine::Param {
            key,
            dtype,
            shape,
            value,
            quant,
            origin,
        } => {
            let shape = shape.as_ref().map(|s| fmt_shape(s)).unwrap_or_else(|| "[?]".into());
            let value = value.as_ref().map(|v| format!(" {v}")).unwrap_or_default();
            let quant = quant.as_ref().map(|q| format!(" {q}")).unwrap_or_default();
            format!("param {key}: {dtype}{shape}{value}{quant} <- {origin}")
        }
        IrLine::Node {
            name,
            op,
            inputs,
            params,
            ty,
            tail,
        } => {
            let mut text = format!("node {name} = {}({})", op.name(), inputs.join(", "));
            let attrs = short_attrs(op);
            if !attrs.is_empty() {
                let parts: Vec<String> = attrs.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                let _ = write!(text, " {{{}}}", parts.join(", "));
            }
            if !params.is_empty() {
                let parts: Vec<String> = params
                    .iter()
                    .map(
                        |(role, key)| match key.strip_prefix(name.as_str()).and_then(|k| k.strip_prefix('.')) {
                            Some(rest) if rest == role => role.clone(),
                            _ => format!("{role}={key}"),
                        },
                    )
                    .collect();
                let _ = write!(text, " [{}]", parts.join(", "));
            }
            let ty = ty.as_ref().map(fmt_type).unwrap_or_else(|| "?".into());
            let _ = write!(text, " : {ty}  # {tail}");
            text
        }
        IrLine::Step { text } => format!("step {text}"),
        IrLine::Output { name } => format!("output {name}"),
    }
}

/// Renders a document as text.
pub fn render(doc: &IrDoc) -> String {
    let mut out = String::new();
    let mut header = format!("module {} stage {}", doc.module, doc.stage);
    if let Some(note) = &doc.note {
        let _ = write!(header, "  # {note}");
    }
    out.push_str(&header);
    out.push('\n');
    for line in &doc.lines {
        write_wrapped(&mut out, &line_text(line));
    }
    out
}

/// One step of a lowered program as a dump line (without the source tail): the output value's
/// name, the op, its inputs, its attributes (stride 1, pad 0, dilation 1 and groups 1 left out),
/// its constants (dtype, shape in the kernels' layout, values or content hash and range) and the
/// output's type, memory layout and quantization.
fn step_text(program: &qc_runtime::program::Program, step: &qc_runtime::program::Step) -> String {
    use qc_runtime::kernels::Activation;
    use qc_runtime::program::{FloatOp, QuantOp, StepOp, Window};
    let value = |id: usize| &program.values[id];
    let list = |v: &[usize]| {
        let parts: Vec<String> = v.iter().map(|x| x.to_string()).collect();
        format!("[{}]", parts.join(", "))
    };
    // Stride 1, pad 0 and dilation 1 go without saying (as `groups: 1` below).
    let window = |w: &Window, attrs: &mut Vec<String>| {
        attrs.push(format!("kernel: {}", list(&w.kernel)));
        if w.stride.iter().any(|&s| s != 1) {
            attrs.push(format!("stride: {}", list(&w.stride)));
        }
        if w.pad.iter().any(|&p| p != 0) {
            attrs.push(format!("pad: {}", list(&w.pad)));
        }
        if w.dilation.iter().any(|&d| d != 1) {
            attrs.push(format!("dilation: {}", list(&w.dilation)));
        }
        if w.ceil_mode {
            attrs.push("ceil_mode: true".into());
        }
    };
    let act = |a: &Activation, attrs: &mut Vec<String>| match a {
        Activation::None => {}
        Activation::Relu => attrs.push("act: relu".into()),
        Activation::Relu6 => attrs.push("act: relu6".into()),
        Activation::Clamp { min, max } => attrs.push(format!(
            "act: clamp({}, {})",
            fmt_f64(*min as f64),
            fmt_f64(*max as f64)
        )),
    };
    let mut attrs: Vec<String> = vec![];
    let mut consts: Vec<(&str, usize)> = vec![];
    match &step.op {
        StepOp::Float(op) => match op {
            FloatOp::Conv {
                window: w,
                groups,
                weight,
                bias,
            } => {
                window(w, &mut attrs);
                if *groups != 1 {
                    attrs.push(format!("groups: {groups}"));
                }
                consts.push(("weight", *weight));
                consts.extend(bias.map(|b| ("bias", b)));
            }
            FloatOp::BatchNorm {
                eps,
                weight,
                bias,
                mean,
                var,
            } => {
                attrs.push(format!("eps: {}", fmt_f64(*eps as f64)));
                consts.extend([("weight", *weight), ("bias", *bias), ("mean", *mean), ("var", *var)]);
            }
            FloatOp::Clamp { min, max } => {
                attrs.push(format!("min: {}", fmt_f64(*min as f64)));
                attrs.push(format!("max: {}", fmt_f64(*max as f64)));
            }
            FloatOp::MaxPool { window: w } => window(w, &mut attrs),
            FloatOp::AvgPool {
                window: w,
                count_include_pad,
            } => {
                window(w, &mut attrs);
                attrs.push(format!("count_include_pad: {count_include_pad}"));
            }
            FloatOp::AdaptiveAvgPool { output } => attrs.push(format!("output: {}", list(output))),
            FloatOp::Flatten { start_dim, end_dim } => {
                attrs.push(format!("start_dim: {start_dim}"));
                attrs.push(format!("end_dim: {end_dim}"));
            }
            FloatOp::Linear { weight, bias } => {
                consts.push(("weight", *weight));
                consts.extend(bias.map(|b| ("bias", b)));
            }
            FloatOp::Concat { dim } => attrs.push(format!("dim: {dim}")),
            FloatOp::Relu | FloatOp::Add | FloatOp::Identity | FloatOp::Curve(_) | FloatOp::Mul => {}
        },
        StepOp::Quant(op) => match op {
            QuantOp::QConv {
                window: w,
                groups,
                weight,
                weight_scales,
                bias,
                act: a,
                requantize,
            } => {
                window(w, &mut attrs);
                if *groups != 1 {
                    attrs.push(format!("groups: {groups}"));
                }
                act(a, &mut attrs);
                attrs.push(format!("requantize: {}", requantize.name()));
                consts.extend([("weight", *weight), ("weight_scales", *weight_scales)]);
                consts.extend(bias.map(|b| ("bias", b)));
            }
            QuantOp::QLinear {
                weight,
                weight_scales,
                bias,
                act: a,
                requantize,
            } => {
                act(a, &mut attrs);
                attrs.push(format!("requantize: {}", requantize.name()));
                consts.extend([("weight", *weight), ("weight_scales", *weight_scales)]);
                consts.extend(bias.map(|b| ("bias", b)));
            }
            QuantOp::QAdd { relu } => {
                if *relu {
                    attrs.push("act: relu".into());
                }
            }
            QuantOp::QMaxPool { window: w } => window(w, &mut attrs),
            QuantOp::QAvgPool {
                window: w,
                count_include_pad,
            } => {
                window(w, &mut attrs);
                attrs.push(format!("count_include_pad: {count_include_pad}"));
            }
            QuantOp::QAdaptiveAvgPool { output } => attrs.push(format!("output: {}", list(output))),
            QuantOp::QClamp { act: a } => act(a, &mut attrs),
            QuantOp::QLut(curve) => attrs.push(format!("curve: {}", curve.name())),
            QuantOp::Quantize | QuantOp::Dequantize | QuantOp::QConcat | QuantOp::QFlatten | QuantOp::QMul => {}
        },
    }
    let out = value(step.output);
    let inputs: Vec<&str> = step.inputs.iter().map(|&i| value(i).name.as_str()).collect();
    let mut text = format!("{} = {}({})", out.name, step.op.name(), inputs.join(", "));
    if !attrs.is_empty() {
        let _ = write!(text, " {{{}}}", attrs.join(", "));
    }
    if !consts.is_empty() {
        let parts: Vec<String> = consts
            .iter()
            .map(|(role, c)| {
                let t = &program.constants[*c];
                format!("{role}={}{} {}", t.dtype(), fmt_shape(&t.shape), tensor_text(t))
            })
            .collect();
        let _ = write!(text, " [{}]", parts.join(", "));
    }
    let _ = write!(text, " : {}{} {}", out.dtype, out.shape_string(), out.layout.name());
    if let Some(q) = &out.quant {
        let _ = write!(text, " {}", quant_text(&QuantParams::from_runtime(q)));
    }
    text
}

/// `mean: M, std: S)` (what follows `normalize(`), each a number or a `[list]` of numbers.
fn parse_normalize(text: &str) -> Result<Normalize, String> {
    let bad = || format!("expected `normalize(mean: M, std: S)`, found `normalize({text}`");
    let inner = text.strip_suffix(')').ok_or_else(bad)?;
    let rest = inner.strip_prefix("mean: ").ok_or_else(bad)?;
    let (mean, std) = rest.split_once(", std: ").ok_or_else(bad)?;
    let values = |v: &str| -> Result<Vec<f64>, String> {
        let list = v.strip_prefix('[').and_then(|v| v.strip_suffix(']')).unwrap_or(v);
        list.split(", ").map(|x| x.parse::<f64>().map_err(|_| bad())).collect()
    };
    let n = Normalize {
        mean: values(mean)?,
        std: values(std)?,
    };
    n.check()
        .map_err(|e| format!("`normalize({text}` cannot be applied: {e}"))?;
    Ok(n)
}

/// A line of a dump that could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct IrParseError {
    pub line: usize,
    pub message: String,
}

/// Reads a dump back.
pub fn parse(text: &str) -> Result<IrDoc, IrParseError> {
    let mut lines_iter = text.lines().enumerate();
    let err = |line: usize, message: String| IrParseError {
        line: line + 1,
        message,
    };
    let (_, header) = lines_iter.next().ok_or_else(|| err(0, "empty dump".into()))?;
    let (header, note) = match header.split_once("  # ") {
        Some((h, n)) => (h, Some(n.to_string())),
        None => (header, None),
    };
    let h: Vec<&str> = header.split_whitespace().collect();
    let (module, stage) = match h.as_slice() {
        ["module", name, "stage", stage] => (
            name.to_string(),
            Stage::from_name(stage).ok_or_else(|| err(0, format!("unknown stage `{stage}`")))?,
        ),
        _ => return Err(err(0, "expected `module NAME stage STAGE`".into())),
    };
    // Continuation lines join the line they continue, with one space.
    let mut logical: Vec<(usize, String)> = vec![];
    for (i, line) in lines_iter {
        match (line.strip_prefix(CONTINUATION), logical.last_mut()) {
            (Some(more), Some((_, previous))) if !more.trim().is_empty() => {
                previous.push(' ');
                previous.push_str(more);
            }
            (Some(_), None) => return Err(err(i, "a continuation line with no line before it".into())),
            _ => logical.push((i, line.to_string())),
        }
    }
    let mut lines = vec![];
    for (i, line) in &logical {
        let (i, line) = (*i, line.as_str());
        if line.trim().is_empty() {
            continue;
        }
        let (kind, rest) = line
            .split_once(' ')
            .ok_or_else(|| err(i, "expected `input`, `param`, `node` or `output`".into()))?;
        let parsed = match kind {
            "input" => {
                let (body, tail) = split_tail(rest);
                let (name, ty) = body
                    .split_once(": ")
                    .ok_or_else(|| err(i, "expected `input NAME: TYPE`".into()))?;
                let (ty, normalize) = match ty.split_once(" normalize(") {
                    Some((ty, n)) => (ty, Some(parse_normalize(n).map_err(|m| err(i, m))?)),
                    None => (ty, None),
                };
                IrLine::Input {
                    name: name.into(),
                    ty: parse_type(ty).map_err(|m| err(i, m))?,
                    normalize,
                    tail,
                }
            }
            "param" => parse_param(rest).map_err(|m| err(i, m))?,
            "node" => parse_node(rest).map_err(|m| err(i, m))?,
            "step" => IrLine::Step { text: rest.into() },
            "output" => IrLine::Output {
                name: rest.trim().into(),
            },
            other => return Err(err(i, format!("unknown line kind `{other}`"))),
        };
        lines.push(parsed);
    }
    Ok(IrDoc {
        module,
        stage,
        note,
        lines,
    })
}

/// `KEY: DTYPE[SHAPE] VALUE? !q(..)? <- ORIGIN` (what follows `param `).
fn parse_param(rest: &str) -> Result<IrLine, String> {
    let (decl, origin) = rest.split_once(" <- ").ok_or("expected `<- ORIGIN`")?;
    let (key, ty) = decl.split_once(": ").ok_or("expected `param KEY: TYPE`")?;
    let open = ty.find('[').ok_or("expected a shape")?;
    let close = ty.find(']').ok_or("unclosed `[` of the shape")?;
    let dtype = DType::from_name(&ty[..open]).ok_or_else(|| format!("unknown dtype `{}`", &ty[..open]))?;
    let shape = if &ty[open..=close] == "[?]" {
        None
    } else {
        Some(parse_list(&ty[open..=close])?.into_iter().map(|d| d as usize).collect())
    };
    let after = &ty[close + 1..];
    let (value, quant) = match after.find(" !q(") {
        Some(at) => (&after[..at], Some(after[at + 1..].to_string())),
        None => (after, None),
    };
    let value = match value.strip_prefix(' ') {
        Some(v) if v.starts_with("= ") || v.starts_with('#') => Some(v.to_string()),
        None if value.is_empty() => None,
        _ => {
            return Err(format!(
                "expected `= VALUE` or `#HASH range ..`, found `{}`",
                value.trim()
            ))
        }
    };
    Ok(IrLine::Param {
        key: key.into(),
        dtype,
        shape,
        value,
        quant,
        origin: origin.into(),
    })
}

fn split_tail(s: &str) -> (&str, String) {
    match s.split_once("  # ") {
        Some((body, tail)) => (body, tail.to_string()),
        None => (s, String::new()),
    }
}

fn parse_type(s: &str) -> Result<TensorType, String> {
    let (s, quant) = match s.trim().split_once(" !q(") {
        Some((t, q)) => (t, Some(parse_quant(q)?)),
        None => (s.trim(), None),
    };
    let mut ty = parse_plain_type(s)?;
    ty.quant = quant;
    Ok(ty)
}

/// `0.0235294, 128, [0, 255] = -3.01..3)` (the text after `!q(`).
fn parse_quant(s: &str) -> Result<QuantParams, String> {
    let inner = s
        .trim()
        .strip_suffix(')')
        .ok_or_else(|| format!("unclosed `!q(` in `{s}`"))?;
    let parts = split_top(inner);
    let bad = || format!("expected `!q(SCALE, ZERO_POINT, [QMIN, QMAX])`, found `!q({inner})`");
    let [scale, zp, range] = parts.as_slice() else {
        return Err(bad());
    };
    // `[QMIN, QMAX] = LO..HI`: the real range follows from the rest.
    let range = parse_list(range.split_once(" = ").map_or(*range, |(r, _)| r))?;
    let [qmin, qmax] = range.as_slice() else {
        return Err(bad());
    };
    Ok(QuantParams {
        scale: scale.trim().parse::<f32>().map_err(|_| bad())?,
        zero_point: zp.trim().parse::<i32>().map_err(|_| bad())?,
        qmin: i32::try_from(*qmin).map_err(|_| bad())?,
        qmax: i32::try_from(*qmax).map_err(|_| bad())?,
    })
}

fn parse_plain_type(s: &str) -> Result<TensorType, String> {
    let s = s.trim();
    let open = s
        .find('[')
        .ok_or_else(|| format!("expected a type like f32[N, 3], found `{s}`"))?;
    let dtype = DType::from_name(&s[..open]).ok_or_else(|| format!("unknown dtype `{}`", &s[..open]))?;
    let inner = s[open..]
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .ok_or("unclosed `[`")?;
    let dims = if inner.trim().is_empty() {
        vec![]
    } else {
        inner
            .split(',')
            .map(|d| {
                let d = d.trim();
                d.parse::<usize>()
                    .map(Dim::Fixed)
                    .unwrap_or_else(|_| Dim::Symbol(d.to_string()))
            })
            .collect()
    };
    Ok(TensorType::new(dtype, dims))
}

/// Splits on commas that are not inside brackets.
fn split_top(s: &str) -> Vec<&str> {
    let mut parts = vec![];
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if !s[start..].trim().is_empty() {
        parts.push(&s[start..]);
    }
    parts
}

fn parse_node(rest: &str) -> Result<IrLine, String> {
    let (body, tail) = split_tail(rest);
    let (name, rhs) = body.split_once(" = ").ok_or("expected `node NAME = op(...)`")?;
    let open = rhs.find('(').ok_or("expected `op(inputs)`")?;
    let op_name = &rhs[..open];
    let close = rhs.find(')').ok_or("unclosed `(`")?;
    let inputs: Vec<String> = rhs[open + 1..close]
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let mut rest = rhs[close + 1..].trim_start();
    let mut attrs = vec![];
    if let Some(r) = rest.strip_prefix('{') {
        let end = r.find('}').ok_or("unclosed `{`")?;
        for part in split_top(&r[..end]) {
            let (k, v) = part
                .split_once(':')
                .ok_or_else(|| format!("expected `key: value`, found `{part}`"))?;
            attrs.extend(expand(k.trim(), v)?);
        }
        rest = r[end + 1..].trim_start();
    }
    let mut params = vec![];
    if let Some(r) = rest.strip_prefix('[') {
        let end = r.find(']').ok_or("unclosed `[`")?;
        for part in r[..end].split(',') {
            // A bare role is the node's own key `NAME.ROLE`.
            match part.trim().split_once('=') {
                Some((role, key)) => params.push((role.to_string(), key.to_string())),
                None if !part.trim().is_empty() => {
                    params.push((part.trim().to_string(), format!("{name}.{}", part.trim())))
                }
                None => return Err(format!("expected `role` or `role=key`, found `{part}`")),
            }
        }
        rest = r[end + 1..].trim_start();
    }
    let ty = rest.strip_prefix(':').ok_or("expected `: TYPE`")?.trim();
    let ty = if ty == "?" { None } else { Some(parse_type(ty)?) };
    let op = match Op::build_ir(op_name, &attrs) {
        None => return Err(format!("unknown op `{op_name}`")),
        Some(Err(e)) => return Err(e.into_iter().map(|e| e.message).collect::<Vec<_>>().join("; ")),
        Some(Ok(op)) => op,
    };
    Ok(IrLine::Node {
        name: name.to_string(),
        op,
        inputs,
        params,
        ty,
        tail,
    })
}
