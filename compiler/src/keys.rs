//! A stage's parameters under PyTorch's names, and the check of a checkpoint against them:
//! every missing, unexpected or mis-shaped key with its closest candidate and a reason read from
//! provenance (`conv1.bias` is absent from a float checkpoint because folding `bn1` created it).
//!
//! qc's parameter store already uses PyTorch's keys; the one exception is a quantized linear's
//! weight and bias, which PyTorch keeps as one pickled pair under `<fc>._packed_params._packed_params`
//! (next to `<fc>._packed_params.dtype`).

use indexmap::IndexMap;
use qc_dsl::diag::closest;
use qc_runtime::DType;

pub use crate::checkpoint::{read_checkpoint, CkptValue};
use crate::ir::{Module, Param, ParamQuant, Provenance};
use crate::ops::Op;

/// What a checkpoint entry holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A plain tensor.
    Tensor,
    /// A quantized tensor (integers with a per-tensor or per-channel scheme).
    Quantized,
    /// PyTorch's packed (weight, bias) pair of a quantized linear.
    Packed,
    /// A pickled dtype (`_packed_params.dtype`).
    DType,
}

impl EntryKind {
    pub fn name(self) -> &'static str {
        match self {
            EntryKind::Tensor => "tensor",
            EntryKind::Quantized => "quantized tensor",
            EntryKind::Packed => "packed (weight, bias)",
            EntryKind::DType => "dtype",
        }
    }
}

/// One key of a checkpoint, or one key a stage expects: kind, dtype and shape (for a packed
/// pair, the weight's).
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub kind: EntryKind,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dims: Vec<String> = self.shape.iter().map(|d| d.to_string()).collect();
        match self.kind {
            EntryKind::Tensor => write!(f, "{}[{}]", self.dtype, dims.join(", ")),
            EntryKind::DType => write!(f, "dtype"),
            k => write!(f, "{} {}[{}]", k.name(), self.dtype, dims.join(", ")),
        }
    }
}

/// A key of a stage: what it holds, the qc parameters behind it, and where they came from.
#[derive(Clone, Debug, PartialEq)]
pub struct StageKey {
    pub key: String,
    pub entry: Entry,
    /// qc's parameter keys (two for a packed pair, none for `_packed_params.dtype`).
    pub params: Vec<String>,
    pub owner: String,
    /// The provenance of the (first) parameter, as `qc keys` prints it.
    pub origin: String,
}

fn entry_of(p: &Param) -> Entry {
    Entry {
        kind: if p.quant.is_some() {
            EntryKind::Quantized
        } else {
            EntryKind::Tensor
        },
        dtype: p.dtype,
        shape: p.shape.clone(),
    }
}

/// The keys of a module's state_dict at its stage, in order, as PyTorch names them.
pub fn stage_keys(module: &Module) -> Vec<StageKey> {
    let mut out: Vec<StageKey> = vec![];
    for (key, p) in &module.params {
        if let Some(prefix) = key.strip_suffix("._packed_params.weight") {
            let bias = format!("{prefix}._packed_params.bias");
            let mut params = vec![key.clone()];
            if module.params.contains_key(&bias) {
                params.push(bias);
            }
            out.push(StageKey {
                key: format!("{prefix}._packed_params.dtype"),
                entry: Entry {
                    kind: EntryKind::DType,
                    dtype: p.dtype,
                    shape: vec![],
                },
                params: vec![],
                owner: p.owner.clone(),
                origin: "the weight's integer type".into(),
            });
            out.push(StageKey {
                key: format!("{prefix}._packed_params._packed_params"),
                entry: Entry {
                    kind: EntryKind::Packed,
                    ..entry_of(p)
                },
                params,
                owner: p.owner.clone(),
                origin: p.provenance.to_string(),
            });
            continue;
        }
        if key.ends_with("._packed_params.bias") {
            continue;
        }
        out.push(StageKey {
            key: key.clone(),
            entry: entry_of(p),
            params: vec![key.clone()],
            owner: p.owner.clone(),
            origin: p.provenance.to_string(),
        });
    }
    out
}

