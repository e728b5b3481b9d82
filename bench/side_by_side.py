#!/usr/bin/env python3
"""qc's `qc run` against PyTorch x86 int8, ONNX Runtime int8 and OpenVINO int8, side by side,
interleaved, with each conv's GMAC/s against the measured ceiling of the path qc used.

For every workload every runtime runs the same network with the same float weights (qc's float
weights, exported with `qc export-weights` under PyTorch's names) on the same input and thread
count:

  resnet18-b1   ResNet-18, 1x3x224x224
  resnet18-b8   ResNet-18, 8x3x224x224
  conv64        conv 3x3 64->64 (bias), 1x64x56x56
  conv256       conv 3x3 256->256 (bias), 1x256x14x14

The columns (`--runtimes`, default all four; `--isa` picks qc's kernel paths):

  torch     PyTorch eager-mode PTQ, x86 engine (QuantStub -> int8 network -> DeQuantStub)
  ort       ONNX Runtime: the float PyTorch module exported to ONNX, `quantize_static` (QDQ,
            per-channel s8 weights, u8 activations), intra_op_num_threads = --threads
  openvino  OpenVINO: the same ONNX file, quantized by NNCF (`nncf.quantize`), compiled for
            CPU with INFERENCE_NUM_THREADS = --threads
  qc        `qc run MODEL --input X --threads N --bench K` with QC_ISA=<isa>, one column per isa

PyTorch, ONNX Runtime and NNCF calibrate on the same random batches. All time float in, float
out. Each round runs one timing block of every column, the order rotating from round to round;
a block's figure is the median of its runs. The report gives per workload each column's median
over rounds, the median of the per-round ratios other_ms / qc_ms (> 1: qc faster), and for the
single-conv workloads the GMAC/s of each column and its share of the int8 MAC ceiling measured at
the start of the run (runtime/core/examples/isa_ceiling.rs, same thread count).

See bench/README.md. Usage (from the repository root, after `make bench-setup` and
`cargo build --release`):

  .venv-bench/bin/python bench/side_by_side.py --rounds 5 --threads 2
"""

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file
from torch.ao.quantization import (
    DeQuantStub,
    QuantStub,
    convert,
    fuse_modules,
    get_default_qconfig,
    prepare,
)

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"

