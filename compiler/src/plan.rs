//! The quantization plan: for every node of a module at stage `float` or `fused`, whether it runs
//! in int8 or stays in float and why, how its weights and its output activations are quantized,
//! which values get an observer, where values cross between float and int8, and for every
//! setting the recipe place that decided it (or the scheme default that did). `qc plan` prints
//! it; the `insert-observers` pass (stage `observed`) carries it out.
//!
//! Rules, as PyTorch's eager/FX quantization applies them:
//! - conv, linear, add and concat have int8 forms with their own output quantization: their
//!   output is observed (after a fused activation, which the node already contains);
//! - pools, flatten, relu/relu6/clamp, identity and dropout run on their input's integers and
//!   share its quantization parameters (no observer); with a float input they stay float;
//! - a model input feeding int8 work is quantized by `quant` (PyTorch's `QuantStub`) and observed;
//! - a float node (skipped, kept float, or an op without an int8 form, e.g. a batch norm not
//!   fused into a conv) whose output an int8 node reads is observed, so that a `quantize` can be
//!   placed after it; an int8 value read by a float node, or leaving the model, is dequantized.
//!
//! Recipe mistakes that only the graph shows are diagnostics here: a `layer` selector that
//! selects no node, `weights:` on a node without weights, `activations:` on a node that shares
//! its input's parameters, per-channel weights with an observer that has no per-channel form,
//! and a node whose activations are kept float while an int8 node reads them. (`per_channel`
//! under `activations:` is refused by the recipe checker already.)

use std::collections::{HashMap, HashSet};

use qc_dsl::sections::{
    Granularity, LayerSelector, Observer, QuantizeSettings, Requantize, Scheme, TensorDefaults, TensorSpec,
};
use qc_dsl::{Diagnostic, SourceMap, Span};

use crate::ir::{Graph, Module, NodeId, Stage};
use crate::ops::{observer_text, Op, QSpec, OP_NAMES};

const NO_QUANTIZE: &str = "qc::no-quantize";
const LAYER_SELECTS_NOTHING: &str = "qc::layer-selects-nothing";
const UNKNOWN_OP_KIND: &str = "qc::unknown-op-kind";
const NO_WEIGHTS: &str = "qc::no-weights";
const SHARED_PARAMS: &str = "qc::shared-qparams";
const PER_CHANNEL_OBSERVER: &str = "qc::per-channel-observer";
const PER_CHANNEL_ACTIVATIONS: &str = "qc::per-channel-activations";
const FLOAT_FEEDS_INT8: &str = "qc::float-feeds-int8";
const PLAN_STAGE: &str = "qc::plan-stage";

/// Who decided a setting.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Decider {
    /// The recipe text at this span (a word of a spec, a `skip`).
    Recipe(Span),
    /// The scheme's default. `span` is the `scheme` entry, or the `quantize` keyword when the
    /// recipe wrote no scheme (`written` false: `x86` applies).
    Scheme { scheme: Scheme, span: Span, written: bool },
}

impl Decider {
    /// `fashion_cnn.qrecipe:42`, or `scheme x86 default` (with where the scheme was written).
    pub fn describe(&self, sources: &SourceMap) -> String {
        match self {
            Decider::Recipe(span) => place(sources, *span),
            Decider::Scheme {
                scheme,
                span,
                written: true,
            } => format!("scheme {} default ({})", scheme.name(), place(sources, *span)),
            Decider::Scheme { scheme, .. } => format!("scheme {} default (no `scheme` entry)", scheme.name()),
        }
    }
}

/// `file:line` of a span, the file as its name without folders.
pub fn place(sources: &SourceMap, span: Span) -> String {
    let loc = sources.location(span);
    let file = std::path::Path::new(&loc.file)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or(loc.file);
    format!("{file}:{}", loc.line)
}

/// A value and who decided it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decided<T> {
    pub value: T,
    pub by: Decider,
}

/// One tensor's complete quantization settings, each field with who decided it.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedSpec {
    /// Bits and signedness come from one word (`int8`, `uint4`).
    pub bits: Decided<u8>,
    pub signed: Decided<bool>,
    pub granularity: Decided<Granularity>,
    pub symmetric: Decided<bool>,
    pub power_of_two: Decided<bool>,
    /// `float` (keep the tensor in float); `value` false when nothing said so.
    pub float: Decided<bool>,
    pub observer: Decided<Observer>,
}