/// One way a checkpoint does not fit a stage.
#[derive(Clone, Debug, PartialEq)]
pub enum Problem {
    /// The stage needs `key`; the checkpoint lacks it. `closest` is the checkpoint's unused key
    /// most like it (one with the same entry and last name first); `rename` the
    /// `rename: FROM -> TO` that would bind it, when that key has the same entry.
    Missing {
        key: String,
        expected: Entry,
        closest: Option<String>,
        rename: Option<(String, String)>,
        reason: String,
    },
    /// The checkpoint has `key`; no parameter of the stage is called that.
    Unexpected {
        key: String,
        found: Entry,
        closest: Option<String>,
        rename: Option<(String, String)>,
        reason: String,
    },
    /// Both have `key`, with different kinds or shapes.
    Misshaped {
        key: String,
        expected: Entry,
        found: Entry,
        reason: String,
    },
    /// Both have `key`, of the same kind, with different dtypes (an int64 tensor where the stage
    /// has a float32 weight).
    WrongDType { key: String, expected: Entry, found: Entry },
    /// Every key of the checkpoint starts with `prefix`, which no key of the stage has (a model
    /// saved from inside `nn.DataParallel`: `module.`). Reported instead of the key-by-key
    /// problems; `fit` of the `total` keys have a name of the stage once it is stripped.
    Prefix { prefix: String, total: usize, fit: usize },
}

impl Problem {
    /// The `rename: FROM -> TO` this problem suggests, if any.
    pub fn rename(&self) -> Option<(&str, &str)> {
        match self {
            Problem::Missing { rename, .. } | Problem::Unexpected { rename, .. } => {
                rename.as_ref().map(|(f, t)| (f.as_str(), t.as_str()))
            }
            _ => None,
        }
    }
}

/// What `strip` does to a checkpoint, in words (`stripped, every key has a name of the model`).
pub fn prefix_outcome(total: usize, fit: usize) -> String {
    if fit == total {
        "stripped, every key has a name of the model".into()
    } else {
        format!("stripped, {fit} of the {total} keys have a name of the model")
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let near = |c: &Option<String>| match c {
            Some(c) => format!(" (closest: `{c}`)"),
            None => String::new(),
        };
        let rename = |r: &Option<(String, String)>| match r {
            Some((from, to)) => format!("; same shape: `rename: \"{from}\" -> \"{to}\"` binds it"),
            None => String::new(),
        };
        match self {
            Problem::Missing {
                key,
                expected,
                closest,
                rename: r,
                reason,
            } => write!(f, "missing     `{key}` {expected}{}: {reason}{}", near(closest), rename(r)),
            Problem::Unexpected {
                key,
                found,
                closest,
                rename: r,
                reason,
            } => write!(f, "unexpected  `{key}` {found}{}: {reason}{}", near(closest), rename(r)),
            Problem::WrongDType { key, expected, found } => write!(
                f,
                "wrong dtype `{key}` is {found}, the stage needs {expected}: the checkpoint holds {} where the stage has {}",
                found.dtype, expected.dtype
            ),
            Problem::Prefix { prefix, total, fit } => write!(
                f,
                "prefix      all {total} keys start with `{prefix}`, which no key of the stage has; {}",
                prefix_outcome(*total, *fit)
            ),
            Problem::Misshaped {
                key,
                expected,
                found,
                reason,
            } => write!(
                f,
                "mis-shaped  `{key}` is {found}, the stage needs {expected}: {reason}"
            ),
        }
    }
}

/// `bn1.weight, bn1.bias, ...` → `bn1`: the module prefix the keys share, if they all do.
fn common_prefix(keys: &[String]) -> Option<String> {
    let first = keys.first()?.rsplit_once('.')?.0;
    keys.iter()
        .all(|k| k.rsplit_once('.').map(|(p, _)| p) == Some(first))
        .then(|| first.to_string())
}

