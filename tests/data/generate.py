"""Writes qc's PyTorch checkpoint fixtures (tests/data/*.pth, *.safetensors, *.expect.json).

Run from the repository root with PyTorch 2.11.0 (see GENERATE.md):

    python tests/data/generate.py

For each of the examples fashion_cnn, conv1d_net and inception_block it defines an nn.Module
whose float state_dict has exactly the keys, order and shapes of
`qc keys examples/<x>.qrecipe --stage float`, and saves, with fixed seeds:

  <x>.fp32.pth          torch.save(model.state_dict()) after two train-mode batches
  <x>.fp32.safetensors  the same tensors, safetensors.torch.save_file
  <x>.qat.pth           eager-mode QAT: fuse_modules_qat, get_default_qat_qconfig("x86"),
                        prepare_qat, three train-mode batches
  <x>.int8.pth          torch.ao.quantization.convert of that model in eval mode

plus edge_cases.pth (dtypes, strides, offsets, shared storages, parameters, quantized tensors)
and legacy.pth (the pre-1.6 non-zip format, which qc refuses), and for every .pth an
<name>.expect.json: for every key in order its kind, dtype, shape, quantization parameters
(floats also as IEEE-754 bit patterns, for exact comparison) and the float64 sum of its values
(of the integer representation for quantized tensors).
"""

import hashlib
import json
import os
import platform
import struct
import sys
import warnings

import torch
import torch.ao.quantization as tq
import torch.nn as nn
from safetensors.torch import save_file
from torch.ao.nn.quantized import FloatFunctional

OUT = os.path.dirname(os.path.abspath(__file__))

# Seeds: model weights use SEEDS[name]; the random batches use SEEDS[name] + 1000.
SEEDS = {"fashion_cnn": 1, "conv1d_net": 2, "inception_block": 3, "edge_cases": 4}


class FashionCNN(nn.Module):
    """examples/fashion_cnn.qrecipe"""

    input_shape = (4, 1, 28, 28)

    def __init__(self):
        super().__init__()
        self.quant = tq.QuantStub()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.AvgPool2d(2)
        self.flat = nn.Flatten()
        self.fc1 = nn.Linear(1568, 64)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(64, 10)
        self.dequant = tq.DeQuantStub()

    fuse = [["conv1", "bn1", "relu1"], ["conv2", "bn2", "relu2"], ["fc1", "relu3"]]

    def forward(self, x):
        x = self.quant(x)
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        x = self.pool2(self.relu2(self.bn2(self.conv2(x))))
        x = self.relu3(self.fc1(self.flat(x)))
        return self.dequant(self.fc2(x))


class Conv1dNet(nn.Module):
    """examples/conv1d_net.qrecipe (the M5 of PyTorch's speech-command tutorial)"""

    input_shape = (4, 1, 8000)

    def __init__(self):
        super().__init__()
        self.quant = tq.QuantStub()
        self.conv1 = nn.Conv1d(1, 32, 80, stride=16)
        self.bn1 = nn.BatchNorm1d(32)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool1d(4)
        self.conv2 = nn.Conv1d(32, 32, 3)
        self.bn2 = nn.BatchNorm1d(32)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool1d(4)
        self.conv3 = nn.Conv1d(32, 64, 3)
        self.bn3 = nn.BatchNorm1d(64)
        self.relu3 = nn.ReLU()
        self.pool3 = nn.MaxPool1d(4)
        self.conv4 = nn.Conv1d(64, 64, 3)
        self.bn4 = nn.BatchNorm1d(64)
        self.relu4 = nn.ReLU()
        self.pool4 = nn.MaxPool1d(4)
        self.gap = nn.AdaptiveAvgPool1d(1)
        self.flat = nn.Flatten()
        self.fc1 = nn.Linear(64, 35)
        self.dequant = tq.DeQuantStub()

    fuse = [[f"conv{i}", f"bn{i}", f"relu{i}"] for i in range(1, 5)]

    def forward(self, x):
        x = self.quant(x)
        for i in range(1, 5):
            conv, bn, relu, pool = (getattr(self, f"{n}{i}") for n in ("conv", "bn", "relu", "pool"))
            x = pool(relu(bn(conv(x))))
        x = self.flat(self.gap(x))
        return self.dequant(self.fc1(x))


