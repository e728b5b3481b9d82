//! Reference layout changes (NCHW ↔ NHWC, conv and linear weight orders, flatten) and
//! per-tensor quantize and dequantize, fused with a layout change or not.

use super::super::{check_len, check_range_u8, KernelError};
use crate::quant::{dequantize_per_tensor, quantize_per_tensor, QElem, QParams};

/// `[N, C, H, W]` → `[N, H, W, C]`. Also turns PyTorch's conv weights `[O, I, KH, KW]` into
/// `[O, KH, KW, I]` ([`conv_weight_oihw_to_ohwi`]).
pub fn nchw_to_nhwc<T: Copy>(x: &[T], [n, c, h, w]: [usize; 4], out: &mut [T]) -> Result<(), KernelError> {
    check_len("input", n * c * h * w, x.len())?;
    check_len("output", x.len(), out.len())?;
    for b in 0..n {
        for ch in 0..c {
            for y in 0..h {
                for xx in 0..w {
                    out[((b * h + y) * w + xx) * c + ch] = x[((b * c + ch) * h + y) * w + xx];
                }
            }
        }
    }
    Ok(())
}

/// `[N, H, W, C]` → `[N, C, H, W]`.
pub fn nhwc_to_nchw<T: Copy>(x: &[T], [n, h, w, c]: [usize; 4], out: &mut [T]) -> Result<(), KernelError> {
    check_len("input", n * h * w * c, x.len())?;
    check_len("output", x.len(), out.len())?;
    for b in 0..n {
        for y in 0..h {
            for xx in 0..w {
                for ch in 0..c {
                    out[((b * c + ch) * h + y) * w + xx] = x[((b * h + y) * w + xx) * c + ch];
                }
            }
        }
    }
    Ok(())
}

/// PyTorch's conv weight `[Cout, Cin/groups, KH, KW]` → qc's `[Cout, KH, KW, Cin/groups]`
/// (the same permutation as [`nchw_to_nhwc`]).
pub fn conv_weight_oihw_to_ohwi<T: Copy>(w: &[T], oihw: [usize; 4], out: &mut [T]) -> Result<(), KernelError> {
    nchw_to_nhwc(w, oihw, out)
}

/// Quantizes a float tensor to u8, layout unchanged (NHWC in, NHWC out):
/// [`quantize_per_tensor`].
pub fn quantize_u8(x: &[f32], p: &QParams, out: &mut [u8]) -> Result<(), KernelError> {
    Ok(quantize_per_tensor(x, p, out)?)
}

/// Dequantizes a u8 tensor, layout unchanged: [`dequantize_per_tensor`].
pub fn dequantize_u8(q: &[u8], p: &QParams, out: &mut [f32]) -> Result<(), KernelError> {
    Ok(dequantize_per_tensor(q, p, out)?)
}

/// Quantizes a PyTorch NCHW float tensor into qc's NHWC u8 layout: element for element
/// [`QParams::quantize`] (quant.rs's `quantize`), i.e. `quantize_u8(nchw_to_nhwc(x))` without the
/// intermediate buffer.
pub fn quantize_nchw_to_nhwc(
    x: &[f32],
    [n, c, h, w]: [usize; 4],
    p: &QParams,
    out: &mut [u8],
) -> Result<(), KernelError> {
    check_len("input", n * c * h * w, x.len())?;
    check_len("output", x.len(), out.len())?;
    check_range_u8("quantization", p.range().qmin(), p.range().qmax())?;
    for b in 0..n {
        for ch in 0..c {
            for y in 0..h {
                for xx in 0..w {
                    let v = x[((b * c + ch) * h + y) * w + xx];
                    out[((b * h + y) * w + xx) * c + ch] = u8::from_q(p.quantize(v));
                }
            }
        }
    }
    Ok(())
}

/// Dequantizes qc's NHWC u8 tensor into PyTorch's NCHW float layout ([`QParams::dequantize`]).
pub fn dequantize_nhwc_to_nchw(
    q: &[u8],
    [n, h, w, c]: [usize; 4],
    p: &QParams,
    out: &mut [f32],
) -> Result<(), KernelError> {
    check_len("input", n * h * w * c, q.len())?;
    check_len("output", q.len(), out.len())?;
    for b in 0..n {
        for y in 0..h {
            for xx in 0..w {
                for ch in 0..c {
                    let v = q[((b * h + y) * w + xx) * c + ch];
                    out[((b * c + ch) * h + y) * w + xx] = p.dequantize(v.to_q());
                }
            }
        }
    }
    Ok(())
}

/// PyTorch's `flatten(1)` order from NHWC data: `[N, H, W, C]` → `[N, C·H·W]` with features in
/// `(c, h, w)` order, which is [`nhwc_to_nchw`] (an NCHW tensor flattened is its memory). A plain
/// reshape of NHWC data would list features as `(h, w, c)`, not what a linear layer trained in
/// PyTorch expects (unless `H = W = 1`). For NLC `[N, L, C]` use `[N, 1, L, C]`.
pub fn flatten_nhwc_to_torch_order<T: Copy>(x: &[T], nhwc: [usize; 4], out: &mut [T]) -> Result<(), KernelError> {
    nhwc_to_nchw(x, nhwc, out)
}

/// The alternative to [`flatten_nhwc_to_torch_order`] at compile time: permutes the columns of a
/// linear weight `[M, C·H·W]` written for PyTorch's `(c, h, w)` feature order into `(h, w, c)`
/// order, so `qlinear(reshape(x_nhwc), w')` equals `qlinear(flatten_nhwc_to_torch_order(x), w)`
/// exactly (same products, same accumulation). `chw = [C, H, W]` of the flattened tensor.
pub fn linear_weight_torch_to_nhwc_flatten<T: Copy>(
    w: &[T],
    out_features: usize,
    [c, h, wd]: [usize; 3],
    out: &mut [T],
) -> Result<(), KernelError> {
    // Each row `[C, H, W]` → `[H, W, C]`: the NCHW → NHWC permutation with N = out_features.
    nchw_to_nhwc(w, [out_features, c, h, wd], out)
}
