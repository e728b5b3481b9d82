//! From the unpickled value to the state dict: keys in order, each value a `PthValue`.

use super::*;

pub(super) type KeyFail = (Option<String>, String);

pub(super) fn to_state_dict(root: Value) -> Result<IndexMap<String, PthValue>, KeyFail> {
    let items = match root {
        Value::Dict(items, _) => items,
        Value::Invalid(m) => {
            return Err((
                None,
                format!(
                    "{m}; the file is not a state_dict (was it `torch.save(model)`? save `model.state_dict()` instead)"
                ),
            ))
        }
        other => return Err((None, format!("the file holds {}, not a state_dict", other.kind()))),
    };
    // A training checkpoint ({'epoch': 3, 'model': {...}, 'optimizer': {...}}): name its dicts.
    let nested: Vec<&str> = items
        .iter()
        .filter_map(|(k, v)| match (k, v) {
            (Value::Str(k), Value::Dict(..)) => Some(&**k),
            _ => None,
        })
        .collect();
    if let Some(first) = nested.first() {
        let names: Vec<String> = nested.iter().take(5).map(|k| format!("`{}`", clip(k))).collect();
        return Err((
            None,
            format!(
                "it holds dicts under {} (a training checkpoint?), not one flat state_dict; save the model's \
                 state_dict on its own, e.g. `torch.save(checkpoint['{}'], path)`",
                names.join(", "),
                clip(first)
            ),
        ));
    }
    let mut out = IndexMap::with_capacity(items.len());
    for (k, v) in items {
        let key = match k {
            Value::Str(s) => s.to_string(),
            other => return Err((None, format!("a state_dict key is {}, not a string", other.kind()))),
        };
        let value = entry(v).map_err(|m| (Some(clip(&key)), m))?;
        // Python's dict keeps the first position of a key and its last value.
        out.insert(key, value);
    }
    Ok(out)
}

pub(super) fn entry(v: Value) -> Result<PthValue, String> {
    Ok(match v {
        Value::Tensor(raw) => {
            if raw.stype.is_quantized() {
                return Err("a quantized storage outside a quantized tensor".into());
            }
            PthValue::Tensor(raw.to_tensor())
        }
        Value::QTensor(q) => PthValue::Quantized(qtensor(&q)),
        Value::None => PthValue::None,
        Value::Global(g) if is_dtype_name(&g) => PthValue::DType(g.to_string()),
        Value::Tuple(items, _) => match items.as_slice() {
            [Value::QTensor(w), bias] => PthValue::Packed {
                weight: qtensor(w),
                bias: match bias {
                    Value::None => None,
                    Value::Tensor(b) if !b.stype.is_quantized() => Some(b.to_tensor()),
                    Value::Invalid(m) => return Err(m.to_string()),
                    other => return Err(format!("packed parameters with a bias that is {}", other.kind())),
                },
            },
            [Value::Invalid(m), ..] | [_, Value::Invalid(m)] => return Err(m.to_string()),
            _ => {
                return Err(format!(
                    "a tuple of {} values, not packed parameters (quantized weight, bias)",
                    items.len()
                ))
            }
        },
        Value::Invalid(m) => return Err(m.to_string()),
        other => return Err(format!("{}, not a tensor", other.kind())),
    })
}

pub(super) fn qtensor(q: &RawQ) -> QTensor {
    QTensor {
        int_repr: q.int_repr.to_tensor(),
        scheme: q.scheme.clone(),
    }
}
