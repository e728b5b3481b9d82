//! Stage `observed` (pass `insert-observers`): carries out the quantization plan
//! (`plan.rs`). After every value the plan observes comes an observer node,
//! `<producer>.activation_post_process` (the model input's is `quant.activation_post_process`,
//! or `quant_<x>.activation_post_process` with several inputs), and every reader of the value
//! reads the observer instead. PTQ inserts `observe` nodes with PyTorch's observer buffers
//! (`min_val` = +inf, `max_val` = −inf, `histogram` zeros); QAT (`RunOptions::qat`) inserts
//! `fake_quant` nodes with `FusedMovingAvgObsFakeQuantize`'s initial state (scale 1, zero point
//! 0, both enables 1, eps `f32::EPSILON`, min/max ±inf). Int8 conv and linear nodes get their
//! weight's `WeightQuant` (and, in QAT, its `weight_fake_quant.*` state).
//!
//! New parameters are placed in the store after the parameters of the node they belong to, so
//! that the store keeps PyTorch's `state_dict` order of a prepared model.

use qc_runtime::{DType, Tensor, TensorData};

use crate::ir::{Module, Node, NodeId, Param, Provenance};
use crate::ops::{Op, WeightQuant};
use crate::pass::{Changed, Ctx, Pass, PassError};
use crate::plan::{self, Plan};
use crate::types::Dim;

/// Inserts observers (PTQ) or fake-quant nodes (QAT) as the plan says.
pub struct InsertObservers;

impl Pass for InsertObservers {
    fn name(&self) -> &'static str {
        "insert-observers"
    }

    fn run(&self, module: &mut Module, cx: &mut Ctx) -> Result<Changed, PassError> {
        let q = plan::settings(cx.loaded, module).map_err(PassError::User)?;
        let plan = plan::build(module, q).map_err(PassError::User)?;
        let learnable = cx.loaded.sections.qat.as_ref().is_some_and(|s| s.learnable_scales());
        insert(module, &plan, cx.opts.qat, learnable);
        Ok(Changed::Yes)
    }
}

/// The initial value of an observer or fake-quant parameter, by its role (PyTorch's).
fn initial(role: &str, dtype: DType, shape: &[usize]) -> (Tensor, &'static str) {
    let n: usize = shape.iter().product();
    let method = if role.ends_with("min_val") {
        "inf"
    } else if role.ends_with("max_val") {
        "neg_inf"
    } else if role.ends_with("eps") {
        "eps"
    } else if role.ends_with("_enabled") || role.ends_with("scale") {
        "ones"
    } else {
        "zeros"
    };
    let f = match method {
        "inf" => f32::INFINITY,
        "neg_inf" => f32::NEG_INFINITY,
        "eps" => f32::EPSILON,
        "ones" => 1.0,
        _ => 0.0,
    };
    let data = match dtype {
        DType::F32 => TensorData::F32(vec![f; n]),
        DType::I64 => TensorData::I64(vec![f as i64; n]),
        DType::I32 => TensorData::I32(vec![f as i32; n]),
        DType::I8 => TensorData::I8(vec![f as i8; n]),
        DType::U8 => TensorData::U8(vec![f as u8; n]),
    };
    (
        Tensor {
            shape: shape.to_vec(),
            data,
        },
        method,
    )
}

/// The input channels a weighted node's parameter shapes depend on.
fn in_channels(module: &Module, id: NodeId) -> Option<usize> {
    let g = &module.graph;
    let input = g.inputs_of(id).first().and_then(|i| g.node(*i).ty.clone())?;
    let dim = match g.node(id).op {
        Op::Linear(_) => input.dims.last().cloned(),
        _ => input.dims.get(1).cloned(),
    }?;
    match dim {
        Dim::Fixed(n) => Some(n),
        Dim::Symbol(_) => None,
    }
}

/// Inserts `key` after `anchor` in the store (at the front without one); returns `key`.
fn place_param(module: &mut Module, anchor: &Option<String>, key: String, param: Param) -> Option<String> {
    let at = anchor
        .as_ref()
        .and_then(|a| module.params.get_index_of(a))
        .map_or(0, |i| i + 1);
    module.params.shift_insert(at, key.clone(), param);
    Some(key)
}

