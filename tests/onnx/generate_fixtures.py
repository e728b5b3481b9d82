"""Writes the ONNX fixtures of `qc import` (tests/onnx_import.rs) with real PyTorch 2.11.

Every model is exported by both of PyTorch's exporters (`dynamo=True`, the default, and
`dynamo=False`, the TorchScript exporter), once as the exporter writes an eval-mode model by
default (batch norm folded into the convolutions) and once with
`training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False` (batch norm kept). The
dynamo exporter ignores those two arguments and always folds batch norm (its ONNX optimizer
does; the script checks that the export with them has no BatchNormalization node and ships only
`dynamo.folded`), so each model has three files: `ts.bn`, `ts.folded`, `dynamo.folded`.
Batch-norm statistics and biases are random (not torchvision's zeros and ones), as in a trained
model: the dynamo exporter drops all-zero biases, and the TorchScript exporter shares equal
initializers through Identity nodes.

- tests/data/onnx/<model>.<exporter>.<bn>.onnx: small models with their weights (a narrow
  ResNet of torchvision BasicBlocks, a narrow torchvision MobileNetV2, the fashion CNN of
  examples/fashion_cnn.qrecipe with the weights of tests/data/fashion_cnn.fp32.pth, an
  Inception-v3 stem conv and a narrow InceptionA block of torchvision's BasicConv2d).
- tests/data/onnx/torchvision/<model>.<exporter>.<bn>.onnx: torchvision's ResNet-18, ResNet-50,
  MobileNetV2 and MobileNetV3-small (random weights) as graphs WITHOUT weight data: every
  initializer keeps its name, dims and dtype but is marked as external data in a file that is
  not shipped (`<file>.data`); `qc import` then writes a recipe without a `weights` line.
- tests/data/onnx/torchvision/<model>.keys.txt: the model's `state_dict().keys()`, in order.
- tests/data/onnx/unsupported_softmax.ts.folded.onnx: a conv and a Softmax, which `qc import`
  refuses (naming the node, the op and the ops it reads).

<exporter> is `dynamo` or `ts`; <bn> is `bn` (kept) or `folded` (the exporter's default).
Initializers of 1 KiB or more lose their data in the torchvision graphs; smaller ones (clip
bounds, shapes, short batch-norm vectors) stay in the file.

Usage (from the repository root, after `make bench-setup`):
    .venv-bench/bin/python tests/onnx/generate_fixtures.py
"""
import hashlib
import os
import sys
import warnings

import numpy as np
import onnx
import torch
import torch.nn as nn
import torchvision
import torch.nn.functional as F
from torchvision.models.inception import BasicConv2d
from torchvision.models.resnet import BasicBlock, conv1x1

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "data", "onnx")
TV_OUT = os.path.join(OUT, "torchvision")
OPSET = 18


class NarrowResNet(nn.Module):
    """torchvision's ResNet structure (module names included) with 8/16 channels, BasicBlocks
    [2, 2], a 32x32 input and 10 classes."""

    def __init__(self, widths=(8, 16), blocks=(2, 2), num_classes=10):
        super().__init__()
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for i, (w, n) in enumerate(zip(widths, blocks)):
            setattr(self, f"layer{i + 1}", self._make_layer(w, n, stride=1 if i == 0 else 2))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[-1], num_classes)
        self.nlayers = len(widths)

    def _make_layer(self, planes, n, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes, stride), nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, n)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.nlayers):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