/// Why the stage has `key` although a checkpoint lacks it, read from provenance.
fn why_missing(module: &Module, key: &StageKey) -> String {
    let Some(p) = key.params.first().and_then(|k| module.params.get(k)) else {
        return "PyTorch stores the packed weight's dtype next to it".into();
    };
    let owner_op = module
        .graph
        .find(&p.owner)
        .map(|id| module.graph.node(id).op.name())
        .unwrap_or("?");
    match &p.provenance {
        Provenance::Derived { transform, from } if transform.contains("fold_bn") => {
            let bn: Vec<String> = from
                .iter()
                .filter(|k| !k.starts_with(&format!("{}.", p.owner)))
                .cloned()
                .collect();
            let bn = common_prefix(&bn).unwrap_or_else(|| bn.join(", "));
            if from.iter().any(|k| k == &key.key) {
                format!("it is the float `{}` with `{bn}` folded in (stage fused)", key.key)
            } else {
                format!("the float model's {owner_op} has no bias; it is created by folding `{bn}` (stage fused)")
            }
        }
        Provenance::Derived { transform, from } if transform == "move" => format!(
            "QAT keeps the batch norm inside the fused module: this is `{}` of the float model",
            from.join(", ")
        ),
        Provenance::Derived { transform, from } => {
            if from.is_empty() {
                format!("it is computed by `{transform}` at stage {}", module.stage)
            } else {
                format!("it is computed by `{transform}` from {}", quote_list(from))
            }
        }
        _ => {
            let node = module.graph.find(&p.owner).map(|id| &module.graph.node(id).op);
            match node {
                Some(Op::Observe(_)) => "observer state, created at stage observed (PTQ)".into(),
                Some(Op::FakeQuant { .. }) => "fake-quant state, created at stage observed (QAT)".into(),
                _ if key.key.contains("weight_fake_quant") => {
                    "weight fake-quant state, created at stage observed (QAT)".into()
                }
                _ => format!("`{}` ({owner_op}) owns it", p.owner),
            }
        }
    }
}

fn quote_list(keys: &[String]) -> String {
    keys.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
}

/// Why a checkpoint has `key` although the stage does not: a key the stage's transforms
/// consumed, or simply one no layer owns.
fn why_unexpected(module: &Module, key: &str) -> String {
    let consumers: Vec<(&String, &Provenance)> = module
        .params
        .iter()
        .filter_map(|(k, p)| match &p.provenance {
            Provenance::Derived { from, .. } if from.iter().any(|f| f == key) => Some((k, &p.provenance)),
            _ => None,
        })
        .collect();
    match consumers.first() {
        Some((_, Provenance::Derived { transform, .. })) => {
            let into: Vec<String> = consumers.iter().map(|(k, _)| k.to_string()).collect();
            format!(
                "a key of an earlier stage: `{transform}` turned it into {} at or before stage {}; load this checkpoint at the stage it was saved from",
                quote_list(&into),
                module.stage
            )
        }
        _ => "no layer of the model owns it at this stage".into(),
    }
}

/// The prefix every checkpoint key starts with and no stage key does (`module.`, as
/// `nn.DataParallel` saves), when stripping it gives some key a name of the stage; with how many
/// keys then have one. The longest such prefix made of whole dotted parts wins.
pub fn foreign_prefix<'a>(stage: &[&str], ckpt: impl IntoIterator<Item = &'a str>) -> Option<(String, usize)> {
    let ckpt: Vec<&str> = ckpt.into_iter().collect();
    let first = *ckpt.first()?;
    let names: std::collections::HashSet<&str> = stage.iter().copied().collect();
    let mut best: Option<(String, usize)> = None;
    for (i, _) in first.match_indices('.') {
        let prefix = &first[..=i];
        if !ckpt.iter().all(|k| k.starts_with(prefix)) || stage.iter().any(|k| k.starts_with(prefix)) {
            break;
        }
        let fit = ckpt.iter().filter(|k| names.contains(&k[prefix.len()..])).count();
        if fit > 0 && best.as_ref().is_none_or(|(_, f)| fit >= *f) {
            best = Some((prefix.to_string(), fit));
        }
    }
    best
}

