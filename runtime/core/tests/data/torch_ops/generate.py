"""Writes the PyTorch x86 quantized-op fixtures for runtime/core/tests/torch_x86_crosscheck.rs.

Run from the repository root with PyTorch 2.11.0 and numpy (see GENERATE.md beside this file):

    python runtime/core/tests/data/torch_ops/generate.py

Every case is a small op on random data, run by PyTorch's quantized CPU engine "x86" (fbgemm /
oneDNN) with one thread. For each case the JSON stores the quantized inputs (int_repr in
PyTorch's NCHW / NCL / NK order, scale, zero point), the per-channel quantized weight (int_repr
OIHW / OIK / OI, scales, zero points, axis), the float bias, the op's configuration, and PyTorch's
quantized output (int_repr, scale, zero point). Every scale and bias is an f32 value, written
both as a number (Python's shortest repr) and as its IEEE-754 bit pattern (`*_bits`), which the
Rust test reads, so no decimal parsing is involved.

Files (one JSON object {"torch": ..., "engine": ..., "cases": [...]} each):

  conv2d.json   torch.ao.nn.quantized.Conv2d / torch.ao.nn.intrinsic.quantized.ConvReLU2d
  conv1d.json   torch.ao.nn.quantized.Conv1d / torch.ao.nn.intrinsic.quantized.ConvReLU1d
  linear.json   torch.ao.nn.quantized.Linear / torch.ao.nn.intrinsic.quantized.LinearReLU
  add.json      torch.ops.quantized.add / torch.ops.quantized.add_relu
  pool.json     max_pool2d, avg_pool2d, adaptive_avg_pool2d on quantized tensors, each run on
                the NCHW tensor ("output") and on its channels_last copy ("output_channels_last")

Seeds: torch.manual_seed(SEEDS[file] + index of the case in its file) before each case.
"""

import hashlib
import json
import os
import platform
import struct
import sys

import numpy as np
import torch
import torch.ao.nn.intrinsic.quantized as nniq
import torch.ao.nn.quantized as nnq
import torch.nn.functional as F

OUT = os.path.dirname(os.path.abspath(__file__))
SEEDS = {"conv2d": 100, "conv1d": 200, "linear": 300, "add": 400, "pool": 500}

# Activation codes: the x86 qconfig (get_default_qconfig("x86")) observes activations with
# reduce_range=True, i.e. codes in [0, 127], because fbgemm's AVX2 kernels multiply u8 by i8 with
# vpmaddubsw, which saturates pairs of products to i16. Inputs of conv / linear use that range
# ("act_qmax": 127) unless a case says otherwise; outputs always use the full u8 range.
ACT_QMAX = 127


def f32(x):
    """The nearest f32 value, as a Python float (exact in JSON)."""
    return float(np.float32(x))


