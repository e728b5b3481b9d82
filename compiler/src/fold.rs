//! Folding a batch-norm node of the graph into the conv or linear in front of it (pass `fuse`,
//! PTQ): the new weight and bias replace the layer's, with provenance `fold_bn`, and the batch
//! norm's parameters leave the store. The arithmetic is qc's one batch-norm folding module,
//! `qc_runtime_host::fold` (re-exported here), which `convert` and QAT training use too.

use qc_dsl::Diagnostic;
use qc_runtime::{DType, Tensor};

use crate::ir::{Module, NodeId, Param, Provenance};
use crate::ops::{Op, BN_ROLES};
pub use qc_runtime_host::fold::*;

/// The parameter key node `id` holds in `role`.
pub(crate) fn key_of(module: &Module, id: NodeId, role: &str) -> Option<String> {
    module
        .graph
        .node(id)
        .params
        .iter()
        .find(|(r, _)| *r == role)
        .map(|(_, k)| k.clone())
}

/// A compiler bug met while applying a patch (the verifier would catch its result anyway).
pub(crate) fn bug(message: String) -> Box<Diagnostic> {
    Box::new(
        Diagnostic::new("qc::internal", qc_dsl::Span::default(), message)
            .label("here")
            .help("this is a bug in qc, not in your recipe; please report it with the recipe"),
    )
}

/// The float-stage keys a parameter stands for: itself, or what a transform of this pass made it
/// from (so that folding twice still names the original keys).
fn sources_of(module: &Module, key: &str) -> Vec<String> {
    match module.params.get(key).map(|p| &p.provenance) {
        Some(Provenance::Derived { transform, from }) if transform == "fold_bn" => from.clone(),
        _ => vec![key.to_string()],
    }
}

/// PTQ: folds batch norm `bn_id` into the weights of `anchor`.
pub fn fold_into(module: &mut Module, anchor: NodeId, bn_id: NodeId, rule: &str) -> Result<(), Box<Diagnostic>> {
    let anchor_name = module.graph.node(anchor).name.clone();
    let bn_node = module.graph.node(bn_id).clone();
    let Op::BatchNorm(bn_op) = &bn_node.op else {
        return Err(bug(format!("`{}` is folded but is not a batch norm", bn_node.name)));
    };
    let weight_key = key_of(module, anchor, "weight").ok_or_else(|| bug(format!("`{anchor_name}` has no weight")))?;
    let bias_key = key_of(module, anchor, "bias");
    let bn_keys: Vec<String> = BN_ROLES
        .iter()
        .map(|r| key_of(module, bn_id, r).ok_or_else(|| bug(format!("`{}` has no `{r}`", bn_node.name))))
        .collect::<Result<_, _>>()?;
    let value = |k: &str| -> Result<&Tensor, Box<Diagnostic>> {
        module
            .params
            .get(k)
            .and_then(|p| p.value.as_ref())
            .ok_or_else(|| bug(format!("`{k}` has no value at stage fused")))
    };
    let is_linear = matches!(module.graph.node(anchor).op, Op::Linear(_));
    let folded = {
        let (w, b) = (value(&weight_key)?, bias_key.as_deref().map(value).transpose()?);
        let (g, be, m, v) = (
            value(&bn_keys[0])?,
            value(&bn_keys[1])?,
            value(&bn_keys[2])?,
            value(&bn_keys[3])?,
        );
        let layer = if is_linear { Layer::Linear } else { Layer::Conv };
        fold_stats(layer, w, b, [g, be, m, v], bn_op.eps)
    };
    let folded = folded.map_err(|e| {
        Box::new(fold_diagnostic(
            module,
            bn_id,
            &anchor_name,
            &weight_key,
            &bias_key,
            &bn_keys,
            rule,
            &e,
        ))
    })?;

    let mut from = sources_of(module, &weight_key);
    if let Some(b) = &bias_key {
        for k in sources_of(module, b) {
            if !from.contains(&k) {
                from.push(k);
            }
        }
    }
    from.extend(bn_keys[..4].iter().cloned());
    let provenance = Provenance::Derived {
        transform: "fold_bn".into(),
        from,
    };
    let w = module.params.get_mut(&weight_key).expect("checked above");
    w.value = Some(folded.weight);
    w.provenance = provenance.clone();
    match &bias_key {
        Some(k) => {
            let b = module.params.get_mut(k).expect("checked above");
            b.value = Some(folded.bias);
            b.provenance = provenance;
        }
        None => {
            // The conv gains a bias, right after its weight (PyTorch's state_dict order).
            let key = format!("{anchor_name}.bias");
            let at = module
                .params
                .get_index_of(&weight_key)
                .map_or(module.params.len(), |i| i + 1);
            let shape = folded.bias.shape.clone();
            module.params.shift_insert(
                at,
                key.clone(),
                Param {
                    dtype: DType::F32,
                    shape,
                    value: Some(folded.bias),
                    provenance,
                    owner: anchor_name.clone(),
                    quant: None,
                },
            );
            let node = module.graph.node_mut(anchor);
            let after_weight = node
                .params
                .iter()
                .position(|(r, _)| *r == "weight")
                .map_or(0, |i| i + 1);
            node.params.insert(after_weight, ("bias", key));
            match &mut node.op {
                Op::Conv(c) => c.bias = true,
                Op::Linear(l) => l.bias = true,
                _ => {}
            }
        }
    }
    for k in &bn_keys {
        module.params.shift_remove(k);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn fold_diagnostic(
    module: &Module,
    bn_id: NodeId,
    anchor: &str,
    weight_key: &str,
    bias_key: &Option<String>,
    bn_keys: &[String],
    rule: &str,
    e: &FoldError,
) -> Diagnostic {
    let bn_name = &module.graph.node(bn_id).name;
    let param = match e {
        FoldError::NotF32 { param, .. }
        | FoldError::BadShape { param, .. }
        | FoldError::DataLength { param, .. }
        | FoldError::ChannelMismatch { param, .. }
        | FoldError::NonFinite { param, .. }
        | FoldError::Overflow { param, .. } => Some(*param),
        FoldError::NonPositiveVariance { .. } => Some(FoldParam::RunningVar),
        FoldError::NotRows { .. } => Some(FoldParam::Weight),
        FoldError::ZeroScaleFactor { .. } => Some(FoldParam::BnWeight),
    };
    let key = match param {
        Some(FoldParam::Weight) => weight_key.to_string(),
        Some(FoldParam::Bias) => bias_key.clone().unwrap_or_else(|| format!("{anchor}.bias")),
        Some(FoldParam::BnWeight) => bn_keys[0].clone(),
        Some(FoldParam::BnBias) => bn_keys[1].clone(),
        Some(FoldParam::RunningMean) => bn_keys[2].clone(),
        Some(FoldParam::RunningVar) => bn_keys[3].clone(),
        Some(FoldParam::Eps) => format!("`eps` of {bn_name}"),
        _ => bn_name.clone(),
    };
    let origin = module
        .params
        .get(&key)
        .map(|p| format!(" (it comes from {})", p.provenance))
        .unwrap_or_default();
    crate::float::node_diagnostic(
        module,
        bn_id,
        "qc::fold-bn",
        format!("cannot fold batch norm `{bn_name}` into `{anchor}` (rule `{rule}`): `{key}`: {e}"),
        "this batch norm cannot be folded",
        format!(
            "fix `{key}`{origin} (a batch norm's running_var must be positive and every value finite), or keep \
             `{bn_name}` unfused with `fuse off {rule}` in `quantize {{ }}`"
        ),
    )
}