/// The candidate most like `key`: among those with `entry` (same kind, dtype and shape) and the
/// same last name (`weight`, `bias`), the most similar spelling whatever the distance (so a
/// renamed layer finds its new name); else the closest spelling (close enough to be a typo).
/// The flag says whether the candidate has the same entry.
fn closest_entry<'a>(
    key: &str,
    entry: &Entry,
    candidates: impl Iterator<Item = (&'a str, &'a Entry)> + Clone,
) -> Option<(&'a str, bool)> {
    let last = |k: &str| k.rsplit('.').next().map(str::to_string);
    let same = candidates
        .clone()
        .filter(|(c, e)| fits(entry, e) && fits(e, entry) && last(c) == last(key))
        .map(|(c, _)| (strsim::jaro_winkler(key, c), c))
        .fold(None::<(f64, &str)>, |best, (score, c)| match best {
            Some((b, _)) if b >= score => best,
            _ => Some((score, c)),
        });
    if let Some((_, c)) = same {
        return Some((c, true));
    }
    let by_name = closest(key, candidates.clone().map(|(c, _)| c))?;
    let same_entry = candidates
        .clone()
        .any(|(c, e)| c == by_name && fits(entry, e) && fits(e, entry));
    Some((by_name, same_entry))
}

/// The `rename` that binds the checkpoint's `from_key` as the stage's `to_key`: the layer's
/// (`"fc" -> "head"`) when every key of the checkpoint under that layer then lands on a missing
/// key of the same entry, else the one key's.
fn rename_for(
    from_key: &str,
    to_key: &str,
    stage: &IndexMap<&str, &Entry>,
    ckpt: &IndexMap<String, Entry>,
) -> (String, String) {
    if let (Some((from, f_last)), Some((to, t_last))) = (from_key.rsplit_once('.'), to_key.rsplit_once('.')) {
        if f_last == t_last {
            let under: Vec<(&String, &Entry)> = ckpt
                .iter()
                .filter(|(k, _)| k.strip_prefix(from).is_some_and(|r| r.starts_with('.')))
                .collect();
            let all_land = under.iter().all(|(k, e)| {
                let target = format!("{to}{}", &k[from.len()..]);
                !ckpt.contains_key(&target) && stage.get(target.as_str()).is_some_and(|want| fits(want, e))
            });
            if all_land {
                return (from.to_string(), to.to_string());
            }
        }
    }
    (from_key.to_string(), to_key.to_string())
}

