#!/usr/bin/env python3
"""PyTorch x86 int8 (eager-mode PTQ) against qc's `qc run`, side by side, interleaved.

For every workload both sides run the same network with the same float weights (qc's float
weights, exported with `qc export-weights` under PyTorch's names and loaded into the PyTorch
module) on the same input shape and thread count:

  resnet18-b1   ResNet-18, 1x3x224x224
  resnet18-b8   ResNet-18, 8x3x224x224
  conv64        conv 3x3 64->64 (bias), 1x64x56x56
  conv256       conv 3x3 256->256 (bias), 1x256x14x14

Both sides time float-in, float-out: PyTorch's model is QuantStub -> int8 network -> DeQuantStub,
as `qc run` takes and returns f32 tensors.

Each round runs a PyTorch timing block (in this process) and a qc timing block (a subprocess,
`qc run MODEL --input X --threads N --bench K`, whose last line is parsed), alternating which goes
first. A block's figure is the median over its K runs; the report gives, per workload, the median
over rounds of each side and the median of the per-round ratios torch_ms / qc_ms (> 1: qc faster).

See bench/README.md. Usage (from the repository root, after `cargo build --release`):

  .venv-bench/bin/python bench/side_by_side.py --rounds 5
"""

import argparse
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

# `qc run --bench K`'s last line:
#   bench: K rounds, median M ms/run, batch B, I img/s (min A, max Z ms; T threads)
BENCH_LINE = re.compile(
    r"bench:\s*(\d+)\s*rounds,\s*median\s*([0-9.eE+-]+)\s*ms/run,\s*batch\s*(\d+),\s*([0-9.eE+-]+)\s*img/s"
    r"(?:\s*\(min\s*([0-9.eE+-]+),\s*max\s*([0-9.eE+-]+)\s*ms;\s*(\d+)\s*threads\))?"
)


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# OMP_WAIT_POLICY is for PyTorch's OpenMP (see README); qc runs without it.
QC_ENV = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}


def run_qc(qc, *args, capture=True):
    cmd = [str(qc), *map(str, args)]
    r = subprocess.run(cmd, capture_output=capture, text=True, env=QC_ENV)
    if r.returncode != 0:
        raise SystemExit(
            f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stdout or ''}{r.stderr or ''}"
        )
    return r.stdout


def qc_has_run(qc):
    r = subprocess.run([str(qc), "run", "--help"], capture_output=True, text=True)
    return r.returncode == 0


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


def torch_int8(ctor, weights, shape, calib_batches, seed):
    """Eager-mode PTQ: load qc's float weights, fuse, x86 qconfig, calibrate, convert."""
    torch.manual_seed(seed)
    model = ctor()
    state = load_file(str(weights))
    model.load_state_dict(state, strict=True)
    model.eval()
    float_model = ctor()
    float_model.load_state_dict(state, strict=True)
    float_model.eval()
    with warnings.catch_warnings():
        # torch.ao.quantization's eager mode warns that it moves to torchao; it still works.
        warnings.simplefilter("ignore")
        model.fuse()
        model.qconfig = get_default_qconfig("x86")
        prepare(model, inplace=True)
        with torch.inference_mode():
            for _ in range(calib_batches):
                model(torch.randn(1, *shape[1:]))
        convert(model, inplace=True)
    return model, float_model


def time_torch(model, x, iters):
    times = []
    with torch.inference_mode():
        for _ in range(iters):
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3, min(times) * 1e3


def time_qc(qc, qmodel, xfile, threads, iters):
    out = run_qc(qc, "run", qmodel, "--input", xfile, "--threads", threads, "--bench", iters)
    for line in reversed(out.strip().splitlines()):
        m = BENCH_LINE.search(line)
        if m:
            if m.group(7) is not None and int(m.group(7)) != threads:
                raise SystemExit(f"qc ran with {m.group(7)} threads, not {threads}: {line}")
            median = float(m.group(2))
            return median, float(m.group(5)) if m.group(5) is not None else median
    raise SystemExit(f"no `bench:` line in the output of qc run:\n{out}")


