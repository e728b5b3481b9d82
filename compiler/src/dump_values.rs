//! What an IR dump shows of values: a tensor of at most [`INLINE_MAX`] elements inline, a longer
//! one as its content hash and range; quantization parameters with the real range they cover;
//! a key list with shared prefixes grouped (`conv1.{weight, bias}`).
//!
//! Inline values are exact (floats in shortest round-trip form, integers as integers); ranges and
//! per-channel scale summaries are approximate (3 significant digits) and sit beside the hash.

use qc_runtime::{Tensor, TensorData};

use crate::fmt::fmt_f64;
use crate::types::{ParamQuant, QuantParams};

/// Tensors (and per-channel scale lists) of at most this many elements print their values.
pub const INLINE_MAX: usize = 8;

/// Content hash of a tensor: xxh3 of dtype, shape and little-endian bytes, 16 hex digits.
pub fn content_hash(t: &Tensor) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(t.dtype().name().as_bytes());
    for d in &t.shape {
        h.update(&(*d as u64).to_le_bytes());
    }
    h.update(&t.to_le_bytes());
    format!("{:016x}", h.digest())
}

/// Shortest text that reads back as the same `f32` (Rust's `{}` for `f32`, `{:e}` below 1e-4
/// and from 1e7 on), always with a `.`, an exponent, or `inf`/`-inf`/`NaN`: `0.022305993`,
/// `1.0`, `2.5382533e-7`.
pub fn fmt_f32(v: f32) -> String {
    if v != 0.0 && v.is_finite() && !(1e-4..1e7).contains(&v.abs()) {
        return format!("{v:e}");
    }
    let s = format!("{v}");
    if v.is_finite() && !s.contains(['.', 'e', 'E']) {
        format!("{s}.0")
    } else {
        s
    }
}

/// A number to 3 significant digits, trailing zeros dropped: `0.00113`, `-2.16`, `1.5e-7`, `0`.
pub fn fmt_approx(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    if !v.is_finite() {
        return fmt_f64(v);
    }
    let exponent = v.abs().log10().floor() as i32;
    let text = if (-4..6).contains(&exponent) {
        let decimals = (2 - exponent).max(0) as usize;
        format!("{v:.decimals$}")
    } else {
        format!("{v:.2e}")
    };
    let (mantissa, exp) = match text.split_once('e') {
        Some((m, e)) => (m, Some(e)),
        None => (text.as_str(), None),
    };
    let mantissa = if mantissa.contains('.') {
        mantissa.trim_end_matches('0').trim_end_matches('.')
    } else {
        mantissa
    };
    match exp {
        Some(e) => format!("{mantissa}e{e}"),
        None => mantissa.to_string(),
    }
}

/// The elements of a tensor as exact text, and as numbers for a range.
fn elements(t: &Tensor) -> Vec<(String, f64)> {
    match &t.data {
        TensorData::F32(v) => v.iter().map(|&x| (fmt_f32(x), x as f64)).collect(),
        TensorData::I64(v) => v.iter().map(|&x| (x.to_string(), x as f64)).collect(),
        TensorData::I32(v) => v.iter().map(|&x| (x.to_string(), x as f64)).collect(),
        TensorData::I8(v) => v.iter().map(|&x| (x.to_string(), x as f64)).collect(),
        TensorData::U8(v) => v.iter().map(|&x| (x.to_string(), x as f64)).collect(),
    }
}

/// `MIN..MAX` of numbers (NaNs left out, and said), approximate unless `exact`.
fn range_text(values: impl Iterator<Item = f64>, exact: bool) -> String {
    let (mut lo, mut hi, mut nan) = (f64::INFINITY, f64::NEG_INFINITY, false);
    for v in values {
        if v.is_nan() {
            nan = true;
        } else {
            lo = lo.min(v);
            hi = hi.max(v);
        }
    }
    if lo > hi {
        return "NaN".into();
    }
    let num = |v: f64| if exact { format!("{v}") } else { fmt_approx(v) };
    let text = format!("{}..{}", num(lo), num(hi));
    if nan {
        format!("{text} and NaN")
    } else {
        text
    }
}

/// A parameter's or constant's value as a dump shows it: `= 0.022305993`, `= [0, 3]`, or for
/// more than [`INLINE_MAX`] elements `#<hash> range MIN..MAX` (integers exact, floats to 3
/// significant digits).
pub fn tensor_text(t: &Tensor) -> String {
    if t.len() <= INLINE_MAX && t.data_len() == t.len() {
        let items = elements(t);
        return match items.as_slice() {
            [(one, _)] => format!("= {one}"),
            _ => {
                let parts: Vec<&str> = items.iter().map(|(s, _)| s.as_str()).collect();
                format!("= [{}]", parts.join(", "))
            }
        };
    }
    let exact = !matches!(t.data, TensorData::F32(_));
    let range = range_text(elements(t).into_iter().map(|(_, v)| v), exact);
    format!("#{} range {range}", content_hash(t))
}

/// `!q(SCALE, ZERO_POINT, [QMIN, QMAX] = LO..HI)`: the scale exact, and the real range that the
/// integers cover, `scale * (q - zero_point)` for q = QMIN and QMAX, to 3 significant digits.
pub fn quant_text(q: &QuantParams) -> String {
    let real = |v: i32| q.scale as f64 * (v as f64 - q.zero_point as f64);
    format!(
        "!q({}, {}, [{}, {}] = {}..{})",
        fmt_f32(q.scale),
        q.zero_point,
        q.qmin,
        q.qmax,
        fmt_approx(real(q.qmin)),
        fmt_approx(real(q.qmax))
    )
}