/// Checks a checkpoint's entries against a module's stage keys.
pub fn check(module: &Module, ckpt: &IndexMap<String, Entry>) -> Vec<Problem> {
    let keys = stage_keys(module);
    let by_key: IndexMap<&str, &StageKey> = keys.iter().map(|k| (k.key.as_str(), k)).collect();
    let entries: IndexMap<&str, &Entry> = keys.iter().map(|k| (k.key.as_str(), &k.entry)).collect();
    let names: Vec<&str> = by_key.keys().copied().collect();
    if let Some((prefix, fit)) = foreign_prefix(&names, ckpt.keys().map(|k| k.as_str())) {
        return vec![Problem::Prefix {
            prefix,
            total: ckpt.len(),
            fit,
        }];
    }
    let unused: Vec<(&str, &Entry)> = ckpt
        .iter()
        .filter(|(c, _)| !by_key.contains_key(c.as_str()))
        .map(|(c, e)| (c.as_str(), e))
        .collect();
    let unbound: Vec<(&str, &Entry)> = keys
        .iter()
        .filter(|k| !ckpt.contains_key(&k.key))
        .map(|k| (k.key.as_str(), &k.entry))
        .collect();
    // A key a stage's transform made (a folded bias) or consumed (a folded batch norm) is not
    // a renamed layer: no rename is suggested for it.
    let made = |k: &StageKey| {
        k.params
            .first()
            .and_then(|p| module.params.get(p))
            .is_some_and(|p| matches!(p.provenance, Provenance::Derived { .. }))
    };
    let consumed = |key: &str| {
        module
            .params
            .values()
            .any(|p| matches!(&p.provenance, Provenance::Derived { from, .. } if from.iter().any(|f| f == key)))
    };
    let mut problems = vec![];
    for k in &keys {
        match ckpt.get(&k.key) {
            None => {
                let near = closest_entry(&k.key, &k.entry, unused.iter().copied());
                let near = near.map(|(c, same)| (c, same && !made(k) && !consumed(c)));
                problems.push(Problem::Missing {
                    key: k.key.clone(),
                    expected: k.entry.clone(),
                    closest: near.map(|(c, _)| c.to_string()),
                    rename: near
                        .filter(|(_, same)| *same)
                        .map(|(c, _)| rename_for(c, &k.key, &entries, ckpt)),
                    reason: why_missing(module, k),
                })
            }
            Some(found)
                if found.kind == k.entry.kind
                    && found.kind != EntryKind::DType
                    && found.shape == k.entry.shape
                    && !fits(&k.entry, found) =>
            {
                problems.push(Problem::WrongDType {
                    key: k.key.clone(),
                    expected: k.entry.clone(),
                    found: found.clone(),
                })
            }
            Some(found) if !fits(&k.entry, found) => problems.push(Problem::Misshaped {
                key: k.key.clone(),
                expected: k.entry.clone(),
                found: found.clone(),
                reason: if found.kind != k.entry.kind {
                    format!(
                        "the stage holds a {} here, the checkpoint a {}: it was saved at another stage",
                        k.entry.kind.name(),
                        found.kind.name()
                    )
                } else {
                    "the recipe and the checkpoint disagree on this layer's size: check `out`, `kernel`, `groups` and the input channels".into()
                },
            }),
            Some(_) => {}
        }
    }
    for (key, found) in ckpt {
        if !by_key.contains_key(key.as_str()) {
            let near = closest_entry(key, found, unbound.iter().copied());
            let near = near.map(|(c, same)| {
                let k = by_key.get(c).copied();
                (c, same && !consumed(key) && !k.is_some_and(&made))
            });
            problems.push(Problem::Unexpected {
                key: key.clone(),
                found: found.clone(),
                closest: near.map(|(c, _)| c.to_string()),
                rename: near
                    .filter(|(_, same)| *same)
                    .map(|(c, _)| rename_for(key, c, &entries, ckpt)),
                reason: why_unexpected(module, key),
            });
        }
    }
    problems
}

/// Whether a checkpoint's entries fit a module's stage exactly: [`check`] would find no
/// problem (without working out closest keys, renames and reasons).
pub fn fits_stage(module: &Module, ckpt: &IndexMap<String, Entry>) -> bool {
    let keys = stage_keys(module);
    keys.len() == ckpt.len()
        && keys
            .iter()
            .all(|k| ckpt.get(&k.key).is_some_and(|found| fits(&k.entry, found)))
}

/// Same kind and shape; a checkpoint's dtype may differ only where PyTorch's does from qc's
/// (fake-quant zero points are int32 or int64 across versions).
fn fits(expected: &Entry, found: &Entry) -> bool {
    if expected.kind != found.kind {
        return false;
    }
    if expected.kind == EntryKind::DType {
        return true;
    }
    let ints = |d: DType| matches!(d, DType::I32 | DType::I64);
    expected.shape == found.shape && (expected.dtype == found.dtype || (ints(expected.dtype) && ints(found.dtype)))
}

/// Entries of a safetensors checkpoint (plain tensors only).
pub fn entries_of_tensors(tensors: &IndexMap<String, qc_runtime::Tensor>) -> IndexMap<String, Entry> {
    tensors
        .iter()
        .map(|(k, t)| {
            (
                k.clone(),
                Entry {
                    kind: EntryKind::Tensor,
                    dtype: t.dtype(),
                    shape: t.shape.clone(),
                },
            )
        })
        .collect()
}

/// A per-channel or per-tensor scheme in words, for `qc keys`.
pub fn describe_quant(q: &ParamQuant) -> String {
    match q {
        ParamQuant::PerTensor(p) => format!("per tensor, scale {}, zero point {}", p.scale, p.zero_point),
        ParamQuant::PerChannel { axis, scales, .. } => format!("per channel (axis {axis}, {} scales)", scales.len()),
    }
}

