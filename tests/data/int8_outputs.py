"""Writes PyTorch's own int8 outputs for the converted fixtures (tests/data/<x>.int8.outputs.safetensors).

Run from the repository root with PyTorch 2.11.0 (see GENERATE.md), after generate.py:

    .venv-bench/bin/python tests/data/int8_outputs.py

For each of fashion_cnn, conv1d_net and inception_block it rebuilds the eager-mode converted
model of generate.py (fuse_modules_qat, the x86 QAT qconfig, prepare_qat, convert), loads the
committed <x>.int8.pth into it, runs a seeded random batch through PyTorch's x86 quantized engine
and saves:

  input         f16, the batch as the model receives it (QuantStub quantizes it); drawn from a
                normal distribution, clamped to the input range of the model's QuantStub and
                rounded to f16 so that the file stays small, then run as f32
  output_codes  u8, the integer codes of the last quantized tensor (before DeQuantStub)

  output_scale, output_zero_point  f64 [1], i64 [1]: the output's quantization parameters

The files come out byte-identical on every run. tests/pytorch_exact.rs runs the
same checkpoint and batch through qc (`requantize: float`) and compares the codes.
"""

import os
import platform
import sys
import warnings

import torch
import torch.ao.quantization as tq
import torch.nn as nn
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import generate  # noqa: E402  (the fixture models and seeds)

# Batch sizes: enough output elements that 99.9% is a meaningful share (fashion_cnn 5,120,
# conv1d_net 3,360, inception_block 313,600).
BATCH = {"fashion_cnn": 512, "conv1d_net": 96, "inception_block": 1}


def converted(name):
    cls = generate.MODELS[name]
    model = cls()
    model.train()
    model.qconfig = tq.get_default_qat_qconfig("x86")
    tq.fuse_modules_qat(model, model.fuse, inplace=True)
    tq.prepare_qat(model, inplace=True)
    model.eval()
    qmodel = tq.convert(model, inplace=False)
    state = torch.load(os.path.join(generate.OUT, f"{name}.int8.pth"), weights_only=True)
    qmodel.load_state_dict(state)
    return qmodel


def write(name):
    qmodel = converted(name)
    shape = (BATCH[name],) + tuple(generate.MODELS[name].input_shape[1:])
    g = torch.Generator().manual_seed(generate.SEEDS[name] + 2000)
    x = torch.randn(shape, generator=g)
    # Within the input range the x86 observer chose: 7-bit codes [0, 127] (`reduce_range`).
    # Beyond it PyTorch's QuantStub clamps at quint8's [0, 255] and qc at the observer's
    # [0, 127] (docs/numerics.md, "Agreement with PyTorch's converted models").
    s, zp = float(qmodel.quant.scale), int(qmodel.quant.zero_point)
    x = x.clamp((0 - zp) * s, (127 - zp) * s).half().float()
    # The quantized tensor that DeQuantStub would turn into floats.
    dequant = qmodel.dequant
    qmodel.dequant = nn.Identity()
    with torch.no_grad():
        q = qmodel(x)
    qmodel.dequant = dequant
    assert q.is_quantized and q.dtype == torch.quint8, name
    path = os.path.join(generate.OUT, f"{name}.int8.outputs.safetensors")
    save_file(
        {
            "input": x.half().contiguous(),
            "output_codes": q.int_repr().contiguous(),
            "output_scale": torch.tensor([q.q_scale()], dtype=torch.float64),
            "output_zero_point": torch.tensor([q.q_zero_point()], dtype=torch.int64),
        },
        path,
    )
    print(f"{name}: input {list(x.shape)}, output {list(q.shape)}, scale {q.q_scale()!r}, "
          f"zero point {q.q_zero_point()}")


def main():
    print(f"python {platform.python_version()}, torch {torch.__version__}")
    torch.backends.quantized.engine = "x86"
    torch.use_deterministic_algorithms(True, warn_only=True)
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    for name in generate.MODELS:
        write(name)


if __name__ == "__main__":
    sys.exit(main())