/// Carries out `plan` on `module` (stage `float` or `fused`).
pub fn insert(module: &mut Module, plan: &Plan, qat: bool, learnable: bool) {
    let order = module.graph.topo_order();
    let mut anchor: Option<String> = None;
    for id in order {
        let name = module.graph.node(id).name.clone();
        let Some(np) = plan.node(&name) else { continue };

        // The weight's quantization, and in QAT its fake-quant state.
        if let Some(w) = &np.weights {
            let wq = Some(WeightQuant {
                spec: w.qspec(),
                fake: qat,
                requantize: np.requantize.map_or(Default::default(), |(r, _)| r),
            });
            match &mut module.graph.node_mut(id).op {
                Op::Conv(c) => c.weight_quant = wq,
                Op::Linear(l) => l.weight_quant = wq,
                _ => {}
            }
        }
        let cin = in_channels(module, id);
        let node = module.graph.node(id);
        let shapes = node.op.params(cin);
        let mut roles = vec![];
        for (role, dtype, shape) in shapes {
            let key = match node.params.iter().find(|(r, _)| *r == role) {
                Some((_, k)) => k.clone(),
                None => format!("{name}.{role}"),
            };
            roles.push((role, key, dtype, shape));
        }
        for (role, key, dtype, shape) in &roles {
            if module.params.contains_key(key) {
                anchor = Some(key.clone());
                continue;
            }
            let (value, method) = initial(role, *dtype, shape);
            let param = Param {
                dtype: *dtype,
                shape: shape.clone(),
                value: Some(value),
                provenance: Provenance::Init { method, seed: 0 },
                owner: name.clone(),
                quant: None,
            };
            anchor = place_param(module, &anchor, key.clone(), param);
        }
        module.graph.node_mut(id).params = roles.into_iter().map(|(r, k, _, _)| (r, k)).collect();

        // The observer of the output.
        let (Some(obs_name), Some(spec)) = (&np.observer, &np.activations) else {
            continue;
        };
        let spec = spec.qspec();
        let op = if qat {
            Op::FakeQuant { spec, learnable }
        } else {
            Op::Observe(spec)
        };
        let producer = module.graph.node(id).clone();
        let mut params = vec![];
        for (role, dtype, shape) in op.params(None) {
            let key = format!("{obs_name}.{role}");
            let (value, method) = initial(role, dtype, &shape);
            let param = Param {
                dtype,
                shape,
                value: Some(value),
                provenance: Provenance::Init { method, seed: 0 },
                owner: obs_name.clone(),
                quant: None,
            };
            anchor = place_param(module, &anchor, key.clone(), param);
            params.push((role, key));
        }
        let ty = producer.ty.clone();
        let obs = module.graph.add(
            Node {
                name: obs_name.clone(),
                op,
                ty,
                params,
                origin: producer.origin.clone(),
            },
            &[id],
        );
        // Right after its producer in creation order, so dumps keep source order.
        let g = &mut module.graph;
        g.order.pop();
        let at = g.order.iter().position(|n| *n == id).map_or(g.order.len(), |i| i + 1);
        g.order.insert(at, obs);
        redirect(module, id, obs);
    }
}

/// Every reader of `from` (and every model output naming it) reads `to` instead, on the same
/// input port; `to`'s own edge from `from` stays.
fn redirect(module: &mut Module, from: NodeId, to: NodeId) {
    use petgraph::visit::EdgeRef;
    let g = &mut module.graph;
    let edges: Vec<_> =
        g.g.edges_directed(from, petgraph::Direction::Outgoing)
            .filter(|e| e.target() != to)
            .map(|e| (e.id(), e.target(), *e.weight()))
            .collect();
    for (edge, target, port) in edges {
        g.g.remove_edge(edge);
        g.g.add_edge(to, target, port);
    }
    for (_, id) in g.outputs.iter_mut() {
        if *id == from {
            *id = to;
        }
    }
}