impl ResolvedSpec {
    /// `spec` resolved against the scheme's `defaults` with [`TensorSpec::resolve`]; a field the
    /// recipe wrote is decided by its word, the others by the scheme.
    pub fn resolve(spec: &TensorSpec, defaults: &TensorDefaults, scheme: Decider) -> ResolvedSpec {
        let r = spec.resolve(defaults);
        let by = |s: Option<Span>| s.map_or(scheme, Decider::Recipe);
        ResolvedSpec {
            bits: Decided {
                value: r.bits,
                by: by(spec.bits.map(|s| s.span)),
            },
            signed: Decided {
                value: r.signed,
                by: by(spec.signed.map(|s| s.span)),
            },
            granularity: Decided {
                value: r.granularity,
                by: by(spec.granularity.map(|s| s.span)),
            },
            symmetric: Decided {
                value: r.symmetric,
                by: by(spec.symmetric.map(|s| s.span)),
            },
            power_of_two: Decided {
                value: r.power_of_two,
                by: by(spec.power_of_two.map(|s| s.span)),
            },
            float: Decided {
                value: r.float,
                by: by(spec.float.map(|s| s.span)),
            },
            observer: Decided {
                value: r.observer,
                by: by(spec.observer.map(|s| s.span)),
            },
        }
    }

    /// The IR's form.
    pub fn qspec(&self) -> QSpec {
        QSpec {
            bits: self.bits.value,
            signed: self.signed.value,
            symmetric: self.symmetric.value,
            power_of_two: self.power_of_two.value,
            per_channel: self.granularity.value == Granularity::PerChannel,
            observer: self.observer.value,
        }
    }

    /// Each field as a recipe word with who decided it, in spec order.
    pub fn words(&self) -> Vec<(String, Decider)> {
        let ty = format!("{}int{}", if self.signed.value { "" } else { "u" }, self.bits.value);
        vec![
            (ty, self.bits.by),
            (
                if self.symmetric.value { "symmetric" } else { "affine" }.to_string(),
                self.symmetric.by,
            ),
            (self.granularity.value.name().to_string(), self.granularity.by),
            (
                if self.power_of_two.value {
                    "power_of_two"
                } else {
                    "any scale"
                }
                .to_string(),
                self.power_of_two.by,
            ),
            (observer_text(&self.observer.value), self.observer.by),
        ]
    }
}

/// Why a node stays in float.
#[derive(Clone, Debug, PartialEq)]
pub enum FloatReason {
    /// `layer X { skip }`; the span is the `skip` word.
    Skip(Span),
    /// `weights: float` or `activations: float` selected this node.
    KeptFloat { tensor: &'static str, span: Span },
    /// qc has no int8 form of this op kind (e.g. a batch norm that was not fused into a conv).
    NoInt8Form,
    /// An op that shares its input's parameters, reading a float value.
    FloatInput(String),
}

/// What happens to a node.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// A model input; `quantized` when int8 work reads it (PyTorch's `quant` stub).
    Input {
        quantized: bool,
    },
    /// Runs in int8 with its own output quantization (conv, linear, add, concat).
    Int8,
    /// Runs in int8 on its input's integers, sharing that input's parameters.
    Shares {
        input: String,
    },
    Float(FloatReason),
}

impl Decision {
    /// Whether the node's output is an int8 value (or a quantized input).
    pub fn is_int8(&self) -> bool {
        matches!(
            self,
            Decision::Int8 | Decision::Shares { .. } | Decision::Input { quantized: true }
        )
    }
}

/// A change of representation on an edge, inserted at stage `quantized`.
#[derive(Clone, Debug, PartialEq)]
pub enum Boundary {
    /// The producer's float output is quantized (with its observer's parameters) for this node.
    Quantize { from: String },
    /// The producer's int8 output is dequantized for this float node.
    Dequantize { from: String },
}

/// The plan of one node.
#[derive(Clone, Debug, PartialEq)]
pub struct NodePlan {
    pub node: String,
    pub op: &'static str,
    pub decision: Decision,
    /// How the weight is quantized (int8 conv and linear).
    pub weights: Option<ResolvedSpec>,
    /// How the accumulator is requantized (int8 conv and linear), and what decided it.
    pub requantize: Option<(Requantize, Decider)>,
    /// How the output is quantized, when it is observed.
    pub activations: Option<ResolvedSpec>,
    /// The node that observes the output (`<node>.activation_post_process`), when observed.
    pub observer: Option<String>,
    /// Representation changes on the node's inputs.
    pub boundaries: Vec<Boundary>,
    /// An int8 output of the model, dequantized on the way out.
    pub dequantized_output: bool,
}

