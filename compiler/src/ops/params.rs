//! The parameters each op owns, under PyTorch's suffixes, with dtypes and shapes.

use super::*;

impl Op {
    /// Parameters this op owns, as (PyTorch suffix, shape), given its input types. `in_channels`
    /// comes from dim 1 of the input; `None` when it is not known.
    pub fn params(&self, in_channels: Option<usize>) -> Vec<(&'static str, DType, Vec<usize>)> {
        let cin = in_channels.unwrap_or(0);
        match self {
            Op::Conv(c) => {
                let mut shape = vec![c.out_channels, cin / c.groups.max(1)];
                shape.extend(&c.kernel);
                let mut p = vec![("weight", DType::F32, shape)];
                if c.bias {
                    p.push(("bias", DType::F32, vec![c.out_channels]));
                }
                weighted_extras(&mut p, c.out_channels, &c.bn, &c.weight_quant);
                p
            }
            Op::BatchNorm(_) => bn_params(&BN_ROLES, cin),
            Op::Linear(l) => {
                let mut p = vec![("weight", DType::F32, vec![l.out_features, cin])];
                if l.bias {
                    p.push(("bias", DType::F32, vec![l.out_features]));
                }
                weighted_extras(&mut p, l.out_features, &l.bn, &l.weight_quant);
                p
            }
            Op::Observe(q) => {
                let mut p = vec![("min_val", DType::F32, vec![]), ("max_val", DType::F32, vec![])];
                if let Observer::Histogram { bins } = q.observer {
                    p.insert(0, ("histogram", DType::F32, vec![bins as usize]));
                }
                p
            }
            Op::FakeQuant { .. } => fake_quant_params(&ACT_FAKE_QUANT_ROLES, None),
            Op::Quantize { .. } => vec![("scale", DType::F32, vec![1]), ("zero_point", DType::I64, vec![1])],
            Op::QConv(c) => {
                let mut shape = vec![c.out_channels, cin / c.groups.max(1)];
                shape.extend(&c.kernel);
                let dtype = c.weight_quant.as_ref().map_or(DType::I8, |w| w.spec.storage());
                let mut p = vec![("weight", dtype, shape)];
                if c.bias {
                    p.push(("bias", DType::F32, vec![c.out_channels]));
                }
                p.extend(output_qparams());
                p
            }
            Op::QLinear(l) => {
                let dtype = l.weight_quant.as_ref().map_or(DType::I8, |w| w.spec.storage());
                let mut p = vec![("_packed_params.weight", dtype, vec![l.out_features, cin])];
                if l.bias {
                    p.push(("_packed_params.bias", DType::F32, vec![l.out_features]));
                }
                p.extend(output_qparams());
                p
            }
            Op::QAdd { .. } | Op::QConcat { .. } | Op::QCurve(_) | Op::QMul => output_qparams(),
            _ => vec![],
        }
    }

    /// Parameter suffixes this op owns, before shapes are known.
    pub fn param_names(&self) -> Vec<&'static str> {
        self.params(None).into_iter().map(|(n, _, _)| n).collect()
    }
}

/// PyTorch's batch-norm parameters and buffers, as roles of a `batch_norm` node, in its
/// state_dict order.
pub const BN_ROLES: [&str; 5] = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"];
/// The same, kept inside a QAT `ConvBn`/`LinearBn` node (`conv1.bn.weight`).
pub const KEPT_BN_ROLES: [&str; 5] = [
    "bn.weight",
    "bn.bias",
    "bn.running_mean",
    "bn.running_var",
    "bn.num_batches_tracked",
];

fn bn_params(roles: &[&'static str; 5], c: usize) -> Vec<(&'static str, DType, Vec<usize>)> {
    vec![
        (roles[0], DType::F32, vec![c]),
        (roles[1], DType::F32, vec![c]),
        (roles[2], DType::F32, vec![c]),
        (roles[3], DType::F32, vec![c]),
        (roles[4], DType::I64, vec![]),
    ]
}

/// PyTorch's `FusedMovingAvgObsFakeQuantize` state (the x86 QAT default), as roles.
const ACT_FAKE_QUANT_ROLES: [&str; 7] = [
    "fake_quant_enabled",
    "observer_enabled",
    "scale",
    "zero_point",
    "activation_post_process.eps",
    "activation_post_process.min_val",
    "activation_post_process.max_val",
];
const WEIGHT_FAKE_QUANT_ROLES: [&str; 7] = [
    "weight_fake_quant.fake_quant_enabled",
    "weight_fake_quant.observer_enabled",
    "weight_fake_quant.scale",
    "weight_fake_quant.zero_point",
    "weight_fake_quant.activation_post_process.eps",
    "weight_fake_quant.activation_post_process.min_val",
    "weight_fake_quant.activation_post_process.max_val",
];

/// Fake-quant state: per tensor (`channels: None`, scalar statistics) or one entry per channel.
fn fake_quant_params(roles: &[&'static str; 7], channels: Option<usize>) -> Vec<(&'static str, DType, Vec<usize>)> {
    let (q, stat) = match channels {
        Some(c) => (vec![c], vec![c]),
        None => (vec![1], vec![]),
    };
    vec![
        (roles[0], DType::I64, vec![1]),
        (roles[1], DType::I64, vec![1]),
        (roles[2], DType::F32, q.clone()),
        (roles[3], DType::I32, q),
        (roles[4], DType::F32, vec![1]),
        (roles[5], DType::F32, stat.clone()),
        (roles[6], DType::F32, stat),
    ]
}

/// A quantized op's output `scale` and `zero_point` (PyTorch's buffers of converted modules).
fn output_qparams() -> Vec<(&'static str, DType, Vec<usize>)> {
    vec![("scale", DType::F32, vec![]), ("zero_point", DType::I64, vec![])]
}

/// The kept-BN and weight fake-quant parameters of a conv or linear.
fn weighted_extras(
    p: &mut Vec<(&'static str, DType, Vec<usize>)>,
    out: usize,
    bn: &Option<BatchNorm>,
    wq: &Option<WeightQuant>,
) {
    if bn.is_some() {
        p.extend(bn_params(&KEPT_BN_ROLES, out));
    }
    if let Some(w) = wq.as_ref().filter(|w| w.fake) {
        p.extend(fake_quant_params(
            &WEIGHT_FAKE_QUANT_ROLES,
            w.spec.per_channel.then_some(out),
        ));
    }
}