def affine_params(lo, hi, qmin=0, qmax=255):
    """torch.ao MinMaxObserver's affine parameters (quant.rs's qparams_affine), scale rounded to f32."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = f32(max((hi - lo) / (qmax - qmin), float(np.finfo(np.float32).eps)))
    zp = int(min(max(qmin - round(lo / scale), qmin), qmax))
    return scale, zp


def quantize_act(x, qmax=255, shift=0.0):
    """Quantizes a float tensor to quint8 with MinMax parameters over [0, qmax]."""
    scale, zp = affine_params(x.min() + shift, x.max() + shift, 0, qmax)
    return torch.quantize_per_tensor(x, scale, zp, torch.quint8)


def quantize_weight(w):
    """Symmetric per-channel qint8 on axis 0 (default_per_channel_weight_observer's formula)."""
    amax = w.abs().reshape(w.shape[0], -1).amax(dim=1)
    scales = torch.tensor([f32(max(float(a) / 127.5, float(np.finfo(np.float32).eps))) for a in amax],
                          dtype=torch.float64)
    zps = torch.zeros(w.shape[0], dtype=torch.int64)
    return torch.quantize_per_channel(w, scales, zps, 0, torch.qint8)


def bits(x):
    """The IEEE-754 bit pattern of the f32 value x (JSON readers need not parse floats exactly)."""
    return struct.unpack("<I", struct.pack("<f", x))[0]


def act_json(q):
    return {
        "shape": list(q.shape),
        "scale": f32(q.q_scale()),
        "scale_bits": bits(f32(q.q_scale())),
        "zero_point": int(q.q_zero_point()),
        "q": q.int_repr().contiguous().flatten().tolist(),
    }


def weight_json(qw):
    return {
        "shape": list(qw.shape),
        "scales": [f32(s) for s in qw.q_per_channel_scales().tolist()],
        "scales_bits": [bits(f32(s)) for s in qw.q_per_channel_scales().tolist()],
        "zero_points": [int(z) for z in qw.q_per_channel_zero_points().tolist()],
        "axis": int(qw.q_per_channel_axis()),
        "q": qw.int_repr().contiguous().flatten().tolist(),
    }


def out_params(y_float, narrow):
    """Output parameters covering `narrow` of the float result's range (< 1 makes some outputs
    saturate, to exercise the clamps)."""
    lo, hi = float(y_float.min()), float(y_float.max())
    return affine_params(lo * narrow, hi * narrow)


# ------------------------------------------------------------------------------------------------
# Convolutions and linear layers
# ------------------------------------------------------------------------------------------------

CONV2D = [
    # name, cin, cout, hw, kernel, stride, padding, dilation, groups, relu, bias
    ("k3_pad1", 8, 16, (10, 10), (3, 3), (1, 1), (1, 1), (1, 1), 1, False, True),
    ("k3_pad1_relu", 8, 16, (10, 10), (3, 3), (1, 1), (1, 1), (1, 1), 1, True, True),
    ("k3_stride2", 8, 12, (11, 11), (3, 3), (2, 2), (1, 1), (1, 1), 1, False, True),
    ("k3_dilation2", 6, 8, (12, 12), (3, 3), (1, 1), (2, 2), (2, 2), 1, False, True),
    ("k3_groups2", 8, 12, (9, 9), (3, 3), (1, 1), (1, 1), (1, 1), 2, False, True),
    ("k3_groups4_relu", 16, 8, (8, 8), (3, 3), (1, 1), (1, 1), (1, 1), 4, True, True),
    ("depthwise_k3", 16, 16, (10, 10), (3, 3), (1, 1), (1, 1), (1, 1), 16, False, True),
    ("depthwise_k3_relu", 16, 16, (10, 10), (3, 3), (1, 1), (1, 1), (1, 1), 16, True, True),
    ("depthwise_x2_stride2", 8, 16, (11, 11), (3, 3), (2, 2), (1, 1), (1, 1), 8, False, True),
    ("k1", 32, 16, (8, 8), (1, 1), (1, 1), (0, 0), (1, 1), 1, False, True),
    ("k1_relu", 32, 16, (8, 8), (1, 1), (1, 1), (0, 0), (1, 1), 1, True, True),
    ("k3x5_s21_p12_nobias", 6, 10, (9, 13), (3, 5), (2, 1), (1, 2), (1, 1), 1, False, False),
    ("k3_wide_cin64", 64, 32, (6, 6), (3, 3), (1, 1), (1, 1), (1, 1), 1, False, True),
]

CONV1D = [
    # name, cin, cout, length, kernel, stride, padding, dilation, groups, relu, bias
    ("k5_pad2", 8, 12, 20, 5, 1, 2, 1, 1, False, True),
    ("k3_stride2_dil2_groups2_relu", 8, 12, 23, 3, 2, 2, 2, 2, True, True),
    ("k1_nobias", 16, 8, 15, 1, 1, 0, 1, 1, False, False),
]

LINEAR = [
    # name, in, out, relu, bias
    ("in64_out32", 64, 32, False, True),
    ("in64_out32_relu", 64, 32, True, True),
    ("in256_out10", 256, 10, False, True),
    ("in40_out24_nobias", 40, 24, False, False),
    ("in128_out96_relu", 128, 96, True, True),
    ("in512_out64", 512, 64, False, True),
]


def conv_case(dim, i, spec):
    name, cin, cout, size, k, s, p, d, g, relu, has_bias = spec
    torch.manual_seed(SEEDS["conv%dd" % dim] + i)
    size = size if dim == 2 else (size,)
    x = torch.randn(2, cin, *size) * 1.5 + 0.3 * i
    w = torch.randn(cout, cin // g, *(k if dim == 2 else (k,))) * 0.2
    b = (torch.randn(cout) * 0.5).float() if has_bias else None
    qx = quantize_act(x, ACT_QMAX)
    qw = quantize_weight(w)
    conv = F.conv2d if dim == 2 else F.conv1d
    yf = conv(qx.dequantize(), qw.dequantize(), b, s, p, d, g)
    # Relu cases keep the pre-relu range, so the output zero point is not 0 and the fused ReLU
    # clamps at it.
    scale, zp = out_params(yf, 0.9)
    if dim == 2:
        cls = nniq.ConvReLU2d if relu else nnq.Conv2d
    else:
        cls = nniq.ConvReLU1d if relu else nnq.Conv1d
    m = cls(cin, cout, k, stride=s, padding=p, dilation=d, groups=g, bias=has_bias)
    m.set_weight_bias(qw, b)
    m.scale, m.zero_point = scale, zp
    qy = m(qx)
    assert abs(qy.q_scale() - scale) == 0 and qy.q_zero_point() == zp
    return {
        "name": name,
        "op": "conv%dd" % dim,
        "config": {
            "kernel": list(k) if dim == 2 else [k],
            "stride": list(s) if dim == 2 else [s],
            "padding": list(p) if dim == 2 else [p],
            "dilation": list(d) if dim == 2 else [d],
            "groups": g,
            "relu": relu,
        },
        "input": act_json(qx),
        "weight": weight_json(qw),
        "bias": None if b is None else [f32(v) for v in b.tolist()],
        "bias_bits": None if b is None else [bits(f32(v)) for v in b.tolist()],
        "output": act_json(qy),
    }


def linear_case(i, spec):
    name, fin, fout, relu, has_bias = spec
    torch.manual_seed(SEEDS["linear"] + i)
    x = torch.randn(2, fin) * 2.0 - 0.2 * i
    w = torch.randn(fout, fin) * 0.1
    b = (torch.randn(fout) * 0.5).float() if has_bias else None
    qx = quantize_act(x, ACT_QMAX)
    qw = quantize_weight(w)
    yf = F.linear(qx.dequantize(), qw.dequantize(), b)
    scale, zp = out_params(yf, 0.9)
    m = (nniq.LinearReLU if relu else nnq.Linear)(fin, fout, has_bias)
    m.set_weight_bias(qw, b)
    m.scale, m.zero_point = scale, zp
    qy = m(qx)
    return {
        "name": name,
        "op": "linear",
        "config": {"relu": relu},
        "input": act_json(qx),
        "weight": weight_json(qw),
        "bias": None if b is None else [f32(v) for v in b.tolist()],
        "bias_bits": None if b is None else [bits(f32(v)) for v in b.tolist()],
        "output": act_json(qy),
    }


# ------------------------------------------------------------------------------------------------
# Add
# ------------------------------------------------------------------------------------------------

ADD = [
    # name, relu, a (std, mean), b (std, mean) or None for a's parameters, out range factor
    ("different_scales", False, (1.0, 0.5), (3.0, -1.0), 1.0),
    ("equal_params", False, (1.0, 0.0), None, 1.0),
    ("relu", True, (2.0, 0.0), (0.5, 0.2), 1.0),
    ("saturating_out", False, (1.5, 1.0), (1.0, -0.5), 0.6),
    ("relu_saturating_out", True, (0.3, 0.1), (2.5, 0.0), 0.7),
    # Equal input parameters and s_out = f32(1.6 * s_in): the real result (qa + qb - 2 zp) * 5/8
    # is within f32 rounding of a tie for one sum in eight ("tie_heavy"), where PyTorch's f32
    # arithmetic cannot tell the sides apart. (Observers on float activations do not pick such
    # exact ratios; an observer on the dequantized sum would: s_out = s_in * D / 255, D integer.)
    ("near_ties", False, (1.0, 0.0), None, "ratio_1.6"),
]


def add_case(i, spec):
    name, relu, (sa, ma), bspec, narrow = spec
    torch.manual_seed(SEEDS["add"] + i)
    shape = (2, 8, 6, 6)
    a = torch.randn(*shape) * sa + ma
    qa = quantize_act(a)
    if bspec is None:
        b = torch.randn(*shape) * sa + ma
        qb = torch.quantize_per_tensor(b, qa.q_scale(), qa.q_zero_point(), torch.quint8)
    else:
        b = torch.randn(*shape) * bspec[0] + bspec[1]
        qb = quantize_act(b)
    if narrow == "ratio_1.6":
        scale, zp = f32(1.6 * qa.q_scale()), 128
    else:
        # As an observer on the float model would choose them.
        scale, zp = out_params(a + b, narrow)
    op = torch.ops.quantized.add_relu if relu else torch.ops.quantized.add
    qy = op(qa, qb, scale, zp)
    return {
        "name": name,
        "op": "add",
        "config": {"relu": relu},
        "tie_heavy": narrow == "ratio_1.6",
        "input": act_json(qa),
        "input_b": act_json(qb),
        "output": act_json(qy),
    }


# ------------------------------------------------------------------------------------------------
# Pooling
# ------------------------------------------------------------------------------------------------

POOL = [
    # name, op, hw, kernel, stride, padding, dilation, ceil_mode, count_include_pad / out size
    ("max_k2_s2", "max_pool2d", (10, 10), (2, 2), (2, 2), (0, 0), (1, 1), False, None),
    ("max_k3_s2_p1", "max_pool2d", (11, 11), (3, 3), (2, 2), (1, 1), (1, 1), False, None),
    ("max_k3_s1_p1_d2", "max_pool2d", (9, 9), (3, 3), (1, 1), (1, 1), (2, 2), False, None),
    ("max_k3_s2_ceil", "max_pool2d", (10, 9), (3, 3), (2, 2), (0, 0), (1, 1), True, None),
    ("avg_k2_s2", "avg_pool2d", (10, 10), (2, 2), (2, 2), (0, 0), (1, 1), False, True),
    ("avg_k3_s2_p1_incl", "avg_pool2d", (11, 11), (3, 3), (2, 2), (1, 1), (1, 1), False, True),
    ("avg_k3_s2_p1_excl", "avg_pool2d", (11, 11), (3, 3), (2, 2), (1, 1), (1, 1), False, False),
    ("avg_k3_s2_ceil_incl", "avg_pool2d", (10, 9), (3, 3), (2, 2), (0, 0), (1, 1), True, True),
    ("avg_k3_s2_p1_ceil_excl", "avg_pool2d", (10, 10), (3, 3), (2, 2), (1, 1), (1, 1), True, False),
    ("avg_k3_s2_p1_ceil_incl", "avg_pool2d", (10, 10), (3, 3), (2, 2), (1, 1), (1, 1), True, True),
    ("avg_k5x3_s1_p21_excl", "avg_pool2d", (8, 7), (5, 3), (1, 1), (2, 1), (1, 1), False, False),
    ("adaptive_global", "adaptive_avg_pool2d", (7, 7), None, None, None, None, None, (1, 1)),
    ("adaptive_global_8x8", "adaptive_avg_pool2d", (8, 8), None, None, None, None, None, (1, 1)),
    ("adaptive_3x2", "adaptive_avg_pool2d", (10, 7), None, None, None, None, None, (3, 2)),
]


def pool_case(i, spec):
    name, op, hw, k, s, p, d, ceil, extra = spec
    torch.manual_seed(SEEDS["pool"] + i)
    x = torch.randn(2, 6, *hw) * 2.0 + (i % 3 - 1)
    qx = quantize_act(x)
    if op == "max_pool2d":
        qy = F.max_pool2d(qx, k, s, p, d, ceil_mode=ceil)
        config = {"kernel": list(k), "stride": list(s), "padding": list(p), "dilation": list(d), "ceil_mode": ceil}
    elif op == "avg_pool2d":
        qy = F.avg_pool2d(qx, k, s, p, ceil_mode=ceil, count_include_pad=extra)
        config = {"kernel": list(k), "stride": list(s), "padding": list(p), "ceil_mode": ceil,
                  "count_include_pad": extra}
    else:
        qy = F.adaptive_avg_pool2d(qx, extra)
        config = {"output_size": list(extra)}
    # The same op on the same codes in channels_last memory (PyTorch's NHWC kernels, qc's layout):
    # for average pooling PyTorch's NCHW and NHWC paths round differently, so both are kept.
    qy_cl = {
        "max_pool2d": lambda t: F.max_pool2d(t, k, s, p, d, ceil_mode=ceil),
        "avg_pool2d": lambda t: F.avg_pool2d(t, k, s, p, ceil_mode=ceil, count_include_pad=extra),
        "adaptive_avg_pool2d": lambda t: F.adaptive_avg_pool2d(t, extra),
    }[op](qx.contiguous(memory_format=torch.channels_last))
    diff = (qy.int_repr().int() - qy_cl.int_repr().int()).abs()
    for q in (qy, qy_cl):
        assert q.q_scale() == qx.q_scale() and q.q_zero_point() == qx.q_zero_point()
    return {
        "name": name,
        "op": op,
        "config": config,
        "input": act_json(qx),
        "output": act_json(qy),
        "output_channels_last": act_json(qy_cl),
        "channels_last_mismatches": int((diff != 0).sum()),
        "channels_last_max_diff": int(diff.max()),
    }


def main():
    torch.backends.quantized.engine = "x86"
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    header = {
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "engine": torch.backends.quantized.engine,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    print("python %s, torch %s, numpy %s, engine %s, cpu capability %s"
          % (header["python"], header["torch"], header["numpy"], header["engine"], header["cpu_capability"]))
    files = {
        "conv2d": [conv_case(2, i, c) for i, c in enumerate(CONV2D)],
        "conv1d": [conv_case(1, i, c) for i, c in enumerate(CONV1D)],
        "linear": [linear_case(i, c) for i, c in enumerate(LINEAR)],
        "add": [add_case(i, c) for i, c in enumerate(ADD)],
        "pool": [pool_case(i, c) for i, c in enumerate(POOL)],
    }
    for case in files["pool"]:
        if case["channels_last_mismatches"]:
            print("  note: %s: channels_last output differs on %d elements (max %d)"
                  % (case["name"], case["channels_last_mismatches"], case["channels_last_max_diff"]))
    for stem, cases in files.items():
        path = os.path.join(OUT, stem + ".json")
        text = json.dumps(dict(header, cases=cases), separators=(",", ":")) + "\n"
        with open(path, "w") as f:
            f.write(text)
        data = text.encode()
        print("%s.json %d cases %d bytes sha256 %s" % (stem, len(cases), len(data), hashlib.sha256(data).hexdigest()))


if __name__ == "__main__":
    sys.exit(main())
