//! qc's CPU int8 kernels: the parameter types and window geometry every kernel shares, and the
//! scalar reference implementation ([`reference`](mod@reference)) that every SIMD kernel must match
//! **bit for bit**, and the optimised kernels: [`fast`] dispatches at run time (or as `QC_ISA`
//! says) to [`avx2`] (x86_64 with AVX2), to the `vpdpbusd` convolution and linear kernels of
//! [`vnni`] (AVX-VNNI, AVX-512 VNNI), or to the `tdpbusd` tile kernels of [`amx`] (AMX-INT8, which
//! share [`vnni`]'s weight pack, padded input and epilogue), or falls back to the reference. The
//! VNNI and AMX drivers are generic over their instructions, and their portable emulations
//! (`PackedConv::emulated_vnni`, `PackedConv::emulated_amx`) are tested bit for bit on every CPU.
//!
//! # Numerics
//!
//! All rounding, requantization and saturation goes through `crate::quant` (docs/numerics.md);
//! nothing here re-derives a formula. Accumulation is [`quant::dot_acc`](crate::quant::dot_acc)
//! (wrapping `i32`, `bias + Σ (x - zp_x) · w`), the epilogue is
//! [`Requant::apply`](crate::quant::Requant::apply) per output channel, average pooling is
//! [`quant::avg_pool_out`](crate::quant::avg_pool_out), addition is
//! [`QAdd::apply`](crate::quant::QAdd::apply). Kernels refuse (with [`KernelError`]) parameters for
//! which [`quant::accumulator_fits`](crate::quant::accumulator_fits) does not hold, so the
//! accumulator never wraps.
//!
//! # Layouts
//!
//! | tensor | layout | elements |
//! |---|---|---|
//! | 2-D activation | `[N, H, W, C]` (NHWC) | `u8`, one scale and zero point per tensor |
//! | 1-D activation | `[N, L, C]` (NLC) = NHWC with `H = 1` | `u8`, per tensor |
//! | conv2d weight | `[Cout, KH, KW, Cin/groups]` ("OHWI") | `i8`, symmetric per output channel (zp 0) |
//! | conv1d weight | `[Cout, K, Cin/groups]` = OHWI with `KH = 1` | `i8`, per output channel |
//! | linear input / weight / output | `[N, K]` / `[M, K]` (PyTorch's `[out, in]`) / `[N, M]` | `u8` / `i8` / `u8` |
//! | bias | `[Cout]` | `i32`, scale `s_in · s_w[c]`, zp 0 ([`quant::quantize_bias`](crate::quant::quantize_bias), by the caller) |
//! | global average pool output | `[N, C]` (= NHWC `[N, 1, 1, C]`) | `u8`, the input's parameters |
//!
//! PyTorch's conv weight `[Cout, Cin/groups, KH, KW]` (OIHW) becomes OHWI with
//! [`reference::conv_weight_oihw_to_ohwi`]. Why OHWI: for one output channel and one kernel tap
//! `(kh, kw)` the `Cin/groups` weights are contiguous, and so are the matching input channels of an
//! NHWC pixel, so a convolution is a sum of contiguous dot products (`dot_acc` per tap), the shape
//! a VNNI/AMX packer starts from. Per-channel weight quantization
//! ([`quant::quantize_per_channel`](crate::quant::quantize_per_channel) with `inner = KH·KW·Cin/groups`)
//! is the same in both layouts because `Cout` is outermost.
//!
//! Groups follow PyTorch: group `g` owns output channels `[g·Cout/G, (g+1)·Cout/G)` and reads input
//! channels `[g·Cin/G, (g+1)·Cin/G)`. Depthwise is `groups = Cin` (`Cout = Cin · multiplier`).
//!
//! 1-D ops are the 2-D ops with `H = 1`, `KH = 1`, no padding on H: an NLC tensor *is* an NHWC
//! tensor with `H = 1` in memory, and a `[Cout, K, Cin/g]` weight is an OHWI weight with `KH = 1`,
//! so no data moves ([`Conv2dGeom::conv1d`], [`Pool2dGeom::pool1d`]).
//!
//! Flatten: a flattened NHWC tensor lists features as `(h, w, c)`, PyTorch's NCHW flatten as
//! `(c, h, w)`. A linear layer after a flatten was trained on PyTorch's order, so either the data is
//! put into that order ([`reference::flatten_nhwc_to_torch_order`]) or, equivalently and for free at
//! run time, the linear weight's columns are permuted once
//! ([`reference::linear_weight_torch_to_nhwc_flatten`]). When `H = W = 1` both orders coincide and
//! flatten / reshape of NHWC data is the identity.

pub mod amx;
#[cfg(target_arch = "x86_64")]
pub mod avx2;
pub mod fast;
pub mod reference;
pub mod vnni;