/// Whether a key names state that only exists after stage `float` (a QAT module's kept batch
/// norm, fake-quant or observer state, a converted module's `scale`/`zero_point`/packed
/// parameters). A checkpoint with such a key is bound at the stage it fits; any other is a
/// float checkpoint and must fit stage `float`.
pub fn is_later_stage_key(key: &str) -> bool {
    const MARKERS: [&str; 6] = [
        ".bn.",
        "fake_quant",
        "activation_post_process",
        "_packed_params",
        "observer_enabled",
        "weight_post_process",
    ];
    MARKERS.iter().any(|m| key.contains(m)) || key.ends_with(".scale") || key.ends_with(".zero_point")
}

/// A checkpoint value's entry: its kind, dtype and shape.
fn entry_of_value(value: &CkptValue) -> Entry {
    let t = |kind, t: &qc_runtime::Tensor| Entry {
        kind,
        dtype: t.dtype(),
        shape: t.shape.clone(),
    };
    match value {
        CkptValue::Tensor(x) => t(EntryKind::Tensor, x),
        CkptValue::Quantized { int_repr, .. } => t(EntryKind::Quantized, int_repr),
        CkptValue::Packed { weight, .. } => t(EntryKind::Packed, weight),
        CkptValue::DType(_) => Entry {
            kind: EntryKind::DType,
            dtype: DType::I8,
            shape: vec![],
        },
    }
}

/// The entries of a checkpoint, for [`check`].
pub fn entries(values: &IndexMap<String, CkptValue>) -> IndexMap<String, Entry> {
    values.iter().map(|(k, v)| (k.clone(), entry_of_value(v))).collect()
}

/// Reads the entries of a checkpoint file.
pub fn read_entries(path: &std::path::Path) -> Result<IndexMap<String, Entry>, crate::checkpoint::ReadError> {
    read_checkpoint(path).map(|v| entries(&v))
}

/// Binds a checkpoint that [`check`] found to fit the module's stage: every parameter takes the
/// checkpoint's value (a packed pair fills weight and bias; integer tensors keep their scheme;
/// integer widths PyTorch varies on, such as int32/int64 zero points, are converted), and each
/// integer op's output type takes its bound `scale`/`zero_point`.
/// `origins`: the file's own names of keys the `weights` line remapped (for provenance).
pub fn bind(
    module: &mut Module,
    values: &IndexMap<String, CkptValue>,
    file: &str,
    origins: &crate::remap::Origins,
) -> Result<(), String> {
    let keys = stage_keys(module);
    for k in &keys {
        let value = values.get(&k.key).ok_or_else(|| format!("`{}` is missing", k.key))?;
        let mut assign = |param: &str, t: qc_runtime::Tensor, quant: Option<ParamQuant>| -> Result<(), String> {
            let p = module
                .params
                .get_mut(param)
                .ok_or_else(|| format!("no parameter `{param}`"))?;
            let t = convert_ints(t, p.dtype).ok_or_else(|| format!("`{}` has dtype {}", k.key, p.dtype))?;
            p.dtype = t.dtype();
            p.shape = t.shape.clone();
            p.value = Some(t);
            p.quant = quant;
            p.provenance = Provenance::Checkpoint {
                file: file.to_string(),
                key: origins.get(&k.key).unwrap_or(&k.key).clone(),
            };
            Ok(())
        };
        match value {
            CkptValue::Tensor(t) => assign(&k.params[0], t.clone(), None)?,
            CkptValue::Quantized { int_repr, quant } => assign(&k.params[0], int_repr.clone(), Some(quant.clone()))?,
            CkptValue::Packed { weight, quant, bias } => {
                assign(&k.params[0], weight.clone(), Some(quant.clone()))?;
                if let (Some(b), Some(key)) = (bias, k.params.get(1)) {
                    assign(key, b.clone(), None)?;
                }
            }
            CkptValue::DType(_) => {}
        }
    }
    // Integer ops: the output type follows the bound `scale` / `zero_point`.
    let ids: Vec<_> = module.graph.topo_order();
    for id in ids {
        let name = module.graph.node(id).name.clone();
        let scale = module
            .params
            .get(&format!("{name}.scale"))
            .and_then(|p| p.value.as_ref())
            .and_then(|t| match &t.data {
                qc_runtime::TensorData::F32(v) => v.first().copied(),
                _ => None,
            });
        let zp = module
            .params
            .get(&format!("{name}.zero_point"))
            .and_then(|p| p.value.as_ref())
            .and_then(|t| match &t.data {
                qc_runtime::TensorData::I64(v) => v.first().map(|&z| z as i32),
                qc_runtime::TensorData::I32(v) => v.first().copied(),
                _ => None,
            });
        let node = module.graph.node_mut(id);
        let integer = matches!(
            node.op,
            Op::Quantize { .. }
                | Op::QConv(_)
                | Op::QLinear(_)
                | Op::QAdd { .. }
                | Op::QConcat { .. }
                | Op::QCurve(_)
                | Op::QMul
        );
        if let (true, Some(scale), Some(zero_point), Some(ty)) = (integer, scale, zp, node.ty.as_mut()) {
            if let Some(q) = ty.quant.as_mut() {
                q.scale = scale;
                q.zero_point = zero_point;
            }
        }
    }
    propagate_quant(module);
    Ok(())
}