class NarrowInceptionA(nn.Module):
    """torchvision's InceptionA (module names and forward) with 4-8 channels per branch."""

    def __init__(self, cin, pool_features):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 8, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 6, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(6, 8, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 8, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(8, 12, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(12, 12, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionBlock(nn.Module):
    """An Inception-v3 stem conv and a narrow `Mixed_5b` (torchvision's names)."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 8, kernel_size=3, stride=2)
        self.Mixed_5b = NarrowInceptionA(8, pool_features=4)

    def forward(self, x):
        return self.Mixed_5b(self.Conv2d_1a_3x3(x))


class FashionCNN(nn.Module):
    """examples/fashion_cnn.qrecipe (the float model of tests/data/generate.py)."""

    def __init__(self):
        super().__init__()
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

    def forward(self, x):
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        x = self.pool2(self.relu2(self.bn2(self.conv2(x))))
        x = self.relu3(self.fc1(self.flat(x)))
        return self.fc2(x)


class WithSoftmax(nn.Module):
    """A conv and a softmax: an op `qc import` does not read (the bad-input test)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.softmax = nn.Softmax(dim=1)

    def forward(self, x):
        return self.softmax(self.conv(x))


def randomize_bn(model, gen):
    """Non-trivial batch-norm statistics, so that folding and keeping differ visibly."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
                m.num_batches_tracked.fill_(7)


def small_models():
    torch.manual_seed(11)
    gen = torch.Generator().manual_seed(1011)
    resnet = NarrowResNet()
    randomize_bn(resnet, gen)
    torch.manual_seed(12)
    mobilenet = torchvision.models.MobileNetV2(
        num_classes=10, width_mult=0.25, inverted_residual_setting=[[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 2, 2]]
    )
    randomize_bn(mobilenet, gen)
    torch.manual_seed(14)
    inception = InceptionBlock()
    randomize_bn(inception, gen)
    fashion = FashionCNN()
    state = torch.load(os.path.join(ROOT, "tests", "data", "fashion_cnn.fp32.pth"), weights_only=True)
    fashion.load_state_dict(state)
    return [
        ("narrow_resnet", resnet, (2, 3, 32, 32)),
        ("narrow_mobilenet_v2", mobilenet, (2, 3, 32, 32)),
        ("fashion_cnn", fashion, (2, 1, 28, 28)),
        ("inception_block", inception, (2, 3, 33, 33)),
    ]


def randomize_biases(model, gen):
    """Trained-like biases: torchvision initialises them to zero, and the dynamo exporter's
    optimizer drops an all-zero bias, which a trained model does not have."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.01)


def torchvision_models():
    torch.manual_seed(21)
    gen = torch.Generator().manual_seed(1021)
    models = [
        ("resnet18", torchvision.models.resnet18(), (1, 3, 224, 224)),
        ("resnet50", torchvision.models.resnet50(), (1, 3, 224, 224)),
        ("mobilenet_v2", torchvision.models.mobilenet_v2(), (1, 3, 224, 224)),
        ("mobilenet_v3_small", torchvision.models.mobilenet_v3_small(), (1, 3, 224, 224)),
    ]
    for _, model, _ in models:
        randomize_bn(model, gen)
        randomize_biases(model, gen)
    return models


def export(model, shape, path, dynamo, keep_bn):
    model.eval()
    x = torch.zeros(shape)
    kwargs = {}
    if keep_bn:
        kwargs = dict(training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(model, (x,), path, dynamo=True, opset_version=OPSET, external_data=False,
                              input_names=["x"], output_names=["y"], **kwargs)
        else:
            torch.onnx.export(model, (x,), path, dynamo=False, opset_version=OPSET,
                              input_names=["x"], output_names=["y"], **kwargs)


def strip_stack_traces(path):
    """Drops the dynamo exporter's `pkg.torch.onnx.stack_trace` node metadata: Python stack
    traces with this machine's file paths (a third of a graph's size). Everything else,
    `pkg.torch.onnx.name_scopes` and `class_hierarchy` included, stays as exported."""
    model = onnx.load(path)
    for node in model.graph.node:
        keep = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    onnx.save_model(model, path)


def strip_payload(path):
    """Keeps every initializer's name, dims and dtype; moves its data to `<file>.data`, which
    is deleted: the graph without its weights."""
    model = onnx.load(path)
    data = os.path.basename(path) + ".data"
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data, size_threshold=1024)
    os.remove(os.path.join(os.path.dirname(path), data))


def bn_count(path):
    m = onnx.load(path, load_external_data=False)
    return sum(n.op_type == "BatchNormalization" for n in m.graph.node)


def report(path):
    with open(path, "rb") as f:
        b = f.read()
    rel = os.path.relpath(path, ROOT)
    print(f"{rel}  {len(b)} bytes  sha256 {hashlib.sha256(b).hexdigest()[:16]}  "
          f"BatchNormalization nodes: {bn_count(path)}")


def main():
    torch.set_num_threads(1)
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, torchvision "
          f"{torchvision.__version__}, onnx {onnx.__version__}, numpy {np.__version__}")
    os.makedirs(TV_OUT, exist_ok=True)
    variants = [(False, True), (False, False), (True, False)]
    tmp = os.path.join(OUT, "dynamo_preserve.tmp.onnx")
    for name, model, shape in small_models():
        export(model, shape, tmp, True, True)
        assert bn_count(tmp) == 0, "the dynamo exporter kept batch norm: ship dynamo.bn too"
        os.remove(tmp)
        print(f"{name}: dynamo with training=PRESERVE, do_constant_folding=False: batch norm folded anyway")
        for dynamo, keep_bn in variants:
            path = os.path.join(OUT, f"{name}.{'dynamo' if dynamo else 'ts'}.{'bn' if keep_bn else 'folded'}.onnx")
            export(model, shape, path, dynamo, keep_bn)
            if dynamo:
                strip_stack_traces(path)
            report(path)
    torch.manual_seed(13)
    path = os.path.join(OUT, "unsupported_softmax.ts.folded.onnx")
    export(WithSoftmax(), (1, 1, 8, 8), path, False, False)
    report(path)
    for name, model, shape in torchvision_models():
        with open(os.path.join(TV_OUT, f"{name}.keys.txt"), "w") as f:
            f.write("".join(k + "\n" for k in model.state_dict().keys()))
        for dynamo, keep_bn in variants:
            path = os.path.join(TV_OUT, f"{name}.{'dynamo' if dynamo else 'ts'}.{'bn' if keep_bn else 'folded'}.onnx")
            export(model, shape, path, dynamo, keep_bn)
            if dynamo:
                strip_stack_traces(path)
            strip_payload(path)
            report(path)


if __name__ == "__main__":
    main()