/// The plan of a module: one entry per node, in topological order.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub model: String,
    pub stage: Stage,
    pub scheme: Decider,
    /// Each model input with the normalization its `input` line declares and that line's span:
    /// what calibration, training and the `.qmodel` apply to raw data.
    pub inputs: Vec<(String, Option<qc_runtime::normalize::Normalize>, Span)>,
    pub nodes: Vec<NodePlan>,
}

impl Plan {
    pub fn node(&self, name: &str) -> Option<&NodePlan> {
        self.nodes.iter().find(|n| n.node == name)
    }
}

/// How an op kind quantizes.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Input,
    /// conv, linear: weights and output.
    Weighted,
    /// add, concat, mul, hardswish/hardsigmoid/sigmoid: output.
    OwnOutput,
    /// pools, flatten, relu...: the input's parameters.
    Shares,
    NoInt8,
}

fn kind(op: &Op) -> Kind {
    match op {
        Op::Input { .. } => Kind::Input,
        Op::Conv(_) | Op::Linear(_) => Kind::Weighted,
        Op::Add { .. } | Op::Concat { .. } | Op::Curve(_) | Op::Mul => Kind::OwnOutput,
        op if op.shares_input_quant() => Kind::Shares,
        _ => Kind::NoInt8,
    }
}

/// The name of the observer of `node`'s output (`x` an input among `inputs` inputs).
pub fn observer_name(node: &str, is_input: bool, inputs: usize) -> String {
    match (is_input, inputs) {
        (true, 1) => "quant.activation_post_process".into(),
        (true, _) => format!("quant_{node}.activation_post_process"),
        (false, _) => format!("{node}.activation_post_process"),
    }
}

/// The `quantize` settings of a recipe, or the error that says how to add them. `span` is where
/// the error points (the model's name).
pub fn settings<'a>(loaded: &'a qc_dsl::Loaded, module: &Module) -> Result<&'a QuantizeSettings, Vec<Diagnostic>> {
    loaded
        .sections
        .quantize
        .as_ref()
        .ok_or_else(|| {
            let span = loaded.recipe.models.first().map_or(Span::new(0, 0), |m| m.name.span);
            Diagnostic::new(
                NO_QUANTIZE,
                span,
                format!(
                    "`{}` has no `quantize` section, so there is nothing to plan",
                    module.name
                ),
            )
            .label("this model")
            .help(
                "add a section such as `quantize { scheme x86  calibrate random(batches: 8) }` (see \
             docs/recipe-language.md); `qc compile --stop-after float` runs the float stages without one",
            )
        })
        .map_err(|d| vec![d])
}

/// The plan of `module` (stage `float` or `fused`) under the recipe's `quantize` section.
pub fn build(module: &Module, q: &QuantizeSettings) -> Result<Plan, Vec<Diagnostic>> {
    if !matches!(module.stage, Stage::Float | Stage::Fused) {
        return Err(vec![Diagnostic::new(
            PLAN_STAGE,
            q.span,
            format!("a plan is made at stage `float` or `fused`, not `{}`", module.stage),
        )
        .label("this quantize section")
        .help("plan the module before observers are inserted")]);
    }
    let g = &module.graph;
    let order = g.topo_order();
    let (w_defaults, a_defaults) = q.scheme_defaults();
    let scheme = Decider::Scheme {
        scheme: q.scheme.value,
        span: q.scheme.span,
        written: !q.scheme_defaulted,
    };
    let mut diags: Vec<Diagnostic> = vec![];
    check_selectors(module, q, &order, &mut diags);

    let decide = Decide {
        g,
        q,
        kinds: order.iter().map(|&id| (id, kind(&g.node(id).op))).collect(),
        w_defaults,
        a_defaults,
        scheme,
    };
    let decided = decide.all(&order);

    // Checks that need the decisions.
    let mut report = Diags {
        reported: HashSet::new(),
        diags,
    };
    check_specs(g, q, &order, &decided, &mut report);
    let mut nodes = node_plans(g, &order, &decided, &mut report);
    for n in nodes.iter_mut().filter(|n| n.weights.is_some()) {
        n.requantize = Some(match q.for_node(&n.node, n.op).requantize {
            Some(r) => (r.value, Decider::Recipe(r.span)),
            None => (q.scheme.value.requantize(), scheme),
        });
    }
    if report.diags.is_empty() {
        let inputs = g
            .inputs
            .iter()
            .map(|&id| {
                let node = g.node(id);
                let normalize = match &node.op {
                    Op::Input { normalize, .. } => normalize.clone(),
                    _ => None,
                };
                (node.name.clone(), normalize, node.origin.span)
            })
            .collect();
        Ok(Plan {
            model: module.name.clone(),
            stage: module.stage,
            scheme,
            inputs,
            nodes,
        })
    } else {
        Err(report.diags)
    }
}