/// An integer parameter's quantization: per tensor as [`quant_text`]; per channel
/// `!q(axis 0, scales [..], zero_point 0, [-128, 127])` with at most [`INLINE_MAX`] channels,
/// else `!q(axis 0, 16 scales 0.00113..0.00267 #<hash>, zero_point 0, [-128, 127])` (the hash
/// covers scales and zero points). Zero points print once when they are all equal.
pub fn param_quant_text(q: &ParamQuant) -> String {
    match q {
        ParamQuant::PerTensor(p) => quant_text(p),
        ParamQuant::PerChannel {
            axis,
            scales,
            zero_points,
            qmin,
            qmax,
        } => {
            let n = scales.len();
            let scales_text = if n <= INLINE_MAX {
                let parts: Vec<String> = scales.iter().map(|&s| fmt_f32(s)).collect();
                format!("scales [{}]", parts.join(", "))
            } else {
                let mut h = xxhash_rust::xxh3::Xxh3::new();
                for s in scales {
                    h.update(&s.to_le_bytes());
                }
                for z in zero_points {
                    h.update(&z.to_le_bytes());
                }
                let range = range_text(scales.iter().map(|&s| s as f64), false);
                format!("{n} scales {range} #{:016x}", h.digest())
            };
            let zero_text = match zero_points.first() {
                Some(z) if zero_points.iter().all(|x| x == z) => format!("zero_point {z}"),
                _ if zero_points.len() <= INLINE_MAX => {
                    let parts: Vec<String> = zero_points.iter().map(|z| z.to_string()).collect();
                    format!("zero_points [{}]", parts.join(", "))
                }
                _ => format!(
                    "zero_points {}",
                    range_text(zero_points.iter().map(|&z| z as f64), true)
                ),
            };
            format!("!q(axis {axis}, {scales_text}, {zero_text}, [{qmin}, {qmax}])")
        }
    }
}

/// Keys in order, runs that share everything up to their last `.` grouped:
/// `conv1.weight, conv1.bias, bn1.weight` → `conv1.{weight, bias}, bn1.weight`.
pub fn grouped_keys(keys: &[String]) -> String {
    let split = |k: &str| k.rsplit_once('.').map(|(p, s)| (p.to_string(), s.to_string()));
    let mut parts: Vec<String> = vec![];
    let mut i = 0;
    while i < keys.len() {
        let Some((prefix, first)) = split(&keys[i]) else {
            parts.push(keys[i].clone());
            i += 1;
            continue;
        };
        let mut suffixes = vec![first];
        let mut j = i + 1;
        while let Some((p, s)) = keys.get(j).and_then(|k| split(k)) {
            if p != prefix {
                break;
            }
            suffixes.push(s);
            j += 1;
        }
        if suffixes.len() == 1 {
            parts.push(keys[i].clone());
        } else {
            parts.push(format!("{prefix}.{{{}}}", suffixes.join(", ")));
        }
        i = j;
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_are_exact_inline_and_approximate_in_ranges() {
        assert_eq!(fmt_f32(0.022305993), "0.022305993");
        assert_eq!(fmt_f32(1.0), "1.0");
        assert_eq!(fmt_f32(f32::NEG_INFINITY), "-inf");
        assert_eq!(fmt_f32(2.5382533e-7), "2.5382533e-7");
        assert_eq!(fmt_f32(1e8), "1e8");
        for v in [2.5382533e-7f32, 0.0000102048025, 1e8, 0.0019708364, 3.0e38] {
            assert_eq!(fmt_f32(v).parse::<f32>(), Ok(v));
        }
        assert_eq!(fmt_approx(0.0011349), "0.00113");
        assert_eq!(fmt_approx(-2.1585), "-2.16");
        assert_eq!(fmt_approx(127.0), "127");
        assert_eq!(fmt_approx(0.5), "0.5");
        assert_eq!(fmt_approx(1.5e-7), "1.5e-7");
        assert_eq!(fmt_approx(123456789.0), "1.23e8");
    }

    #[test]
    fn short_tensors_inline_long_ones_hashed() {
        assert_eq!(tensor_text(&Tensor::f32(vec![1], vec![0.05])), "= 0.05");
        assert_eq!(tensor_text(&Tensor::f32(vec![], vec![f32::INFINITY])), "= inf");
        assert_eq!(tensor_text(&Tensor::i32(vec![2], vec![0, 3])), "= [0, 3]");
        let long = Tensor::i8(vec![9], vec![-127, 0, 1, 2, 3, 4, 5, 6, 127]);
        let text = tensor_text(&long);
        assert_eq!(text, format!("#{} range -127..127", content_hash(&long)));
        let floats = Tensor::f32(vec![9], vec![-0.5321, 0.0, 0.1, 0.2, f32::NAN, 0.3, 0.4, 0.5, 0.6114]);
        assert!(tensor_text(&floats).ends_with(" range -0.532..0.611 and NaN"));
    }

    #[test]
    fn quantization_shows_its_real_range() {
        let q = QuantParams {
            scale: 0.0019708364,
            zero_point: 56,
            qmin: 0,
            qmax: 127,
        };
        assert_eq!(quant_text(&q), "!q(0.0019708364, 56, [0, 127] = -0.11..0.14)");
        let pc = ParamQuant::PerChannel {
            axis: 0,
            scales: vec![0.5, 0.25],
            zero_points: vec![0, 0],
            qmin: -128,
            qmax: 127,
        };
        assert_eq!(
            param_quant_text(&pc),
            "!q(axis 0, scales [0.5, 0.25], zero_point 0, [-128, 127])"
        );
    }

    #[test]
    fn keys_group_by_prefix_in_order() {
        let keys: Vec<String> = ["conv1.weight", "conv1.bias", "bn1.weight", "x", "bn1.bias"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(grouped_keys(&keys), "conv1.{weight, bias}, bn1.weight, x, bn1.bias");
    }
}