class BasicConv2d(nn.Module):
    """torchvision.models.inception.BasicConv2d, with the ReLU as a module so that it fuses"""

    def __init__(self, cin, cout, **kw):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class InceptionA(nn.Module):
    """torchvision.models.inception.InceptionA; the concatenation is a FloatFunctional (no state
    in float, an observer in QAT, scale and zero point in int8)"""

    def __init__(self, cin, pool_features):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.pool = nn.AvgPool2d(3, stride=1, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)
        self.cat = FloatFunctional()

    def forward(self, x):
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(self.pool(x))
        return self.cat.cat([b1, b5, b3, bp], 1)


class InceptionBlock(nn.Module):
    """examples/inception_block.qrecipe: Inception-v3's stem and Mixed_5b"""

    input_shape = (1, 3, 299, 299)

    def __init__(self):
        super().__init__()
        self.quant = tq.QuantStub()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.maxpool1 = nn.MaxPool2d(3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.maxpool2 = nn.MaxPool2d(3, stride=2)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.dequant = tq.DeQuantStub()

    @property
    def fuse(self):
        return [
            [f"{name}.conv", f"{name}.bn", f"{name}.relu"]
            for name, m in self.named_modules()
            if isinstance(m, BasicConv2d)
        ]

    def forward(self, x):
        x = self.quant(x)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(self.maxpool1(x)))
        return self.dequant(self.Mixed_5b(self.maxpool2(x)))


MODELS = {"fashion_cnn": FashionCNN, "conv1d_net": Conv1dNet, "inception_block": InceptionBlock}


def f64_bits(x):
    return struct.unpack("<Q", struct.pack("<d", float(x)))[0]


def describe_tensor(t):
    if t.is_quantized:
        d = {
            "kind": "quantized",
            "dtype": str(t.dtype),
            "shape": list(t.shape),
            "sum": float(t.int_repr().double().sum().item()),
            "abs_sum": float(t.int_repr().double().abs().sum().item()),
        }
        qs = t.qscheme()
        if qs == torch.per_tensor_affine:
            d.update(
                qscheme="per_tensor_affine",
                scale=t.q_scale(),
                scale_bits=f64_bits(t.q_scale()),
                zero_point=t.q_zero_point(),
            )
        elif qs in (torch.per_channel_affine, torch.per_channel_symmetric):
            scales = t.q_per_channel_scales().tolist()
            d.update(
                qscheme="per_channel_affine",
                axis=t.q_per_channel_axis(),
                scales=scales,
                scales_bits=[f64_bits(s) for s in scales],
                zero_points=t.q_per_channel_zero_points().tolist(),
            )
        else:
            raise ValueError(f"unexpected qscheme {qs}")
        return d
    values = t.detach().double()
    return {
        "kind": "tensor",
        "dtype": str(t.dtype),
        "shape": list(t.shape),
        "sum": float(values.sum().item()),
        "abs_sum": float(values.abs().sum().item()),
    }


def describe(key, v):
    if isinstance(v, torch.Tensor):
        d = describe_tensor(v)
    elif isinstance(v, torch.dtype):
        d = {"kind": "dtype", "value": str(v)}
    elif v is None:
        d = {"kind": "none"}
    elif isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], torch.Tensor) and v[0].is_quantized:
        d = {
            "kind": "packed",
            "weight": describe_tensor(v[0]),
            "bias": None if v[1] is None else describe_tensor(v[1]),
        }
    else:
        raise ValueError(f"{key}: unexpected value of type {type(v)}")
    return {"key": key, **d}


def save(name, state, legacy=False):
    path = os.path.join(OUT, f"{name}.pth")
    if legacy:
        torch.save(state, path, _use_new_zipfile_serialization=False)
    else:
        torch.save(state, path)
    with open(os.path.join(OUT, f"{name}.expect.json"), "w") as f:
        json.dump([describe(k, v) for k, v in state.items()], f, indent=1)
        f.write("\n")
    # The file must read back in PyTorch as the same state.
    back = torch.load(path, weights_only=True)
    assert list(back.keys()) == list(state.keys()), name


def batches(name, model_cls, n):
    g = torch.Generator().manual_seed(SEEDS[name] + 1000)
    return [torch.randn(model_cls.input_shape, generator=g) for _ in range(n)]