def agreement(a, b):
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))
    return cos, float(np.abs(a - b).max())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qc", default=str(REPO / "target/release/qc"), help="the qc binary")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per workload")
    ap.add_argument("--threads", type=int, default=2, help="threads for both sides")
    ap.add_argument(
        "--block-seconds",
        type=float,
        default=1.0,
        help="about how long one timing block of one side runs (sets its run count)",
    )
    ap.add_argument("--min-iters", type=int, default=5)
    ap.add_argument("--max-iters", type=int, default=2000)
    ap.add_argument("--calib-batches", type=int, default=4, help="PyTorch calibration batches")
    ap.add_argument("--out", default=str(BENCH / "out"), help="folder for weights, models, inputs")
    ap.add_argument("--rebuild", action="store_true", help="re-export and recompile the models")
    ap.add_argument("--torch-only", action="store_true", help="time PyTorch only")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("workloads", nargs="*", default=list(WORKLOADS), help=" ".join(WORKLOADS))
    args = ap.parse_args()

    for w in args.workloads:
        if w not in WORKLOADS:
            ap.error(f"unknown workload {w!r}; choose from {', '.join(WORKLOADS)}")
    qc = Path(args.qc)
    if not qc.exists():
        raise SystemExit(f"{qc} not found: build it first (cargo build --release)")
    use_qc = not args.torch_only
    if use_qc and not qc_has_run(qc):
        raise SystemExit(f"{qc} has no `run` command; pass --torch-only to time PyTorch alone")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    torch.backends.quantized.engine = "x86"
    torch.set_num_threads(args.threads)
    omp_policy = os.environ.get("OMP_WAIT_POLICY", "unset")
    cpu = next(
        (l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
        platform.processor(),
    )
    log(
        f"torch {torch.__version__}, engine {torch.backends.quantized.engine}, "
        f"{torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"{cpu}, {os.cpu_count()} CPUs, OMP_WAIT_POLICY={omp_policy}"
    )

    results = []
    for name in args.workloads:
        recipe, key, ctor, shape = WORKLOADS[name]
        weights, qmodel = prepare_model(qc, recipe, key, out, args.rebuild)
        rng = np.random.default_rng(args.seed)
        x_np = rng.standard_normal(shape, dtype=np.float32)
        xfile = out / f"{name}.x.npy"
        np.save(xfile, x_np)
        x = torch.from_numpy(x_np)

        log(f"[{name}] PyTorch eager-mode PTQ ({args.calib_batches} random calibration batches)")
        model, float_model = torch_int8(ctor, weights, shape, args.calib_batches, args.seed)

        # Output agreement, once: both int8 outputs against PyTorch's float output.
        with torch.inference_mode():
            y_float = float_model(x).numpy()
            y_torch = model(x).numpy()
        note = f"torch int8 vs float: cos {agreement(y_torch, y_float)[0]:.4f}"
        if use_qc:
            yfile = out / f"{name}.qc.y.npy"
            run_qc(qc, "run", qmodel, "--input", xfile, "--output", yfile, "--threads", args.threads)
            y_qc = np.load(yfile)
            if y_qc.shape != y_float.shape:
                note += f"; qc output shape {y_qc.shape} != {y_float.shape}"
            else:
                c_f, _ = agreement(y_qc, y_float)
                c_t, _ = agreement(y_qc, y_torch)
                note += f"; qc int8 vs float: cos {c_f:.4f}; qc vs torch int8: cos {c_t:.4f}"
        log(f"[{name}] {note}")

        # Run counts from a short probe of each side: a block lasts about --block-seconds.
        clamp = lambda n: max(args.min_iters, min(args.max_iters, int(n)))  # noqa: E731
        time_torch(model, x, 3)  # warm-up
        probe_t, _ = time_torch(model, x, 5)
        k_torch = clamp(args.block_seconds * 1e3 / probe_t)
        if use_qc:
            probe_q, _ = time_qc(qc, qmodel, xfile, args.threads, 3)
            k_qc = clamp(args.block_seconds * 1e3 / probe_q)
        log(
            f"[{name}] probe: torch {probe_t:.3f} ms -> {k_torch} runs/block"
            + (f"; qc {probe_q:.3f} ms -> {k_qc} runs/block" if use_qc else "")
        )

        t_ms, q_ms, ratios, t_best, q_best = [], [], [], [], []
        load0 = os.getloadavg()[0]
        for r in range(args.rounds):
            order = ("torch", "qc") if r % 2 == 0 else ("qc", "torch")
            got = {}
            for side in order:
                if side == "torch":
                    time_torch(model, x, 2)  # warm-up after the other side ran
                    got["torch"], best = time_torch(model, x, k_torch)
                    t_best.append(best)
                elif use_qc:
                    got["qc"], best = time_qc(qc, qmodel, xfile, args.threads, k_qc)
                    q_best.append(best)
            t_ms.append(got["torch"])
            line = f"[{name}] round {r + 1}/{args.rounds} ({order[0]} first): torch {got['torch']:.3f} ms"
            if use_qc:
                q_ms.append(got["qc"])
                ratios.append(got["torch"] / got["qc"])
                line += f", qc {got['qc']:.3f} ms, ratio {ratios[-1]:.2f}"
            log(line)
        load = (load0 + os.getloadavg()[0]) / 2
        results.append(
            dict(
                name=name,
                batch=shape[0],
                t=statistics.median(t_ms),
                q=statistics.median(q_ms) if use_qc else None,
                ratio=statistics.median(ratios) if use_qc else None,
                t_best=min(t_best),
                q_best=min(q_best) if use_qc else None,
                load=load,
                note=note,
            )
        )

    fmt = lambda v, w, p=3: f"{v:{w}.{p}f}" if v is not None else f"{'-':>{w}}"  # noqa: E731
    print()
    print(
        f"{args.rounds} interleaved rounds, {args.threads} threads, torch {torch.__version__} "
        f"(engine x86, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"OMP_WAIT_POLICY={omp_policy}), {cpu}"
    )
    print(
        "ms: median over rounds of each block's median run; ratio: median of the per-round "
        "torch_ms / qc_ms (> 1: qc faster); best: fastest single run; load: 1-min load average"
    )
    print()
    print("| workload | PyTorch ms | qc ms | ratio | PyTorch img/s | qc img/s | PyTorch best ms | qc best ms | load |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        qi = r["batch"] * 1e3 / r["q"] if r["q"] is not None else None
        print(
            f"| {r['name']} | {fmt(r['t'], 0)} | {fmt(r['q'], 0)} | {fmt(r['ratio'], 0, 2)} "
            f"| {r['batch'] * 1e3 / r['t']:.0f} | {fmt(qi, 0, 0)} | {fmt(r['t_best'], 0)} "
            f"| {fmt(r['q_best'], 0)} | {r['load']:.1f} |"
        )
    print()
    for r in results:
        print(f"{r['name']}: {r['note']}")


if __name__ == "__main__":
    main()