/// Re-derives the parameters of ops that pass their input's through (pools, flatten, relu).
fn propagate_quant(module: &mut Module) {
    for id in module.graph.topo_order() {
        let inputs = module.graph.inputs_of(id);
        let passes = module.graph.node(id).op.shares_input_quant();
        if !passes || inputs.len() != 1 {
            continue;
        }
        let q = module.graph.node(inputs[0]).ty.as_ref().and_then(|t| t.quant);
        if let (Some(q), Some(ty)) = (q, module.graph.node_mut(id).ty.as_mut()) {
            if ty.quant.is_some() {
                ty.quant = Some(q);
            }
        }
    }
}

/// Integer tensors converted to the width qc keeps (`i32` ↔ `i64`); other dtypes must match.
fn convert_ints(t: qc_runtime::Tensor, want: DType) -> Option<qc_runtime::Tensor> {
    use qc_runtime::TensorData as D;
    if t.dtype() == want {
        return Some(t);
    }
    let data = match (&t.data, want) {
        (D::I32(v), DType::I64) => D::I64(v.iter().map(|&x| x as i64).collect()),
        (D::I64(v), DType::I32) => D::I32(v.iter().map(|&x| i32::try_from(x).ok()).collect::<Option<_>>()?),
        // Integer weights: qint8 / quint8 as PyTorch saved them, whatever qc's plan said.
        (D::I8(_) | D::U8(_), DType::I8 | DType::U8) => return Some(t),
        _ => return None,
    };
    Some(qc_runtime::Tensor { shape: t.shape, data })
}

/// Tensors by key, and safetensors metadata.
pub type Export = (
    IndexMap<String, qc_runtime::Tensor>,
    std::collections::HashMap<String, String>,
);

/// A stage's parameters for `qc export-weights`: PyTorch's keys with their values (a
/// quantized linear's pair as `<fc>._packed_params.weight` / `.bias`, since safetensors holds
/// no tuples), and metadata naming the model, the stage, and each integer tensor's scheme.
pub fn export(module: &Module) -> Result<Export, String> {
    let mut tensors = IndexMap::new();
    let mut meta = std::collections::HashMap::new();
    meta.insert("qc.model".to_string(), module.name.clone());
    meta.insert("qc.stage".to_string(), module.stage.to_string());
    for (key, p) in &module.params {
        let value = p
            .value
            .clone()
            .ok_or_else(|| format!("`{key}` has no value at stage {}", module.stage))?;
        if let Some(q) = &p.quant {
            let text = match q {
                ParamQuant::PerTensor(t) => format!(
                    "{{\"qscheme\": \"per_tensor_affine\", \"scale\": {}, \"zero_point\": {}, \"qmin\": {}, \"qmax\": {}}}",
                    t.scale, t.zero_point, t.qmin, t.qmax
                ),
                ParamQuant::PerChannel {
                    axis,
                    scales,
                    zero_points,
                    qmin,
                    qmax,
                } => format!(
                    "{{\"qscheme\": \"per_channel_affine\", \"axis\": {axis}, \"scales\": {scales:?}, \"zero_points\": {zero_points:?}, \"qmin\": {qmin}, \"qmax\": {qmax}}}"
                ),
            };
            meta.insert(format!("qc.quant.{key}"), text);
        }
        tensors.insert(key.clone(), value);
    }
    Ok((tensors, meta))
}