# --------------------------------------------------------------------------------------------
# The PyTorch networks. Parameter names equal torchvision's (resnet18: the 122 keys of
# torchvision.models.resnet18().state_dict(), which are qc's example keys too).
# --------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """torchvision.models.resnet.BasicBlock, made quantizable as torchvision.models.quantization
    does: the residual add and its relu go through a FloatFunctional (add_relu)."""

    def __init__(self, inp, ch, stride=1, downsample=False):
        super().__init__()
        self.conv1 = nn.Conv2d(inp, ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(ch)
        self.downsample = (
            nn.Sequential(nn.Conv2d(inp, ch, 1, stride=stride, bias=False), nn.BatchNorm2d(ch))
            if downsample
            else None
        )
        self.skip_add_relu = nn.quantized.FloatFunctional()  # no parameters, no keys

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        skip = self.downsample(x) if self.downsample is not None else x
        return self.skip_add_relu.add_relu(out, skip)

    def fuse(self):
        fuse_modules(self, [["conv1", "bn1", "relu"], ["conv2", "bn2"]], inplace=True)
        if self.downsample is not None:
            fuse_modules(self.downsample, [["0", "1"]], inplace=True)


class ResNet18(nn.Module):
    def __init__(self, num_classes=1000):
        super().__init__()
        self.quant = QuantStub()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = nn.Sequential(BasicBlock(64, 64), BasicBlock(64, 64))
        self.layer2 = nn.Sequential(BasicBlock(64, 128, 2, True), BasicBlock(128, 128))
        self.layer3 = nn.Sequential(BasicBlock(128, 256, 2, True), BasicBlock(256, 256))
        self.layer4 = nn.Sequential(BasicBlock(256, 512, 2, True), BasicBlock(512, 512))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)
        self.dequant = DeQuantStub()

    def forward(self, x):
        x = self.quant(x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.dequant(self.fc(x))

    def fuse(self):
        fuse_modules(self, [["conv1", "bn1", "relu"]], inplace=True)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                block.fuse()


class OneConv(nn.Module):
    """QuantStub -> nn.Conv2d(ch, ch, 3, padding=1) named `c` -> DeQuantStub."""

    def __init__(self, ch):
        super().__init__()
        self.quant = QuantStub()
        self.c = nn.Conv2d(ch, ch, 3, padding=1)
        self.dequant = DeQuantStub()

    def forward(self, x):
        return self.dequant(self.c(self.quant(x)))

    def fuse(self):
        pass


# --------------------------------------------------------------------------------------------
# Workloads
# --------------------------------------------------------------------------------------------

# name -> (recipe to include, model key for the shared artefacts, PyTorch constructor, input shape)
WORKLOADS = {
    "resnet18-b1": (REPO / "examples/resnet18.qrecipe", "resnet18", ResNet18, (1, 3, 224, 224)),
    "resnet18-b8": (REPO / "examples/resnet18.qrecipe", "resnet18", ResNet18, (8, 3, 224, 224)),
    "conv64": (BENCH / "conv64.qrecipe", "conv64", lambda: OneConv(64), (1, 64, 56, 56)),
    "conv256": (BENCH / "conv256.qrecipe", "conv256", lambda: OneConv(256), (1, 256, 14, 14)),
}

# Multiply-accumulates of the single-conv workloads (a direct 3x3 conv: out_c * in_c * 9 * H * W);
# their GMAC/s is this over the whole run's time (quantize and dequantize included). Winograd
# does fewer multiplies for the same result, so its GMAC/s is "direct-conv equivalent".
CONV_MACS = {"conv64": 64 * 64 * 9 * 56 * 56, "conv256": 256 * 256 * 9 * 14 * 14}

RUNTIMES = ("torch", "ort", "openvino", "qc")
TITLES = {"torch": "PyTorch", "ort": "ONNX Runtime", "openvino": "OpenVINO"}

# `qc run --bench K`'s last line:
#   bench: K rounds, median M ms/run, batch B, I img/s (min A, max Z ms; T threads)
BENCH_LINE = re.compile(
    r"bench:\s*(\d+)\s*rounds,\s*median\s*([0-9.eE+-]+)\s*ms/run,\s*batch\s*(\d+),\s*([0-9.eE+-]+)\s*img/s"
    r"(?:\s*\(min\s*([0-9.eE+-]+),\s*max\s*([0-9.eE+-]+)\s*ms;\s*(\d+)\s*threads\))?"
)
# `qc backends`: "  avx2        available" / "  amx   not available: why" / "runs: avx2 (...)"
BACKEND_LINE = re.compile(r"^\s+(scalar|avx2|avxvnni|avx512vnni|amx)\s+(available|not available: .*)$")
RUNS_LINE = re.compile(r"^\s*runs:\s*(\w+)")
# `qc run --profile`: "  0.981 ms  17.7%  c = qconv -> u8[...]  [avx2 (winograd)]"
PROFILE_LINE = re.compile(r"=\s*(\w+)\s*->.*\[([^\]]+)\]\s*$")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# OMP_WAIT_POLICY is for PyTorch's OpenMP (see README) and QC_ISA is set per column: qc runs
# without either from the caller's environment.
QC_ENV = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "QC_ISA")}


def qc_env(isa):
    """The environment of a `qc` subprocess forced onto kernel path `isa` (None: qc's choice)."""
    return QC_ENV if isa is None else {**QC_ENV, "QC_ISA": isa}


def run_qc(qc, *args, isa=None, capture=True):
    cmd = [str(qc), *map(str, args)]
    r = subprocess.run(cmd, capture_output=capture, text=True, env=qc_env(isa))
    if r.returncode != 0:
        pre = f"QC_ISA={isa} " if isa else ""
        raise SystemExit(
            f"failed ({r.returncode}): {pre}{' '.join(cmd)}\n{r.stdout or ''}{r.stderr or ''}"
        )
    return r.stdout


def qc_has_run(qc):
    r = subprocess.run([str(qc), "run", "--help"], capture_output=True, text=True)
    return r.returncode == 0


def qc_paths(qc):
    """qc's kernel paths from `qc backends` (QC_ISA unset): ({isa: None or why not}, best isa)."""
    paths, best = {}, None
    for line in run_qc(qc, "backends").splitlines():
        m = BACKEND_LINE.match(line)
        if m:
            paths[m.group(1)] = None if m.group(2) == "available" else m.group(2)[len("not available: "):]
        m = RUNS_LINE.match(line)
        if m:
            best = m.group(1)
    return paths, best


def choose_isas(requested, paths, best):
    """The qc columns: `--isa` (comma list) minus those this CPU lacks (with a note), or the best."""
    if requested is None:
        return [best]
    chosen = []
    for isa in (i.strip().lower() for i in requested.split(",") if i.strip()):
        if isa not in paths:
            raise SystemExit(f"--isa {isa}: unknown; qc knows {', '.join(paths)}")
        if paths[isa] is not None:
            log(f"note: skipping qc with QC_ISA={isa}: this CPU cannot run it ({paths[isa]})")
        elif isa not in chosen:
            chosen.append(isa)
    return chosen


def qc_kernels(qc, qmodel, xfile, threads, isa):
    """The kernels `qc run --profile` names for the conv/linear steps (among its 15 slowest)."""
    out = run_qc(qc, "run", qmodel, "--input", xfile, "--threads", threads, "--profile", isa=isa)
    seen = []
    for line in out.splitlines():
        m = PROFILE_LINE.search(line)
        if m and m.group(1) in ("qconv", "qlinear") and m.group(2) not in seen:
            seen.append(m.group(2))
    return ", ".join(seen) or "?"


def ceiling_binary(path):
    """The isa_ceiling example: `path`, built by cargo if it is missing."""
    if not path.exists():
        log(f"{path} missing: cargo build --release -p qc-runtime --example isa_ceiling")
        subprocess.run(
            ["cargo", "build", "--release", "--quiet", "-p", "qc-runtime", "--example", "isa_ceiling"],
            cwd=REPO,
            check=True,
        )
    return path


def measure_ceilings(binary, threads):
    """{path: GMAC/s or 'not available: why'} of the tight-loop ceilings on `threads` threads."""
    out = subprocess.run(
        [str(binary), "--threads", str(threads), "--repeats", "10", "--json"], capture_output=True, text=True, check=True
    ).stdout
    paths = json.loads(out)["paths"]
    order = ("avx2", "avxvnni", "avx512vnni", "amx")
    return {
        p: paths[p]["gmacs"] if "gmacs" in paths[p] else f"not available: {paths[p]['unavailable']}"
        for p in sorted(paths, key=lambda p: order.index(p) if p in order else len(order))
    }


def prepare_model(qc, recipe, key, out, rebuild):
    """Float weights (qc export-weights), a recipe that binds them, and the compiled int8 model.
    Reused while newer than the qc binary and the recipe (and not --rebuild)."""
    weights = out / f"{key}.float.safetensors"
    bound = out / f"{key}.bound.qrecipe"
    qmodel = out / f"{key}.qmodel"
    newest_input = max(Path(qc).stat().st_mtime, recipe.stat().st_mtime)
    fresh = lambda p: p.exists() and p.stat().st_mtime >= newest_input  # noqa: E731
    if rebuild or not fresh(weights):
        log(f"[{key}] qc export-weights {recipe.name} --stage float")
        run_qc(qc, "export-weights", recipe, "--stage", "float", "-o", weights)
    if rebuild or not fresh(qmodel) or qmodel.stat().st_mtime < weights.stat().st_mtime:
        # The weights line is relative to the bound recipe's folder (out/).
        bound.write_text(f'include "{recipe.resolve()}"\nweights "{weights.name}"\n')
        log(f"[{key}] qc compile {bound.name} -o {qmodel.name} (calibration may take a while)")
        t = time.perf_counter()
        run_qc(qc, "compile", bound, "-o", qmodel)
        log(f"[{key}] compiled in {time.perf_counter() - t:.1f} s")
    return weights, qmodel


def up_to_date(path, source, rebuild):
    """Whether a derived file can be reused: it exists, is newer than `source`, no --rebuild."""
    return not rebuild and path.exists() and path.stat().st_mtime >= source.stat().st_mtime


def calibration_batches(shape, n, seed):
    """The `n` random batch-1 calibration inputs shared by PyTorch, ONNX Runtime and NNCF."""
    g = torch.Generator().manual_seed(seed + 1)
    return [torch.randn(1, *shape[1:], generator=g).numpy() for _ in range(n)]


def float_module(ctor, weights):
    """The float PyTorch module with the safetensors weights (strict), in eval mode."""
    model = ctor()
    model.load_state_dict(load_file(str(weights)), strict=True)
    return model.eval()


def torch_int8(ctor, weights, calib, seed):
    """Eager-mode PTQ: load qc's float weights, fuse, x86 qconfig, calibrate, convert."""
    torch.manual_seed(seed)
    model = float_module(ctor, weights)
    with warnings.catch_warnings():
        # torch.ao.quantization's eager mode warns that it moves to torchao; it still works.
        warnings.simplefilter("ignore")
        model.fuse()
        model.qconfig = get_default_qconfig("x86")
        prepare(model, inplace=True)
        with torch.inference_mode():
            for b in calib:
                model(torch.from_numpy(b))
        convert(model, inplace=True)
    return model


def export_onnx(float_model, shape, weights, path, rebuild):
    """The float module as ONNX (opset 17, TorchScript exporter, batch dimension dynamic; batch
    norms folded into the convs by the exporter), input `x`, output `y`."""
    if up_to_date(path, weights, rebuild):
        return path
    log(f"export {path.name}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated; still supported
        torch.onnx.export(
            float_model,
            (torch.zeros(1, *shape[1:]),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
        )
    return path


def ort_int8(float_onnx, calib, path, rebuild):
    """ONNX Runtime static quantization of `float_onnx`: QDQ, per-channel s8 weights, u8
    activations, min/max calibration on `calib` (after ONNX Runtime's pre-processing)."""
    if up_to_date(path, float_onnx, rebuild):
        return path
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            b = next(self.it, None)
            return None if b is None else {"x": b}

    log(f"ONNX Runtime quantize_static -> {path.name}")
    prep = path.with_suffix(".prep.onnx")
    quant_pre_process(str(float_onnx), str(prep))
    quantize_static(
        str(prep),
        str(path),
        Batches(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return path


def openvino_int8(float_onnx, calib, path, rebuild):
    """NNCF post-training quantization (`nncf.quantize` with its defaults: performance preset,
    per-channel weights) of the ONNX model as OpenVINO reads it, calibrated on `calib`; saved as
    OpenVINO IR (`path`, .xml + .bin)."""
    import openvino as ov

    if up_to_date(path, float_onnx, rebuild):
        return path
    import nncf

    log(f"NNCF quantize -> {path.name}")
    model = ov.Core().read_model(str(float_onnx))
    quantized = nncf.quantize(model, nncf.Dataset(calib))
    ov.save_model(quantized, str(path), compress_to_fp16=False)
    return path


def ort_session(path, threads):
    """A CPU session of `path` on `threads` intra-op threads (one inter-op), all optimizations,
    no spinning under OMP_WAIT_POLICY=PASSIVE; returns x -> output."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
        # The same request as PyTorch's OpenMP gets: idle threads sleep instead of spinning.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return lambda x: sess.run(None, {"x": x})[0]


def openvino_compiled(path, shape, threads):
    """The IR at `path` reshaped to `shape`, compiled for CPU (latency hint, `threads`
    inference threads); returns x -> output."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    model.reshape({model.inputs[0].get_any_name(): list(shape)})
    compiled = core.compile_model(
        model, "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    )
    request = compiled.create_infer_request()
    out = compiled.output(0)
    return lambda x: request.infer({0: x})[out]


class InProcess:
    """A column timed in this process: `fn(x)` runs the model once."""

    def __init__(self, key, title, fn, x):
        self.key, self.title, self.fn, self.x = key, title, fn, x
        self.kernel = None

    def output(self):
        return np.asarray(self.fn(self.x))

    def time(self, iters, warmup=2):
        """(median ms, fastest ms) of `iters` runs after `warmup` untimed ones."""
        for _ in range(warmup):
            self.fn(self.x)
        times = []
        for _ in range(iters):
            t = time.perf_counter()
            self.fn(self.x)
            times.append(time.perf_counter() - t)
        return statistics.median(times) * 1e3, min(times) * 1e3


class QcColumn:
    """A qc column: `qc run` subprocesses with QC_ISA=isa; `kernel` says which kernels it ran."""

    def __init__(self, qc, qmodel, xfile, threads, isa, out):
        self.qc, self.qmodel, self.xfile, self.threads, self.isa, self.out = qc, qmodel, xfile, threads, isa, out
        self.key, self.title = f"qc:{isa}", f"qc {isa}"
        self.kernel = qc_kernels(qc, qmodel, xfile, threads, isa)

    def output(self):
        yfile = self.out / f"{self.xfile.stem}.qc-{self.isa}.y.npy"
        run_qc(
            self.qc, "run", self.qmodel, "--input", self.xfile, "--output", yfile,
            "--threads", self.threads, isa=self.isa,
        )  # fmt: skip
        return np.load(yfile)

    def time(self, iters):
        """(median ms, fastest ms) from `qc run --bench iters` (3 warm-up runs of its own)."""
        out = run_qc(
            self.qc, "run", self.qmodel, "--input", self.xfile, "--threads", self.threads,
            "--bench", iters, isa=self.isa,
        )  # fmt: skip
        for line in reversed(out.strip().splitlines()):
            m = BENCH_LINE.search(line)
            if m:
                if m.group(7) is not None and int(m.group(7)) != self.threads:
                    raise SystemExit(f"qc ran with {m.group(7)} threads, not {self.threads}: {line}")
                median = float(m.group(2))
                return median, float(m.group(5)) if m.group(5) is not None else median
        raise SystemExit(f"no `bench:` line in the output of qc run:\n{out}")


def agreement(a, b):
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))
    return cos, float(np.abs(a - b).max())


def available_runtimes(requested):
    """The `--runtimes` columns whose Python packages import (a note for each that does not)."""
    modules = {"ort": "onnxruntime", "openvino": "openvino"}
    keep = []
    for r in requested:
        mod = modules.get(r)
        if mod is not None:
            try:
                __import__(mod)
                if r == "openvino":
                    __import__("nncf")
            except ImportError as e:
                log(f"note: no {TITLES[r]} column ({e}); `make bench-setup` installs it")
                continue
        keep.append(r)
    return keep


def build_columns(name, args, runtimes, isas, qc, out):
    """The columns of workload `name`, its input, and each column's agreement note."""
    recipe, key, ctor, shape = WORKLOADS[name]
    weights, qmodel = prepare_model(qc, recipe, key, out, args.rebuild)  # qc's weights serve all
    rng = np.random.default_rng(args.seed)
    x_np = rng.standard_normal(shape, dtype=np.float32)
    xfile = out / f"{name}.x.npy"
    np.save(xfile, x_np)
    calib = calibration_batches(shape, args.calib_batches, args.seed)
    float_model = float_module(ctor, weights)
    with torch.inference_mode():
        y_float = float_model(torch.from_numpy(x_np)).numpy()

    columns = []
    if "torch" in runtimes:
        log(f"[{name}] PyTorch eager-mode PTQ ({len(calib)} random calibration batches)")
        model = torch_int8(ctor, weights, calib, args.seed)

        def run_torch(x, model=model):
            with torch.inference_mode():
                return model(x).numpy()

        columns.append(InProcess("torch", "PyTorch", run_torch, torch.from_numpy(x_np)))
    if "ort" in runtimes or "openvino" in runtimes:
        tag = f"c{args.calib_batches}s{args.seed}"
        onnx_float = export_onnx(float_model, shape, weights, out / f"{key}.float.onnx", args.rebuild)
        if "ort" in runtimes:
            q = ort_int8(onnx_float, calib, out / f"{key}.ort-int8.{tag}.onnx", args.rebuild)
            columns.append(InProcess("ort", "ONNX Runtime", ort_session(q, args.threads), x_np))
        if "openvino" in runtimes:
            q = openvino_int8(onnx_float, calib, out / f"{key}.ov-int8.{tag}.xml", args.rebuild)
            fn = openvino_compiled(q, shape, args.threads)
            columns.append(InProcess("openvino", "OpenVINO", fn, x_np))
    if "qc" in runtimes:
        columns += [QcColumn(qc, qmodel, xfile, args.threads, isa, out) for isa in isas]

    notes = []
    y_torch = None
    for col in columns:
        y = col.output()
        if y.shape != y_float.shape:
            notes.append(f"{col.title} output shape {y.shape} != {y_float.shape}")
            continue
        notes.append(f"{col.title} vs float cos {agreement(y, y_float)[0]:.4f}")
        if col.key == "torch":
            y_torch = y
        elif col.key.startswith("qc") and y_torch is not None:
            notes[-1] += f" (vs PyTorch int8 cos {agreement(y, y_torch)[0]:.4f})"
    return columns, shape[0], "; ".join(notes)


def run_rounds(name, columns, args):
    """Probe each column for its runs per block, then `--rounds` rounds of one block each, the
    order rotating; returns {key: [(median ms, fastest ms) per round]}."""
    clamp = lambda n: max(args.min_iters, min(args.max_iters, int(n)))  # noqa: E731
    iters = {}
    for col in columns:
        probe, _ = col.time(3)
        iters[col.key] = clamp(args.block_seconds * 1e3 / probe)
    log(f"[{name}] runs per block: " + ", ".join(f"{c.title} {iters[c.key]}" for c in columns))
    got = {c.key: [] for c in columns}
    for r in range(args.rounds):
        k = r % len(columns)
        order = columns[k:] + columns[:k]
        for col in order:
            got[col.key].append(col.time(iters[col.key]))
        log(
            f"[{name}] round {r + 1}/{args.rounds}: "
            + ", ".join(f"{c.title} {got[c.key][-1][0]:.3f} ms" for c in order)
        )
    return got


def summarize(name, batch, columns, got, load, note):
    """Per column: median ms, fastest ms; per qc column: the median per-round ratio to others."""
    rows = {}
    for col in columns:
        per_round = got[col.key]
        rows[col.key] = dict(
            title=col.title,
            ms=statistics.median(m for m, _ in per_round),
            best=min(b for _, b in per_round),
            kernel=col.kernel,
        )
    ratios = {}
    for q in (c for c in columns if c.key.startswith("qc:")):
        ratios[q.key] = {
            o.key: statistics.median(a[0] / b[0] for a, b in zip(got[o.key], got[q.key]))
            for o in columns
            if not o.key.startswith("qc:")
        }
    return dict(name=name, batch=batch, rows=rows, ratios=ratios, load=load, note=note)


def ceiling_of(key, ceilings):
    """The ceiling a column's GMAC/s is compared with: a qc column's own path; for the other
    runtimes the best path measured here. Returns (path, GMAC/s) or (None, None)."""
    measured = {p: g for p, g in ceilings.items() if isinstance(g, float)}
    if key.startswith("qc:"):
        p = key[3:]
        return (p, measured[p]) if p in measured else (None, None)
    if not measured:
        return None, None
    p = max(measured, key=measured.get)
    return p, measured[p]


def fmt(v, p=3):
    return "-" if v is None else f"{v:.{p}f}"


def print_report(results, ceilings, args, cpu, omp_policy):
    print()
    print(
        f"{args.rounds} interleaved rounds, {args.threads} threads, {cpu}; torch {torch.__version__} "
        f"(engine x86, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"OMP_WAIT_POLICY={omp_policy}){runtime_versions()}"
    )
    print(
        f"int8 MAC ceilings ({args.threads} threads, isa_ceiling): "
        + ("; ".join(f"{p} {g:.1f} GMAC/s" if isinstance(g, float) else f"{p} {g}" for p, g in ceilings.items())
           or "not measured")
    )
    print()
    print("| workload | runtime | kernels | ms | best ms | img/s | GMAC/s | ceiling path | % of ceiling | load |")
    print("|---|---|---|---:|---:|---:|---:|---|---:|---:|")
    for r in results:
        for key, row in r["rows"].items():
            macs = CONV_MACS.get(r["name"])
            gmacs = macs / row["ms"] / 1e6 if macs else None
            path, ceil = ceiling_of(key, ceilings) if macs else (None, None)
            share = 100 * gmacs / ceil if gmacs and ceil else None
            print(
                f"| {r['name']} | {row['title']} | {row['kernel'] or '-'} | {row['ms']:.3f} | {row['best']:.3f} "
                f"| {r['batch'] * 1e3 / row['ms']:.0f} | {fmt(gmacs, 1)} | {path or '-'} "
                f"| {fmt(share, 0)} | {r['load']:.1f} |"
            )
    others = [k for k in ("torch", "ort", "openvino") if any(k in r["rows"] for r in results)]
    if any(r["ratios"] for r in results) and others:
        print()
        print("ratio = other ms / qc ms, median of the per-round ratios (> 1: qc faster)")
        print()
        print("| workload | qc path | " + " | ".join(f"vs {TITLES[k]}" for k in others) + " |")
        print("|---|---|" + "---:|" * len(others))
        for r in results:
            for q, vs in r["ratios"].items():
                cells = " | ".join(fmt(vs.get(k), 2) for k in others)
                print(f"| {r['name']} | {q[3:]} | {cells} |")
    print()
    print("Agreement (cosine similarity of the outputs to PyTorch's float output of the same weights):")
    for r in results:
        print(f"  {r['name']}: {r['note']}")


def runtime_versions():
    """", onnxruntime X, openvino Y, nncf Z" for the packages that import."""
    parts = []
    for mod in ("onnxruntime", "openvino", "nncf"):
        try:
            m = __import__(mod)
            parts.append(f"{mod} {getattr(m, '__version__', '?').split('-')[0]}")
        except ImportError:
            pass
    return "".join(f", {p}" for p in parts)


def cpu_name():
    return next(
        (l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
        platform.processor(),
    )


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qc", default=str(REPO / "target/release/qc"), help="the qc binary")
    ap.add_argument(
        "--ceiling",
        default=str(REPO / "target/release/examples/isa_ceiling"),
        help="the isa_ceiling example binary (built by cargo if missing)",
    )
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per workload")
    ap.add_argument("--threads", type=int, default=2, help="threads for every runtime")
    ap.add_argument(
        "--runtimes",
        default=",".join(RUNTIMES),
        help="comma list of columns: torch, ort, openvino, qc (default all)",
    )
    ap.add_argument(
        "--isa",
        default=None,
        help="comma list of qc kernel paths, one qc column each, run with QC_ISA=<isa> "
        "(scalar, avx2, avxvnni, avx512vnni, amx; default: the best this CPU has)",
    )
    ap.add_argument(
        "--block-seconds",
        type=float,
        default=1.0,
        help="about how long one timing block of one column runs (sets its run count)",
    )
    ap.add_argument("--min-iters", type=int, default=5)
    ap.add_argument("--max-iters", type=int, default=2000)
    ap.add_argument("--calib-batches", type=int, default=4, help="calibration batches (PyTorch, ORT, NNCF)")
    ap.add_argument("--out", default=str(BENCH / "out"), help="folder for weights, models, inputs")
    ap.add_argument("--rebuild", action="store_true", help="re-export, requantize and recompile the models")
    ap.add_argument("--torch-only", action="store_true", help="time PyTorch only (= --runtimes torch)")
    ap.add_argument("--no-ceiling", action="store_true", help="skip the ceiling measurement")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("workloads", nargs="*", default=list(WORKLOADS), help=" ".join(WORKLOADS))
    args = ap.parse_args()
    for w in args.workloads:
        if w not in WORKLOADS:
            ap.error(f"unknown workload {w!r}; choose from {', '.join(WORKLOADS)}")
    args.runtimes = ["torch"] if args.torch_only else [r.strip() for r in args.runtimes.split(",") if r.strip()]
    for r in args.runtimes:
        if r not in RUNTIMES:
            ap.error(f"unknown runtime {r!r}; choose from {', '.join(RUNTIMES)}")
    return args


def main():
    args = parse_args()
    qc = Path(args.qc)
    if not qc.exists():
        raise SystemExit(f"{qc} not found: build it first (cargo build --release)")
    if "qc" in args.runtimes and not qc_has_run(qc):
        raise SystemExit(f"{qc} has no `run` command; pass --runtimes without qc")
    runtimes = available_runtimes(args.runtimes)
    isas = []
    if "qc" in runtimes:
        paths, best = qc_paths(qc)
        isas = choose_isas(args.isa, paths, best)
        if not isas:
            log("note: no qc path of --isa runs on this CPU: no qc column")
            runtimes.remove("qc")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    torch.backends.quantized.engine = "x86"
    torch.set_num_threads(args.threads)
    omp_policy = os.environ.get("OMP_WAIT_POLICY", "unset")
    cpu = cpu_name()
    log(
        f"torch {torch.__version__}, engine {torch.backends.quantized.engine}, "
        f"{torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"{cpu}, {os.cpu_count()} CPUs, OMP_WAIT_POLICY={omp_policy}; columns: "
        + ", ".join(r if r != "qc" else "qc (" + ", ".join(isas) + ")" for r in runtimes)
    )
    ceilings = {}
    if not args.no_ceiling:
        ceilings = measure_ceilings(ceiling_binary(Path(args.ceiling)), args.threads)
        log("ceilings: " + ", ".join(f"{p} {g:.1f} GMAC/s" if isinstance(g, float) else f"{p} {g}" for p, g in ceilings.items()))

    results = []
    for name in args.workloads:
        columns, batch, note = build_columns(name, args, runtimes, isas, qc, out)
        log(f"[{name}] {note}")
        load0 = os.getloadavg()[0]
        got = run_rounds(name, columns, args)
        load = (load0 + os.getloadavg()[0]) / 2
        results.append(summarize(name, batch, columns, got, load, note))
    print_report(results, ceilings, args, cpu, omp_policy)


if __name__ == "__main__":
    main()