/// What `build` decides from: the graph, the recipe's settings and the scheme's defaults.
struct Decide<'a> {
    g: &'a Graph,
    q: &'a QuantizeSettings,
    kinds: HashMap<NodeId, Kind>,
    w_defaults: TensorDefaults,
    a_defaults: TensorDefaults,
    scheme: Decider,
}

/// Per node: the decision, the weight settings of an int8 weighted op, the activation settings.
struct Decisions {
    decisions: HashMap<NodeId, Decision>,
    weights: HashMap<NodeId, ResolvedSpec>,
    acts: HashMap<NodeId, ResolvedSpec>,
}

impl Decide<'_> {
    /// Every node's decision: own decisions first, inputs wait for their readers.
    fn all(&self, order: &[NodeId]) -> Decisions {
        let g = self.g;
        let mut d = Decisions {
            decisions: HashMap::new(),
            weights: HashMap::new(),
            acts: HashMap::new(),
        };
        for &id in order {
            if self.kinds[&id] == Kind::Input {
                // Quantized when a reader would run in int8 on it: an int8 op, or a sharing op
                // that is not kept float by its own settings.
                let quantized = g.users_of(id).into_iter().any(|u| {
                    let mut probe = d.decisions.clone();
                    probe.insert(id, Decision::Input { quantized: true });
                    for i in g.inputs_of(u) {
                        probe.entry(i).or_insert(Decision::Input { quantized: true });
                    }
                    self.own(u, &probe).0.is_int8()
                });
                let (decision, _, a) = self.own(id, &d.decisions);
                let decision = match decision {
                    Decision::Input { .. } => Decision::Input { quantized },
                    other => other,
                };
                d.decisions.insert(id, decision);
                d.acts.insert(id, a);
            }
        }
        for &id in order {
            if self.kinds[&id] == Kind::Input {
                continue;
            }
            let (decision, w, a) = self.own(id, &d.decisions);
            if let Some(w) = w {
                d.weights.insert(id, w);
            }
            d.decisions.insert(id, decision);
            d.acts.insert(id, a);
        }
        d
    }

    /// A node's own decision given its inputs' (`decisions`), with its weight settings (int8
    /// weighted ops only) and activation settings.
    fn own(&self, id: NodeId, decisions: &HashMap<NodeId, Decision>) -> (Decision, Option<ResolvedSpec>, ResolvedSpec) {
        let g = self.g;
        let node = g.node(id);
        let nq = self.q.for_node(&node.name, node.op.name());
        let w = ResolvedSpec::resolve(&nq.weights, &self.w_defaults, self.scheme);
        let a = ResolvedSpec::resolve(&nq.activations, &self.a_defaults, self.scheme);
        let k = self.kinds[&id];
        let decision = if let Some(skip) = nq.skip {
            Decision::Float(FloatReason::Skip(skip))
        } else {
            match k {
                Kind::Input => Decision::Input { quantized: false },
                Kind::Weighted | Kind::OwnOutput => {
                    if k == Kind::Weighted && w.float.value {
                        Decision::Float(FloatReason::KeptFloat {
                            tensor: "weights",
                            span: span_of(w.float.by),
                        })
                    } else if a.float.value {
                        Decision::Float(FloatReason::KeptFloat {
                            tensor: "activations",
                            span: span_of(a.float.by),
                        })
                    } else {
                        Decision::Int8
                    }
                }
                Kind::Shares => {
                    if a.float.value {
                        Decision::Float(FloatReason::KeptFloat {
                            tensor: "activations",
                            span: span_of(a.float.by),
                        })
                    } else {
                        match g.inputs_of(id).into_iter().find(|i| !decisions[i].is_int8()) {
                            Some(f) => Decision::Float(FloatReason::FloatInput(g.node(f).name.clone())),
                            None => Decision::Shares {
                                input: g
                                    .inputs_of(id)
                                    .first()
                                    .map(|i| g.node(*i).name.clone())
                                    .unwrap_or_default(),
                            },
                        }
                    }
                }
                Kind::NoInt8 => Decision::Float(FloatReason::NoInt8Form),
            }
        };
        let w = (k == Kind::Weighted && decision == Decision::Int8).then_some(w);
        (decision, w, a)
    }
}