/// What became of one key of stage `float` at a later stage.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyFate {
    pub float_key: String,
    /// The later stage's keys made from it (empty: dropped).
    pub into: Vec<String>,
    /// Why, in words (`BN folded, quantized per channel`).
    pub reason: String,
}

/// The reason words of a transform chain (`quantize_per_channel∘fold_bn`), innermost first.
fn transform_words(transform: &str) -> String {
    let words: Vec<&str> = transform
        .split('∘')
        .rev()
        .map(|t| match t {
            "fold_bn" => "batch norm folded into the weight and bias",
            "quantize_per_channel" => "quantized per output channel",
            "quantize_per_tensor" => "quantized per tensor",
            "pack" => "packed (PyTorch's quantized Linear keeps weight and bias in `_packed_params`)",
            "qparams" => "scale and zero point from an observer",
            other => other,
        })
        .collect();
    words.join(", then ")
}

/// For every key of `float` (stage `float`), what it became in `later` and why; then the keys
/// `later` added that come from no float key (activation scales and zero points, observer
/// state), with their reason. The mapping is read from provenance, never from renames.
pub fn fates(float: &Module, later: &Module) -> (Vec<KeyFate>, Vec<KeyFate>) {
    let mut into: IndexMap<String, Vec<(String, String)>> = IndexMap::new();
    let mut added = vec![];
    for (key, p) in &later.params {
        match &p.provenance {
            Provenance::Derived { transform, from } => {
                let from_float: Vec<&String> = from.iter().filter(|k| float.params.contains_key(*k)).collect();
                if from_float.is_empty() {
                    added.push(KeyFate {
                        float_key: String::new(),
                        into: vec![key.clone()],
                        reason: format!("{} ({})", transform_words(transform), from.join(", ")),
                    });
                }
                for f in from_float {
                    into.entry(f.clone())
                        .or_default()
                        .push((key.clone(), transform.clone()));
                }
            }
            _ if float.params.contains_key(key) => {
                into.entry(key.clone()).or_default().push((key.clone(), String::new()));
            }
            other => added.push(KeyFate {
                float_key: String::new(),
                into: vec![key.clone()],
                reason: other.to_string(),
            }),
        }
    }
    let fates = float
        .params
        .keys()
        .map(|k| match into.get(k) {
            Some(targets) => {
                // Each step of every chain once, innermost first.
                let mut steps: Vec<&str> = vec![];
                for (_, t) in targets {
                    for step in t.split('∘').rev().filter(|s| !s.is_empty()) {
                        if !steps.contains(&step) {
                            steps.push(step);
                        }
                    }
                }
                let reason = if steps.is_empty() {
                    "kept as it is".to_string()
                } else {
                    steps.iter().map(|t| transform_words(t)).collect::<Vec<_>>().join(", ")
                };
                KeyFate {
                    float_key: k.clone(),
                    into: targets.iter().map(|(t, _)| t.clone()).collect(),
                    reason,
                }
            }
            None => KeyFate {
                float_key: k.clone(),
                into: vec![],
                reason: if k.ends_with(".num_batches_tracked") {
                    "dropped: the batch norm's step counter, unused once the batch norm is folded".into()
                } else {
                    format!("dropped: nothing at stage `{}` reads it", later.stage)
                },
            },
        })
        .collect();
    (fates, added)
}