def make_model(name):
    cls = MODELS[name]
    torch.manual_seed(SEEDS[name])
    model = cls()
    data = batches(name, cls, 5)

    # Float: two train-mode batches so that BatchNorm's running statistics are not the defaults.
    model.train()
    with torch.no_grad():
        for x in data[:2]:
            model(x)
    fp32 = model.state_dict()
    save(f"{name}.fp32", fp32)
    save_file({k: v.contiguous() for k, v in fp32.items()}, os.path.join(OUT, f"{name}.fp32.safetensors"))

    # QAT, eager mode.
    model.train()
    model.qconfig = tq.get_default_qat_qconfig("x86")
    tq.fuse_modules_qat(model, model.fuse, inplace=True)
    tq.prepare_qat(model, inplace=True)
    with torch.no_grad():
        for x in data[2:]:
            model(x)
    save(f"{name}.qat", model.state_dict())

    # Converted int8 model.
    model.eval()
    qmodel = tq.convert(model, inplace=False)
    with torch.no_grad():
        qmodel(data[0])
    save(f"{name}.int8", qmodel.state_dict())


def make_edge_cases():
    """Tensors as torch.save writes them outside a plain float state_dict: every storage dtype
    qc reads, views with strides and offsets into shared storages, parameters, scalars, empty
    tensors, per-tensor and per-channel quantized tensors of each quantized dtype."""
    torch.manual_seed(SEEDS["edge_cases"])
    base = torch.randn(4, 6)
    q8 = torch.quantize_per_tensor(torch.randn(3, 5), 0.05, 3, torch.qint8)
    state = {
        "f32": torch.randn(2, 3),
        "f64": torch.randn(3, 2, dtype=torch.float64),
        "f16": torch.randn(5).half(),
        "bf16": torch.randn(2, 2).bfloat16(),
        "i64": torch.arange(-3, 4, dtype=torch.int64),
        "i32": torch.tensor([[1, -2], [3, 2**31 - 1]], dtype=torch.int32),
        "i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 200, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        # Views into `base`'s storage: a transpose, a column slice (offset and stride), a
        # narrowed row range (offset), an expanded row (stride 0).
        "base": base,
        "transposed": base.t(),
        "column": base[:, 2],
        "rows": base[1:3],
        "every_other": base[::2, 1::2],
        "expanded": base[0].unsqueeze(0).expand(3, 6),
        "param": nn.Parameter(torch.randn(3)),
        "q_per_tensor_qint8": q8,
        "q_transposed": q8.t(),
        "q_per_tensor_quint8": torch.quantize_per_tensor(torch.rand(4), 0.01, 7, torch.quint8),
        "q_per_tensor_qint32": torch.quantize_per_tensor(torch.randn(3), 0.001, 0, torch.qint32),
        "q_per_channel_axis0": torch.quantize_per_channel(
            torch.randn(3, 4), torch.tensor([0.1, 0.02, 0.003], dtype=torch.float64),
            torch.tensor([0, 1, -2]), 0, torch.qint8),
        "q_per_channel_axis1": torch.quantize_per_channel(
            torch.rand(2, 3), torch.tensor([0.01, 0.02, 0.05], dtype=torch.float64),
            torch.tensor([10, 0, 255]), 1, torch.quint8),
        "dtype": torch.quint8,
        "none": None,
    }
    save("edge_cases", state)


def make_legacy():
    torch.manual_seed(SEEDS["edge_cases"])
    save("legacy", {"w": torch.randn(2, 2)}, legacy=True)


def main():
    print(f"python {platform.python_version()}, torch {torch.__version__}")
    torch.backends.quantized.engine = "x86"
    torch.use_deterministic_algorithms(True, warn_only=True)
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    for name in MODELS:
        make_model(name)
    make_edge_cases()
    make_legacy()
    outputs = sorted(
        f for f in os.listdir(OUT) if f.endswith((".pth", ".safetensors", ".expect.json"))
    )
    for f in outputs:
        with open(os.path.join(OUT, f), "rb") as fh:
            data = fh.read()
        print(f"{hashlib.sha256(data).hexdigest()}  {len(data):>9}  {f}")


if __name__ == "__main__":
    sys.exit(main())