use crate::quant::{requant_multiplier, QParams, QRange, QuantError, Requant, RequantRule};

/// Errors of kernel parameter checks. Kernels check every length and parameter before computing
/// and never panic on bad input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KernelError {
    #[error("{what} has {got} elements, expected {expected}")]
    Length {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("bad geometry: {0}")]
    Geometry(String),
    #[error("{what} zero point {zero_point} is not a u8 value")]
    ZeroPointNotU8 { what: &'static str, zero_point: i32 },
    #[error("{what} range [{qmin}, {qmax}] does not fit u8")]
    RangeNotU8 { what: &'static str, qmin: i32, qmax: i32 },
    #[error("output channel {channel}: an int32 accumulator over {k} terms with bias {bias} may overflow")]
    AccumulatorMayOverflow { channel: usize, k: usize, bias: i32 },
    #[error(transparent)]
    Quant(#[from] QuantError),
}

pub(crate) fn check_len(what: &'static str, expected: usize, got: usize) -> Result<(), KernelError> {
    if expected == got {
        Ok(())
    } else {
        Err(KernelError::Length { what, expected, got })
    }
}

pub(crate) fn check_zp_u8(what: &'static str, zero_point: i32) -> Result<(), KernelError> {
    if (0..=255).contains(&zero_point) {
        Ok(())
    } else {
        Err(KernelError::ZeroPointNotU8 { what, zero_point })
    }
}

pub(crate) fn check_range_u8(what: &'static str, qmin: i32, qmax: i32) -> Result<(), KernelError> {
    if 0 <= qmin && qmax <= 255 {
        Ok(())
    } else {
        Err(KernelError::RangeNotU8 { what, qmin, qmax })
    }
}

fn geometry(msg: String) -> KernelError {
    KernelError::Geometry(msg)
}

// ---------------------------------------------------------------------------------------------
// Activation fused into the requantization
// ---------------------------------------------------------------------------------------------

/// An activation fused into a conv/linear epilogue as a narrower output range `[qmin, qmax]`.
///
/// Because [`quant::quantize`](crate::quant::quantize) is monotonic,
/// `quantize(clamp(y, lo, hi)) = clamp(quantize(y), quantize(lo), quantize(hi))`: clamping the
/// integer output to the quantized bounds is exactly the fake-quant of the clamped float.
/// - `Relu`: `qmin = max(qmin, zp)` (= `quantize(0)`), [`Requant::with_relu`].
/// - `Relu6`: additionally `qmax = quantize(6.0) = min(qmax, zp + rint(6 · (1/s_out)))` with
///   quant.rs's `quantize` (so for u8: `min(255, zp + round(6/s))`, `round` being `rint` of the
///   f32 product with the inverse scale, exactly as the fake-quant computes it).
/// - `Clamp { min, max }` (PyTorch's `hardtanh`/`clamp`): `qmin = max(qmin, quantize(min))`,
///   `qmax = min(qmax, quantize(max))`; `Clamp { min: 0, max: 6 }` gives the bits of `Relu6`.
///   Needs `min <= max`, neither NaN ([`Activation::check`]).
#[derive(Clone, Copy, Debug, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    #[default]
    None,
    Relu,
    Relu6,
    Clamp {
        min: f32,
        max: f32,
    },
}

impl Activation {
    /// `Ok` unless a `Clamp` has a NaN bound or `min > max`.
    pub fn check(self) -> Result<(), KernelError> {
        match self {
            Activation::Clamp { min, max } if min.partial_cmp(&max).is_none_or(|o| o.is_gt()) => {
                Err(geometry(format!("clamp bounds [{min}, {max}] are NaN or inverted")))
            }
            _ => Ok(()),
        }
    }

    /// The integer output range `[qmin, qmax]` of this activation on a tensor quantized with
    /// `output`: `output`'s range narrowed as described on [`Activation`].
    pub fn bounds(self, output: &QParams) -> (i32, i32) {
        let (lo, hi) = (output.range().qmin(), output.range().qmax());
        match self {
            Activation::None => (lo, hi),
            Activation::Relu => (lo.max(output.zero_point()), hi),
            Activation::Relu6 => (lo.max(output.zero_point()), hi.min(output.quantize(6.0))),
            Activation::Clamp { min, max } => (lo.max(output.quantize(min)), hi.min(output.quantize(max))),
        }
    }

    /// `r` (built for `output`) with this activation's clamp fused in.
    pub fn fuse(self, r: Requant, output: &QParams) -> Requant {
        match self {
            Activation::None => r,
            Activation::Relu => r.with_relu(),
            Activation::Relu6 | Activation::Clamp { .. } => {
                let (lo, hi) = self.bounds(output);
                Requant {
                    qmin: r.qmin.max(lo),
                    qmax: r.qmax.min(hi),
                    ..r
                }
            }
        }
    }
}

/// `[alo, ahi]` for `q`, the accumulator clamp of the SIMD epilogues (`avx2::requant8`,
/// [`vnni::Requant16`]): `ahi` the least `a` with `q`'s unclamped
/// `mul_shift_round(a) + zp >= qmax` (`i32::MAX` if none), `alo` the greatest with `<= qmin`
/// (`i32::MIN` if none); both by bisection on the exact `i64` formula, which is monotonic in `a`.
pub(crate) fn acc_clamp(q: &Requant) -> (i32, i32) {
    // `Requant::from_real`'s invariants (as `mul_shift_round` asserts): the formula is then
    // non-decreasing in `a` (the float rule's too: a positive multiplier, monotonic roundings).
    debug_assert!(q.multiplier >= 0 && (1..=62).contains(&q.shift));
    let f = |a: i64| q.unclamped(a as i32);
    let (qmin, qmax) = (q.qmin as i64, q.qmax as i64);
    let ahi = if f(i32::MAX as i64) < qmax {
        i32::MAX
    } else {
        // Least a with f(a) >= qmax, in [i32::MIN, i32::MAX].
        let (mut lo, mut hi) = (i32::MIN as i64, i32::MAX as i64);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if f(mid) >= qmax {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        lo as i32
    };
    let alo = if f(i32::MIN as i64) > qmin {
        i32::MIN
    } else {
        // Greatest a with f(a) <= qmin.
        let (mut lo, mut hi) = (i32::MIN as i64, i32::MAX as i64);
        while lo < hi {
            let mid = lo + (hi - lo + 1) / 2;
            if f(mid) <= qmin {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        lo as i32
    };
    (alo, ahi)
}

/// One [`Requant`] per output channel `c` by `rule` ([`Requant::from_scales`] of `s_in`,
/// `s_w[c]`, `s_out`), the output's zero point and range, `act` fused.
pub fn requant_per_channel(
    input: &QParams,
    weight_scales: &[f32],
    output: &QParams,
    act: Activation,
    rule: RequantRule,
) -> Result<Vec<Requant>, KernelError> {
    weight_scales
        .iter()
        .map(|&s_w| {
            let r = Requant::from_scales(
                rule,
                input.scale(),
                s_w,
                output.scale(),
                output.zero_point(),
                output.range(),
            )?;
            Ok(act.fuse(r, output))
        })
        .collect()
}

/// A conv/linear layer's bias as the program stores it: `i32` at scale `s_in · s_w[c]`, added to
/// the accumulator; or, with [`RequantRule::Float`] only, the real `f32` bias, added to
/// `f32(acc)` before the multiply (`requantize: float_bias`, PyTorch's fbgemm).
#[derive(Clone, Copy, Debug)]
pub enum LayerBias<'a> {
    Int(&'a [i32]),
    Float(&'a [f32]),
}

impl<'a> LayerBias<'a> {
    /// A bias constant's view: `i32` or `f32` data, else `None` (a malformed program).
    pub fn of(t: &'a crate::tensor::Tensor) -> Option<LayerBias<'a>> {
        t.as_i32()
            .map(LayerBias::Int)
            .or_else(|| t.as_f32().map(LayerBias::Float))
    }
}

/// [`requant_per_channel`] with the layer's bias placed: a [`LayerBias::Float`] goes into each
/// channel's [`Requant::float_bias`] ([`Requant::with_float_bias`]); the returned `i32` bias (the
/// [`LayerBias::Int`], else none) is what the kernels add to the accumulator. Errors for a bias
/// whose length is not the channel count, and for a float bias with the integer rule.
pub fn requant_with_bias<'a>(
    input: &QParams,
    weight_scales: &[f32],
    output: &QParams,
    act: Activation,
    rule: RequantRule,
    bias: Option<LayerBias<'a>>,
) -> Result<(Vec<Requant>, Option<&'a [i32]>), KernelError> {
    let requant = requant_per_channel(input, weight_scales, output, act, rule)?;
    match bias {
        None => Ok((requant, None)),
        Some(LayerBias::Int(b)) => {
            check_len("bias", requant.len(), b.len())?;
            Ok((requant, Some(b)))
        }
        Some(LayerBias::Float(b)) => {
            check_len("bias", requant.len(), b.len())?;
            let requant = requant
                .into_iter()
                .zip(b.iter().zip(weight_scales))
                .map(|(r, (&b, &s_w))| r.with_float_bias(b, input.scale(), s_w))
                .collect::<Result<_, _>>()?;
            Ok((requant, None))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Window geometry
// ---------------------------------------------------------------------------------------------

/// A sliding window along one spatial axis (PyTorch's `kernel_size`, `stride`, `padding`,
/// `dilation` for that axis). Padding is symmetric, as in PyTorch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Axis {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
}

impl Axis {
    pub fn new(kernel: usize, stride: usize, padding: usize, dilation: usize) -> Axis {
        Axis {
            kernel,
            stride,
            padding,
            dilation,
        }
    }

    /// Extent of the dilated kernel, `dilation · (kernel - 1) + 1`.
    pub fn span(&self) -> usize {
        self.dilation * (self.kernel - 1) + 1
    }

    /// PyTorch's output length (`pooling_output_shape`; convolutions use `ceil_mode = false`):
    /// ```text
    /// out = floor((in + 2p - span + (ceil_mode ? stride - 1 : 0)) / stride) + 1
    /// ceil_mode: out -= 1 if (out - 1) · stride >= in + p   (the last window must start inside
    ///            the input or the left padding)
    /// ```
    /// An error when a parameter is zero or the output would be empty.
    pub fn output_len(&self, input: usize, ceil_mode: bool) -> Result<usize, KernelError> {
        if self.kernel == 0 || self.stride == 0 || self.dilation == 0 || input == 0 {
            return Err(geometry(format!("zero-sized input or window parameter in {self:?}")));
        }
        crate::program::window_out(input, self.kernel, self.stride, self.padding, self.dilation, ceil_mode).ok_or_else(
            || {
                geometry(format!(
                    "window {self:?} does not fit an input of length {input} (with its padding)"
                ))
            },
        )
    }

    /// First input index of output `o`'s window, `o · stride - padding` (negative in the padding).
    pub fn window_start(&self, o: usize) -> i64 {
        (o * self.stride) as i64 - self.padding as i64
    }

    /// The input index read by tap `t` of output `o`'s window, `None` when it lies in the padding
    /// (or, with `ceil_mode`, past it).
    #[inline]
    pub fn input_index(&self, o: usize, t: usize, input: usize) -> Option<usize> {
        let i = self.window_start(o) + (t * self.dilation) as i64;
        (0..input as i64).contains(&i).then_some(i as usize)
    }

    /// Average pooling bounds of output `o`'s window (dilation 1), PyTorch's rule:
    /// `start = o·stride - p`, `end = min(start + kernel, in + p)`; `padded = end - start` counts
    /// the padding but not the part of a `ceil_mode` window beyond it; `[lo, hi)` is the window
    /// clipped to the real input.
    pub fn avg_bounds(&self, o: usize, input: usize) -> (usize, usize, usize) {
        let start = self.window_start(o);
        let end = (start + self.kernel as i64).min((input + self.padding) as i64);
        let lo = start.max(0);
        let hi = end.min(input as i64);
        (lo as usize, hi.max(lo) as usize, (end - start) as usize)
    }

    /// Pooling checks: PyTorch's `padding <= kernel / 2`, and (max pooling) every window holds at
    /// least one real input element.
    fn check_pool(&self, input: usize, out: usize) -> Result<(), KernelError> {
        if 2 * self.padding > self.kernel {
            return Err(geometry(format!(
                "pooling padding must be at most half the kernel: {self:?}"
            )));
        }
        for o in 0..out {
            if (0..self.kernel).all(|t| self.input_index(o, t, input).is_none()) {
                return Err(geometry(format!(
                    "window {o} of {self:?} over an input of length {input} holds no input element"
                )));
            }
        }
        Ok(())
    }
}

/// Shape of a 2-D convolution over NHWC input with OHWI weights (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv2dGeom {
    pub batch: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub in_c: usize,
    pub out_c: usize,
    pub h: Axis,
    pub w: Axis,
    pub groups: usize,
}

impl Conv2dGeom {
    /// A 1-D convolution over NLC input `[batch, len, in_c]` with weights `[out_c, K, in_c/groups]`:
    /// the 2-D convolution with `H = 1` and a `1`-tap, unpadded H axis (same memory layouts).
    pub fn conv1d(batch: usize, len: usize, in_c: usize, out_c: usize, axis: Axis, groups: usize) -> Conv2dGeom {
        Conv2dGeom {
            batch,
            in_h: 1,
            in_w: len,
            in_c,
            out_c,
            h: Axis::new(1, 1, 0, 1),
            w: axis,
            groups,
        }
    }

    /// Whether this is a 1-D convolution in the sense of [`Conv2dGeom::conv1d`].
    pub fn is_1d(&self) -> bool {
        self.in_h == 1 && self.h.kernel == 1 && self.h.padding == 0
    }

    /// Checks the geometry; returns `[out_h, out_w]`.
    pub fn out_hw(&self) -> Result<[usize; 2], KernelError> {
        let g = self.groups;
        // `checked_rem` is `None` for `g == 0` (and `is_multiple_of` needs Rust 1.87; MSRV was 1.85).
        if self.in_c == 0
            || self.out_c == 0
            || self.in_c.checked_rem(g) != Some(0)
            || self.out_c.checked_rem(g) != Some(0)
        {
            return Err(geometry(format!(
                "groups {g} must divide in_c {} and out_c {} (all nonzero)",
                self.in_c, self.out_c
            )));
        }
        Ok([
            self.h.output_len(self.in_h, false)?,
            self.w.output_len(self.in_w, false)?,
        ])
    }

    /// Reduction length per output: `KH · KW · Cin/groups`.
    pub fn reduction_len(&self) -> usize {
        self.h.kernel * self.w.kernel * (self.in_c / self.groups.max(1))
    }
    pub fn input_len(&self) -> usize {
        self.batch * self.in_h * self.in_w * self.in_c
    }
    pub fn weight_len(&self) -> usize {
        self.out_c * self.reduction_len()
    }
    pub fn output_len(&self) -> Result<usize, KernelError> {
        let [oh, ow] = self.out_hw()?;
        Ok(self.batch * oh * ow * self.out_c)
    }
}

/// Checks the per-output-channel epilogue shared by conv and linear: `requant.len() == channels`,
/// u8 outputs, bias length, and [`quant::accumulator_fits`](crate::quant::accumulator_fits) for
/// `k` terms of u8 (any zero point) × i8 plus each channel's bias.
pub fn check_epilogue(
    channels: usize,
    k: usize,
    input_zero_point: i32,
    requant: &[Requant],
    bias: Option<&[i32]>,
) -> Result<(), KernelError> {
    check_zp_u8("input", input_zero_point)?;
    check_len("requant", channels, requant.len())?;
    for r in requant {
        check_range_u8("output", r.qmin, r.qmax)?;
    }
    if let Some(b) = bias {
        check_len("bias", channels, b.len())?;
    }
    for c in 0..channels {
        let b = bias.map_or(0, |b| b[c]);
        if !crate::quant::accumulator_fits(k as u64, QRange::U8, input_zero_point, QRange::I8, b) {
            return Err(KernelError::AccumulatorMayOverflow { channel: c, k, bias: b });
        }
    }
    Ok(())
}

/// Parameters of a quantized 2-D (or, via [`Conv2dGeom::conv1d`], 1-D) convolution.
#[derive(Clone, Debug, PartialEq)]
pub struct QConv2d {
    pub geom: Conv2dGeom,
    /// The input's zero point (also the padding value: real 0).
    pub input_zero_point: i32,
    /// One per output channel, activation fused ([`requant_per_channel`]).
    pub requant: Vec<Requant>,
}

impl QConv2d {
    /// `weight_scales[c]` is output channel `c`'s symmetric weight scale.
    pub fn new(
        geom: Conv2dGeom,
        input: &QParams,
        weight_scales: &[f32],
        output: &QParams,
        act: Activation,
        rule: RequantRule,
    ) -> Result<QConv2d, KernelError> {
        check_len("weight scales", geom.out_c, weight_scales.len())?;
        Ok(QConv2d {
            geom,
            input_zero_point: input.zero_point(),
            requant: requant_per_channel(input, weight_scales, output, act, rule)?,
        })
    }
}

/// Parameters of a quantized linear layer `[N, K] u8 × [M, K] i8 → [N, M] u8`.
#[derive(Clone, Debug, PartialEq)]
pub struct QLinear {
    pub batch: usize,
    pub in_features: usize,
    pub out_features: usize,
    pub input_zero_point: i32,
    /// One per output feature, activation fused ([`requant_per_channel`]).
    pub requant: Vec<Requant>,
}

impl QLinear {
    pub fn new(
        batch: usize,
        in_features: usize,
        input: &QParams,
        weight_scales: &[f32],
        output: &QParams,
        act: Activation,
        rule: RequantRule,
    ) -> Result<QLinear, KernelError> {
        Ok(QLinear {
            batch,
            in_features,
            out_features: weight_scales.len(),
            input_zero_point: input.zero_point(),
            requant: requant_per_channel(input, weight_scales, output, act, rule)?,
        })
    }
}

/// Shape of a 2-D pooling window over NHWC input `[batch, in_h, in_w, channels]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pool2dGeom {
    pub batch: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub channels: usize,
    pub h: Axis,
    pub w: Axis,
    pub ceil_mode: bool,
}

impl Pool2dGeom {
    /// 1-D pooling over NLC `[batch, len, channels]`: `H = 1`, one tap, no padding on H.
    pub fn pool1d(batch: usize, len: usize, channels: usize, axis: Axis, ceil_mode: bool) -> Pool2dGeom {
        Pool2dGeom {
            batch,
            in_h: 1,
            in_w: len,
            channels,
            h: Axis::new(1, 1, 0, 1),
            w: axis,
            ceil_mode,
        }
    }

    pub fn is_1d(&self) -> bool {
        self.in_h == 1 && self.h.kernel == 1 && self.h.padding == 0
    }

    /// Checks the geometry (PyTorch's pooling rules, and no window without an input element);
    /// returns `[out_h, out_w]`.
    pub fn out_hw(&self) -> Result<[usize; 2], KernelError> {
        if self.channels == 0 {
            return Err(geometry("pooling over zero channels".into()));
        }
        let oh = self.h.output_len(self.in_h, self.ceil_mode)?;
        let ow = self.w.output_len(self.in_w, self.ceil_mode)?;
        self.h.check_pool(self.in_h, oh)?;
        self.w.check_pool(self.in_w, ow)?;
        Ok([oh, ow])
    }

    pub fn input_len(&self) -> usize {
        self.batch * self.in_h * self.in_w * self.channels
    }
    pub fn output_len(&self) -> Result<usize, KernelError> {
        let [oh, ow] = self.out_hw()?;
        Ok(self.batch * oh * ow * self.channels)
    }
}

/// Parameters of a quantized average pool (PyTorch `avg_pool2d`, no `divisor_override`). The
/// output keeps the input's scale, zero point and range (as PyTorch's quantized `avg_pool2d`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QAvgPool2d {
    /// `dilation` must be 1 on both axes (PyTorch's `avg_pool2d` has none).
    pub geom: Pool2dGeom,
    pub count_include_pad: bool,
    pub zero_point: i32,
    pub range: QRange,
}

impl QAvgPool2d {
    pub fn new(geom: Pool2dGeom, count_include_pad: bool, input: &QParams) -> QAvgPool2d {
        QAvgPool2d {
            geom,
            count_include_pad,
            zero_point: input.zero_point(),
            range: input.range(),
        }
    }
}

/// Parameters of a quantized global average pool: `[batch, spatial, channels]` → `[batch, channels]`
/// where `spatial = H·W` (NHWC) or `L` (NLC). Output keeps the input's parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QGlobalAvgPool {
    pub batch: usize,
    pub spatial: usize,
    pub channels: usize,
    pub zero_point: i32,
    pub range: QRange,
}

impl QGlobalAvgPool {
    pub fn new(batch: usize, spatial: usize, channels: usize, input: &QParams) -> QGlobalAvgPool {
        QGlobalAvgPool {
            batch,
            spatial,
            channels,
            zero_point: input.zero_point(),
            range: input.range(),
        }
    }
}

/// Parameters of a quantized adaptive average pool over NHWC: `[batch, in_h, in_w, channels]` →
/// `[batch, out_h, out_w, channels]` (1-D: `in_h = out_h = 1`). Output keeps the input's parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QAdaptiveAvgPool2d {
    pub batch: usize,
    pub in_hw: [usize; 2],
    pub out_hw: [usize; 2],
    pub channels: usize,
    pub zero_point: i32,
    pub range: QRange,
}

impl QAdaptiveAvgPool2d {
    pub fn new(
        batch: usize,
        in_hw: [usize; 2],
        out_hw: [usize; 2],
        channels: usize,
        input: &QParams,
    ) -> QAdaptiveAvgPool2d {
        QAdaptiveAvgPool2d {
            batch,
            in_hw,
            out_hw,
            channels,
            zero_point: input.zero_point(),
            range: input.range(),
        }
    }
}

/// One input of a channel concatenation: its channel count and how its codes are moved to the
/// output's parameters, `out = requant.apply(q - input_zero_point)` with multiplier `s_i / s_out`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConcatPart {
    pub channels: usize,
    pub input_zero_point: i32,
    pub requant: Requant,
}

impl ConcatPart {
    /// Multiplier `s_i / s_out` as [`requant_multiplier`]`(s_i, 1.0, s_out)` (the same f64
    /// expression), output zero point and range. Equal parameters give multiplier 1 (`m = 2^30`,
    /// `shift = 30`), which [`Requant::apply`] maps to the identity: a plain copy.
    pub fn new(channels: usize, input: &QParams, output: &QParams) -> Result<ConcatPart, KernelError> {
        let m = requant_multiplier(input.scale(), 1.0, output.scale());
        Ok(ConcatPart {
            channels,
            input_zero_point: input.zero_point(),
            requant: Requant::from_real(m, output.zero_point(), output.range())?,
        })
    }
}

/// Parameters of a concatenation along the last (channel) axis: every input is `[outer, C_i]`
/// (`outer = N·H·W` for NHWC, `N·L` for NLC), the output `[outer, Σ C_i]`.
#[derive(Clone, Debug, PartialEq)]
pub struct QConcat {
    pub outer: usize,
    pub parts: Vec<ConcatPart>,
}

impl QConcat {
    pub fn out_channels(&self) -> usize {
        self.parts.iter().map(|p| p.channels).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out_len(k: usize, s: usize, p: usize, d: usize, input: usize, ceil: bool) -> Option<usize> {
        Axis::new(k, s, p, d).output_len(input, ceil).ok()
    }

    #[test]
    fn output_lengths_match_pytorch() {
        // floor((in + 2p - span) / s) + 1
        assert_eq!(out_len(3, 1, 0, 1, 5, false), Some(3));
        assert_eq!(out_len(3, 1, 1, 1, 5, false), Some(5));
        assert_eq!(out_len(3, 2, 1, 1, 7, false), Some(4)); // (7+2-3)/2+1
        assert_eq!(out_len(3, 1, 0, 2, 5, false), Some(1)); // span 5
        assert_eq!(out_len(3, 1, 0, 2, 4, false), None); // span 5 > 4
        assert_eq!(out_len(2, 2, 0, 1, 5, false), Some(2));
        // ceil_mode: 5 with k2 s2 → ceil(3/2)+1 = 3 (last window [4, 6) starts inside).
        assert_eq!(out_len(2, 2, 0, 1, 5, true), Some(3));
        assert_eq!(out_len(2, 2, 0, 1, 4, true), Some(2)); // exact fit: no extra window
                                                           // k3 s2 p1 on 6: floor 3; ceil: (6+2-3+1)/2+1 = 4, last start 3·2-1 = 5 < 6 → 4.
        assert_eq!(out_len(3, 2, 1, 1, 6, false), Some(3));
        assert_eq!(out_len(3, 2, 1, 1, 6, true), Some(4));
        // k2 s2 p1 on 4: (4+2-2+1)/2+1 = 3, (3-1)·2 = 4 < 4+1 → stays 3.
        assert_eq!(out_len(2, 2, 1, 1, 4, true), Some(3));
        // k3 s3 p1 on 4: (4+2-3+2)/3+1 = 2, (2-1)·3 = 3 < 5 → 2. On 3: (3+2-3+2)/3+1 = 2,
        // last start 3-1 = 2 < 3+1 → 2. k2 s3 p1 on 3: (3+2-2+2)/3+1 = 2, last start 3 >= 4? no → 2.
        assert_eq!(out_len(3, 3, 1, 1, 4, true), Some(2));
        assert_eq!(out_len(3, 3, 1, 1, 3, true), Some(2));
        // The dropped window: k2 s2 p1 on 5: (5+2-2+1)/2+1 = 4, but (4-1)·2 = 6 >= 5+1: the 4th
        // window would start at 5, wholly in the right padding → 3 (floor mode: (5+2-2)/2+1 = 3).
        assert_eq!(out_len(2, 2, 1, 1, 5, true), Some(3));
        // k3 s3 p1 on 5: (5+2-3+2)/3+1 = 3, (3-1)·3 = 6 >= 6 → 2.
        assert_eq!(out_len(3, 3, 1, 1, 5, true), Some(2));
        // Window larger than the input is allowed in ceil_mode (PyTorch): k3 s2 on 2 → 1.
        assert_eq!(out_len(3, 2, 0, 1, 2, true), Some(1));
        assert_eq!(out_len(3, 2, 0, 1, 2, false), None);
        assert_eq!(out_len(0, 1, 0, 1, 2, false), None);
        assert_eq!(out_len(1, 0, 0, 1, 2, false), None);
        assert_eq!(out_len(1, 1, 0, 1, 0, false), None);
    }

    #[test]
    fn avg_bounds_follow_pytorch() {
        let a = Axis::new(2, 2, 1, 1);
        // in 3: windows start at -1 and 1: [-1, 1) → real [0, 1), padded 2; [1, 3) → [1, 3), 2.
        assert_eq!(a.avg_bounds(0, 3), (0, 1, 2));
        assert_eq!(a.avg_bounds(1, 3), (1, 3, 2));
        // ceil_mode window past the padding: k2 s2 p0 on 3, window 1 = [2, 4) → end min(4, 3).
        let c = Axis::new(2, 2, 0, 1);
        assert_eq!(c.avg_bounds(1, 3), (2, 3, 1));
    }

    #[test]
    fn pool_checks() {
        let g = |h: Axis, in_h: usize, ceil: bool| Pool2dGeom {
            batch: 1,
            in_h,
            in_w: 1,
            channels: 1,
            h,
            w: Axis::new(1, 1, 0, 1),
            ceil_mode: ceil,
        };
        assert!(g(Axis::new(3, 1, 2, 1), 5, false).out_hw().is_err()); // pad > k/2
        assert!(g(Axis::new(3, 1, 1, 1), 5, false).out_hw().is_ok());
        // Dilated window on a 1-long input: taps at -1 and 1, neither real.
        assert!(g(Axis::new(2, 1, 1, 2), 1, false).out_hw().is_err());
        assert_eq!(g(Axis::new(2, 1, 1, 2), 2, false).out_hw(), Ok([2, 1]));
        assert!(Pool2dGeom::pool1d(1, 5, 2, Axis::new(2, 2, 0, 1), true).is_1d());
    }

    #[test]
    fn conv_checks() {
        let mut g = Conv2dGeom {
            batch: 1,
            in_h: 4,
            in_w: 4,
            in_c: 6,
            out_c: 4,
            h: Axis::new(3, 1, 1, 1),
            w: Axis::new(3, 2, 0, 1),
            groups: 2,
        };
        assert_eq!(g.out_hw(), Ok([4, 1]));
        assert_eq!(g.reduction_len(), 27);
        assert_eq!(g.weight_len(), 108);
        assert_eq!(g.output_len(), Ok(16));
        g.groups = 4; // does not divide in_c = 6
        assert!(g.out_hw().is_err());
        g.groups = 0;
        assert!(g.out_hw().is_err());
        let c1 = Conv2dGeom::conv1d(2, 5, 3, 3, Axis::new(3, 1, 1, 2), 3);
        assert!(c1.is_1d());
        assert_eq!(c1.out_hw(), Ok([1, 3])); // (5 + 2 - 5)/1 + 1
    }

    #[test]
    fn relu6_clamp_is_quantized_six() {
        let input = QParams::new(0.1, 0, QRange::U8).unwrap();
        let out = QParams::new(0.5, 3, QRange::U8).unwrap();
        let r = requant_per_channel(&input, &[0.01], &out, Activation::Relu6, RequantRule::Integer).unwrap()[0];
        // zp 3, 6 / 0.5 = 12 → [3, 15].
        assert_eq!((r.qmin, r.qmax, r.zero_point), (3, 15, 3));
        let r = requant_per_channel(&input, &[0.01], &out, Activation::Relu, RequantRule::Integer).unwrap()[0];
        assert_eq!((r.qmin, r.qmax), (3, 255));
        // 6 beyond the range: qmax stays 255 (min(255, 250 + 12)).
        let hi = QParams::new(0.5, 250, QRange::U8).unwrap();
        let r = requant_per_channel(&input, &[0.01], &hi, Activation::Relu6, RequantRule::Integer).unwrap()[0];
        assert_eq!((r.qmin, r.qmax), (250, 255));
        // rint(6 · (1/0.07)) = rint(85.71…) = 86.
        let odd = QParams::new(0.07, 10, QRange::U8).unwrap();
        let r = requant_per_channel(&input, &[0.01], &odd, Activation::Relu6, RequantRule::Integer).unwrap()[0];
        assert_eq!(r.qmax, 96);
        // M = 0.1 · 0.01 / 0.07 exactly as quant.rs represents it.
        assert_eq!(
            r.multiplier,
            Requant::from_real(requant_multiplier(0.1, 0.01, 0.07), 10, QRange::U8)
                .unwrap()
                .multiplier
        );
    }

    #[test]
    fn clamp_zero_six_is_relu6_and_bounds_are_quantized() {
        let input = QParams::new(0.1, 0, QRange::U8).unwrap();
        for (s, zp) in [(0.5f32, 3), (0.07, 10), (0.01, 200), (0.5, 250)] {
            let out = QParams::new(s, zp, QRange::U8).unwrap();
            let a = requant_per_channel(&input, &[0.01], &out, Activation::Relu6, RequantRule::Integer).unwrap();
            let b = requant_per_channel(
                &input,
                &[0.01],
                &out,
                Activation::Clamp { min: 0.0, max: 6.0 },
                RequantRule::Integer,
            )
            .unwrap();
            assert_eq!(a, b);
        }
        let out = QParams::new(0.5, 3, QRange::U8).unwrap();
        // quantize(-1) = 3 - 2 = 1, quantize(2) = 3 + 4 = 7.
        assert_eq!(Activation::Clamp { min: -1.0, max: 2.0 }.bounds(&out), (1, 7));
        assert!(Activation::Clamp { min: 1.0, max: -1.0 }.check().is_err());
        assert!(Activation::Clamp {
            min: f32::NAN,
            max: 1.0
        }
        .check()
        .is_err());
        assert!(Activation::Relu.check().is_ok());
    }

    #[test]
    fn concat_part_with_equal_params_is_identity() {
        let p = QParams::new(0.037, 91, QRange::U8).unwrap();
        let part = ConcatPart::new(3, &p, &p).unwrap();
        assert_eq!((part.requant.multiplier, part.requant.shift), (1 << 30, 30));
        for q in 0..=255 {
            assert_eq!(part.requant.apply(q - 91), q);
        }
    }
}