/// The plan's diagnostics, each (code, span) once.
struct Diags {
    reported: HashSet<(&'static str, usize, usize)>,
    diags: Vec<Diagnostic>,
}

impl Diags {
    fn push(&mut self, d: Diagnostic) {
        if self.reported.insert((d.code, d.span.start, d.span.end)) {
            self.diags.push(d);
        }
    }
}

/// Settings the decisions make impossible: per-channel weights with a histogram or percentile
/// observer, per-channel activations.
fn check_specs(g: &Graph, q: &QuantizeSettings, order: &[NodeId], decided: &Decisions, report: &mut Diags) {
    for (&id, w) in &decided.weights {
        let per_channel = w.granularity.value == Granularity::PerChannel;
        if per_channel
            && matches!(
                w.observer.value,
                Observer::Histogram { .. } | Observer::Percentile { .. }
            )
        {
            let (span, label) = match (w.observer.by, w.granularity.by) {
                (Decider::Recipe(s), _) => (s, "no per-channel form"),
                (_, Decider::Recipe(s)) => (s, "per-channel weights"),
                _ => (q.scheme.span, "this scheme"),
            };
            report.push(
                Diagnostic::new(
                    PER_CHANNEL_OBSERVER,
                    span,
                    format!(
                        "per-channel weights need a min/max observer, but `{}` gets `{}`",
                        g.node(id).name,
                        w.observer.value.name()
                    ),
                )
                .label(label)
                .help(format!(
                    "observe weights with `minmax` or `moving_average_minmax`, or quantize them per tensor: \
                     `weights: per_tensor {}`",
                    w.observer.value.name()
                )),
            );
        }
    }
    for &id in order {
        let a = &decided.acts[&id];
        if a.granularity.value == Granularity::PerChannel {
            report.push(
                Diagnostic::new(
                    PER_CHANNEL_ACTIVATIONS,
                    span_of(a.granularity.by),
                    "activations are quantized per tensor".to_string(),
                )
                .label("per_channel")
                .help("remove `per_channel` from `activations:`; it applies to weights only"),
            );
        }
    }
}

/// Each node's plan: its decision, observed values and boundaries; an observed value kept in
/// float is reported.
fn node_plans(g: &Graph, order: &[NodeId], decided: &Decisions, report: &mut Diags) -> Vec<NodePlan> {
    let Decisions {
        decisions,
        weights,
        acts,
    } = decided;
    let n_inputs = g.inputs.len();
    let mut nodes = vec![];
    let output_ids: HashSet<NodeId> = g.outputs.iter().map(|(_, id)| *id).collect();
    for &id in order {
        let node = g.node(id);
        let d = decisions[&id].clone();
        let readers = g.users_of(id);
        let int8_reader = readers
            .iter()
            .find(|u| matches!(decisions[u], Decision::Int8 | Decision::Shares { .. }));
        let observed = match &d {
            Decision::Input { quantized } => *quantized,
            Decision::Int8 => true,
            Decision::Shares { .. } => false,
            Decision::Float(_) => int8_reader.is_some(),
        };
        if observed && acts[&id].float.value {
            let reader = int8_reader.map(|u| g.node(*u).name.clone()).unwrap_or_default();
            report.push(
                Diagnostic::new(
                    FLOAT_FEEDS_INT8,
                    span_of(acts[&id].float.by),
                    format!(
                        "`{}` keeps its activations in float, but int8 `{reader}` reads them",
                        node.name
                    ),
                )
                .label("kept in float here")
                .help(format!(
                    "an int8 node needs its input quantized: remove `activations: float`, or keep `{reader}` \
                     in float too (`layer {reader} {{ skip }}`)"
                )),
            );
        }
        let mut boundaries = vec![];
        for i in g.inputs_of(id) {
            let from = g.node(i).name.clone();
            let src = &decisions[&i];
            match &d {
                Decision::Int8 | Decision::Shares { .. } if !src.is_int8() => {
                    boundaries.push(Boundary::Quantize { from })
                }
                Decision::Float(_) if matches!(src, Decision::Int8 | Decision::Shares { .. }) => {
                    boundaries.push(Boundary::Dequantize { from })
                }
                _ => {}
            }
        }
        let is_input = matches!(d, Decision::Input { .. });
        nodes.push(NodePlan {
            node: node.name.clone(),
            op: node.op.name(),
            weights: weights.get(&id).cloned(),
            requantize: None,
            activations: observed.then(|| acts[&id].clone()),
            observer: observed.then(|| observer_name(&node.name, is_input, n_inputs)),
            boundaries,
            dequantized_output: output_ids.contains(&id) && matches!(d, Decision::Int8 | Decision::Shares { .. }),
            decision: d,
        });
    }
    nodes
}

fn span_of(d: Decider) -> Span {
    match d {
        Decider::Recipe(s) => s,
        Decider::Scheme { span, .. } => span,
    }
}

/// The first span among a spec's written words.
fn first_word(spec: &TensorSpec) -> Option<Span> {
    [
        spec.bits.map(|s| s.span),
        spec.granularity.map(|s| s.span),
        spec.symmetric.map(|s| s.span),
        spec.power_of_two.map(|s| s.span),
        spec.float.map(|s| s.span),
        spec.observer.map(|s| s.span),
    ]
    .into_iter()
    .flatten()
    .min_by_key(|s| s.start)
}

/// `layer` selectors that select nothing, and settings that cannot apply to what they select.
fn check_selectors(module: &Module, q: &QuantizeSettings, order: &[NodeId], diags: &mut Vec<Diagnostic>) {
    let g = &module.graph;
    let names: Vec<&str> = order.iter().map(|id| g.node(*id).name.as_str()).collect();
    let mut kinds: Vec<&str> = order.iter().map(|id| g.node(*id).op.name()).collect();
    kinds.sort();
    kinds.dedup();
    let fused_note = if module.stage == Stage::Fused {
        " (at stage `fused`, ops folded into the node before them are gone)"
    } else {
        ""
    };
    for l in &q.layers {
        let selected: Vec<NodeId> = order
            .iter()
            .copied()
            .filter(|id| l.selector.value.matches(&g.node(*id).name, g.node(*id).op.name()))
            .collect();
        let span = l.selector.span;
        if selected.is_empty() {
            let d = match &l.selector.value {
                LayerSelector::Name(n) => {
                    let hint = qc_dsl::diag::did_you_mean(n, names.iter().copied()).unwrap_or_else(|| {
                        format!(
                            "node names are module paths such as {}",
                            names
                                .iter()
                                .take(3)
                                .map(|n| format!("`{n}`"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    });
                    Diagnostic::new(
                        LAYER_SELECTS_NOTHING,
                        span,
                        format!("`layer {n}` selects no node of `{}`{fused_note}", module.name),
                    )
                    .label("no node has this name")
                    .help(format!("{hint}; `qc plan` lists every node"))
                }
                LayerSelector::Glob(p) => Diagnostic::new(
                    LAYER_SELECTS_NOTHING,
                    span,
                    format!("`layer \"{p}\"` matches no node name of `{}`{fused_note}", module.name),
                )
                .label("matches nothing")
                .help(format!(
                    "`*` matches any run of characters and `?` one; node names look like {}",
                    names
                        .iter()
                        .take(3)
                        .map(|n| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
                LayerSelector::Op(k) if k == "hardtanh" || k == "cat" => {
                    let ir = if k == "hardtanh" { "clamp" } else { "concat" };
                    Diagnostic::new(UNKNOWN_OP_KIND, span, format!("`{k}` nodes are `{ir}` nodes in the IR"))
                        .label("not an IR op kind")
                        .help(format!("write `layer op({ir}) {{ ... }}`"))
                }
                LayerSelector::Op(k) if !OP_NAMES.contains(&k.as_str()) => {
                    let hint = qc_dsl::diag::did_you_mean(k, kinds.iter().copied().chain(OP_NAMES.iter().copied()))
                        .map(|d| format!("{d} "))
                        .unwrap_or_default();
                    Diagnostic::new(UNKNOWN_OP_KIND, span, format!("`{k}` is not an op kind"))
                        .label("unknown op kind")
                        .help(format!("{hint}this model's op kinds are {}", words(&kinds)))
                }
                LayerSelector::Op(k) => {
                    let hint = qc_dsl::diag::did_you_mean(k, kinds.iter().copied())
                        .map(|d| format!("{d} "))
                        .unwrap_or_default();
                    Diagnostic::new(
                        LAYER_SELECTS_NOTHING,
                        span,
                        format!("`{}` has no `{k}` node{fused_note}", module.name),
                    )
                    .label("selects no node")
                    .help(format!("{hint}this model's op kinds are {}", words(&kinds)))
                }
            };
            diags.push(d);
            continue;
        }
        // Only exact selectors are held to what they say: a glob may cover several kinds.
        if matches!(l.selector.value, LayerSelector::Glob(_)) {
            continue;
        }
        let first = g.node(selected[0]);
        let k = kind(&first.op);
        if let Some(ws) = first_word(&l.weights) {
            if k != Kind::Weighted {
                diags.push(
                    Diagnostic::new(
                        NO_WEIGHTS,
                        ws,
                        format!("`{}` ({}) has no weights to quantize", first.name, first.op.name()),
                    )
                    .label("weights setting")
                    .help("only conv and linear layers have weights: remove `weights:` here"),
                );
            }
        }
        if let Some(ws) = first_word(&l.activations) {
            if k == Kind::Shares && l.activations.float.is_none() {
                let input = g
                    .inputs_of(selected[0])
                    .first()
                    .map(|i| g.node(*i).name.clone())
                    .unwrap_or_default();
                diags.push(
                    Diagnostic::new(
                        SHARED_PARAMS,
                        ws,
                        format!(
                            "`{}` ({}) runs on its input's integers with its input's quantization, so \
                             `activations:` here has no effect",
                            first.name,
                            first.op.name()
                        ),
                    )
                    .label("has no effect")
                    .help(format!(
                        "set `activations:` on the layer that produces its input (`layer {input} {{ ... }}`), or write \
                         `activations: float` to keep it in float"
                    )),
                );
            }
        }
    }
}

fn words(items: &[&str]) -> String {
    items.iter().map(|w| format!("`{w}`")).collect::<Vec<_>>().join(", ")
}

// ------------------------------------------------------------------------------------- output

/// One row of the printed plan.
pub struct Row {
    pub node: String,
    pub op: String,
    pub plan: String,
    pub weights: String,
    pub activations: String,
    pub boundary: String,
    pub decided_by: String,
}

impl Plan {
    /// The rows of `qc plan`, one per node, every field decided by something named.
    pub fn rows(&self, sources: &SourceMap) -> Vec<Row> {
        self.nodes.iter().map(|n| row(n, sources)).collect()
    }

    /// The plan as a table for people.
    pub fn table(&self, sources: &SourceMap) -> String {
        let rows = self.rows(sources);
        let headers = ["node", "op", "plan", "weights", "activations", "boundary", "decided by"];
        let cols = |r: &Row| {
            [
                r.node.clone(),
                r.op.clone(),
                r.plan.clone(),
                r.weights.clone(),
                r.activations.clone(),
                r.boundary.clone(),
                r.decided_by.clone(),
            ]
        };
        let mut widths = headers.map(|h| h.chars().count());
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(cols(r)) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        let line = |cells: [String; 7], out: &mut String| {
            let mut s = String::new();
            for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
                if i + 1 == cells.len() {
                    s.push_str(c);
                } else {
                    s.push_str(&format!("{c:<w$}  "));
                }
            }
            out.push_str(s.trim_end());
            out.push('\n');
        };
        out.push_str(&format!(
            "plan of `{}` at stage `{}`, {}\n",
            self.model,
            self.stage,
            self.scheme.describe(sources).replace(" default", "")
        ));
        for (name, normalize, span) in &self.inputs {
            out.push_str(&match normalize {
                Some(n) => format!(
                    "input {name}: {n} ({}): calibration, training and the compiled model normalize raw data\n",
                    place(sources, *span)
                ),
                None => format!(
                    "input {name}: taken as given, no `normalize(...)` on its line ({})\n",
                    place(sources, *span)
                ),
            });
        }
        line(headers.map(String::from), &mut out);
        for r in &rows {
            line(cols(r), &mut out);
        }
        let int8 = self.nodes.iter().filter(|n| n.decision.is_int8()).count();
        let observed = self.nodes.iter().filter(|n| n.observer.is_some()).count();
        out.push_str(&format!(
            "{} nodes: {int8} int8 (quantized inputs included), {} float; {observed} observed values\n",
            self.nodes.len(),
            self.nodes.len() - int8
        ));
        out
    }

    /// The plan as tab-separated values for tools: a header line, then one line per node with
    /// the columns of [`Plan::table`].
    pub fn tsv(&self, sources: &SourceMap) -> String {
        let mut out = String::from("node\top\tplan\tweights\tactivations\tboundary\tdecided_by\n");
        for r in self.rows(sources) {
            out.push_str(&format!(
                "{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
                r.node, r.op, r.plan, r.weights, r.activations, r.boundary, r.decided_by
            ));
        }
        out
    }
}

fn row(n: &NodePlan, sources: &SourceMap) -> Row {
    let (plan, reason) = match &n.decision {
        Decision::Input { quantized: true } => (
            "quantize".to_string(),
            "qc: an int8 node reads this input (quant stub)".to_string(),
        ),
        Decision::Input { quantized: false } => ("float".into(), "qc: only float nodes read this input".into()),
        Decision::Int8 => ("int8".into(), format!("qc: {} has an int8 form", n.op)),
        Decision::Shares { input } => (
            format!("int8 (shares {input})"),
            format!("qc: {} runs on its input's integers and keeps its quantization", n.op),
        ),
        Decision::Float(FloatReason::Skip(span)) => (
            "float (skip)".into(),
            format!("{} `{}`", place(sources, *span), sources.text(*span)),
        ),
        Decision::Float(FloatReason::KeptFloat { tensor, span }) => (
            format!("float ({tensor}: float)"),
            format!("{} `{tensor}: {}`", place(sources, *span), sources.text(*span)),
        ),
        Decision::Float(FloatReason::NoInt8Form) => {
            ("float (no int8 form)".into(), format!("qc: {} has no int8 form", n.op))
        }
        Decision::Float(FloatReason::FloatInput(input)) => (
            format!("float (input {input} is float)"),
            format!("qc: {} runs on its input's type", n.op),
        ),
    };
    let mut by = vec![reason];
    let mut groups: Vec<(String, Vec<String>)> = vec![];
    for (tensor, spec) in [("weights", &n.weights), ("activations", &n.activations)] {
        let Some(spec) = spec else { continue };
        for (word, d) in spec.words() {
            let key = d.describe(sources);
            let text = format!("{tensor} {word}");
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, v)) => v.push(text),
                None => groups.push((key, vec![text])),
            }
        }
    }
    for (key, texts) in groups {
        // Merge "weights a, weights b" into "weights a b".
        let mut merged: Vec<String> = vec![];
        for t in texts {
            let (tensor, word) = t.split_once(' ').unwrap_or((&t, ""));
            match merged.last_mut() {
                Some(last) if last.starts_with(&format!("{tensor} ")) => {
                    last.push(' ');
                    last.push_str(word);
                }
                _ => merged.push(t.clone()),
            }
        }
        by.push(format!("{key}: {}", merged.join(", ")));
    }
    let spec_text = |s: &Option<ResolvedSpec>| s.as_ref().map_or("-".to_string(), |s| s.qspec().describe());
    let activations = match (&n.activations, &n.decision) {
        (Some(_), _) => spec_text(&n.activations),
        (None, Decision::Shares { input }) => format!("= {input}'s"),
        _ => "-".into(),
    };
    let mut boundary: Vec<String> = n
        .boundaries
        .iter()
        .map(|b| match b {
            Boundary::Quantize { from } => format!("quantize {from}"),
            Boundary::Dequantize { from } => format!("dequantize {from}"),
        })
        .collect();
    if n.dequantized_output {
        boundary.push("dequantize output".into());
    }
    Row {
        node: n.node.clone(),
        op: n.op.to_string(),
        plan,
        weights: spec_text(&n.weights),
        activations,
        boundary: if boundary.is_empty() {
            "-".into()
        } else {
            boundary.join(", ")
        },
        decided_by: by.join("; "),
    }
}
