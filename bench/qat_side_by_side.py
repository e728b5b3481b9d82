#!/usr/bin/env python3
"""One QAT epoch of fashion_cnn: PyTorch eager mode against `qc train --qat`, interleaved.

Both sides start from the same float weights (qc's, from `qc train`, loaded into the PyTorch
module under the same names), train one quantization-aware epoch on the same Fashion-MNIST
samples with the same settings (the recipe's `qat` section: SGD lr 1e-4, momentum 0.9, batch 64,
normalization 0.2860/0.3530; PyTorch: `fuse_modules_qat` on conv+bn+relu and fc1+relu3,
`get_default_qat_qconfig("x86")`, `prepare_qat`), with the same libtorch thread count. Only the
training loop is timed (qc: the epoch's training seconds it prints; PyTorch: forward, backward
and step over the epoch), not start-up or evaluation.

Each round runs both, alternating which goes first; the report gives each side's median and the
median of the per-round ratios qc / PyTorch (< 1: qc faster; the issue's target is <= 1.1).

Usage (from the repository root, after `cargo build --release`):

  .venv-bench/bin/python bench/qat_side_by_side.py --rounds 3 --threads 2
  .venv-bench/bin/python bench/qat_side_by_side.py --rounds 3 --max-samples 20000
"""

import argparse
import gzip
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.ao.quantization as tq
import torch.nn.functional as F
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "data"))
from generate import FashionCNN  # noqa: E402

DATA = Path("/usr/share/datasets/fashion-mnist")
MEAN, STD = 0.2860, 0.3530


def idx(path):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def splitmix_order(n, seed):
    """qc's epoch order (Fisher-Yates on SplitMix64 seeded by seed + epoch, epoch 0)."""
    state = seed & 0xFFFFFFFFFFFFFFFF
    order = list(range(n))
    mask = 0xFFFFFFFFFFFFFFFF
    for i in range(n - 1, 0, -1):
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        z ^= z >> 31
        j = z % (i + 1)
        order[i], order[j] = order[j], order[i]
    return order


def torch_epoch(weights, x, y, order, batch):
    model = FashionCNN()
    model.load_state_dict(load_file(weights), strict=False)
    model.train()
    model.qconfig = tq.get_default_qat_qconfig("x86")
    tq.fuse_modules_qat(model, model.fuse, inplace=True)
    tq.prepare_qat(model, inplace=True)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    idx_t = torch.tensor(order)
    start = time.perf_counter()
    for b in range(0, len(order), batch):
        sel = idx_t[b : b + batch]
        loss = F.cross_entropy(model(x[sel]), y[sel])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def qc_epoch(qc, recipe, out, samples):
    cmd = [qc, "train", str(recipe), "--qat", "-o", str(out), "--device", "cpu", "--max-samples", str(samples)]
    text = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    m = re.search(r"^epoch 1/1 .* ([0-9.]+) s \(\+", text, re.M)
    if not m:
        sys.exit(f"cannot read the epoch time from qc:\n{text}")
    return float(m.group(1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--max-samples", type=int, default=60000)
    ap.add_argument("--qc", default=str(REPO / "target" / "release" / "qc"))
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.backends.quantized.engine = "x86"
    torch.set_num_threads(args.threads)

    tmp = Path(tempfile.mkdtemp(prefix="qat_bench_"))
    text = (REPO / "examples" / "fashion_cnn.qrecipe").read_text()
    text = text.replace("  seed: 1\n", f"  seed: 1\n  threads: {args.threads}\n")
    (tmp / "float.qrecipe").write_text(text)
    fp32 = tmp / "fp32.safetensors"
    print(f"float weights: qc train (1 epoch on {min(args.max_samples, 20000)} samples) ...", flush=True)
    subprocess.run(
        [args.qc, "train", str(tmp / "float.qrecipe"), "-o", str(fp32), "--epochs", "1",
         "--max-samples", str(min(args.max_samples, 20000)), "--device", "cpu"],
        check=True, capture_output=True,
    )
    (tmp / "qat.qrecipe").write_text(text + f'\nweights "{fp32}"\n')

    images = idx(DATA / "train-images-idx3-ubyte.gz")[: args.max_samples]
    labels = idx(DATA / "train-labels-idx1-ubyte.gz")[: args.max_samples]
    x = (torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1) - MEAN) / STD
    y = torch.from_numpy(labels.astype(np.int64))
    order = splitmix_order(len(y), 1)

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"threads {args.threads}, {len(y)} samples, batch 64; load {os.getloadavg()[0]:.2f}")
    rows = []
    for r in range(args.rounds):
        if r % 2 == 0:
            t = torch_epoch(fp32, x, y, order, 64)
            q = qc_epoch(args.qc, tmp / "qat.qrecipe", tmp / "qat.safetensors", len(y))
        else:
            q = qc_epoch(args.qc, tmp / "qat.qrecipe", tmp / "qat.safetensors", len(y))
            t = torch_epoch(fp32, x, y, order, 64)
        rows.append((t, q))
        print(f"round {r + 1}: PyTorch {t:.2f} s, qc {q:.2f} s, qc/PyTorch {q / t:.3f}", flush=True)
    tm = statistics.median(t for t, _ in rows)
    qm = statistics.median(q for _, q in rows)
    ratio = statistics.median(q / t for t, q in rows)
    print(f"median: PyTorch {tm:.2f} s, qc {qm:.2f} s; ratio qc/PyTorch {ratio:.3f} (<= 1.1 is the target)")


if __name__ == "__main__":
    sys.exit(main())
