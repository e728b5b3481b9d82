"""PyTorch's eager float training of examples/fashion_cnn.qrecipe, beside qc's (`qc train`).

The same network (torch.nn's default initialisers), the same data (Debian's
dataset-fashion-mnist, pixels scaled to [0, 1] and normalized with the recipe's mean and std),
the same optimizer, learning rate, schedule, batch size and number of epochs as the recipe's
`train { }` section, a DataLoader that reshuffles every epoch and keeps the last partial batch.
It prints the test accuracy after each epoch for each seed, then runs `qc train` on the same
recipe and prints its figures beside them.

    make bench-setup && cargo build --release
    .venv-bench/bin/python bench/float_training_pytorch.py --seeds 1,2,3 --threads 2

`--recipe` picks another recipe with the same network; `--skip-qc` runs PyTorch alone.
"""

import argparse
import gzip
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = "/usr/share/datasets/fashion-mnist"


def idx(name):
    with gzip.open(os.path.join(DATA, name), "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


class FashionCNN(nn.Module):
    """examples/fashion_cnn.qrecipe's model, module for module."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.fc1 = nn.Linear(1568, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.avg_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def recipe_settings(path):
    """The recipe's `train { }` settings and the input's normalization."""
    text = open(path).read()
    norm = re.search(r"normalize\(mean:\s*([0-9.]+),\s*std:\s*([0-9.]+)\)", text)
    train = re.search(r"^train\s*\{(.*?)^\}", text, re.S | re.M).group(1)

    def get(key, default=None):
        m = re.search(rf"^\s*{key}:\s*([^\s/]+(?:\([^)]*\))?)", train, re.M)
        return m.group(1) if m else default

    opt = get("optimizer", "sgd")
    momentum = re.search(r"momentum:\s*([0-9.]+)", opt)
    return {
        "mean": float(norm.group(1)),
        "std": float(norm.group(2)),
        "epochs": int(get("epochs")),
        "lr": float(get("lr")),
        "batch_size": int(get("batch_size")),
        "optimizer": opt.split("(")[0],
        "momentum": float(momentum.group(1)) if momentum else 0.0,
        "schedule": get("schedule", "constant"),
    }


def train_pytorch(s, seed, x, y, tx, ty):
    torch.manual_seed(seed)
    model = FashionCNN()
    if s["optimizer"] == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=s["lr"])
    else:
        opt = torch.optim.SGD(model.parameters(), lr=s["lr"], momentum=s["momentum"])
    sched = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=s["epochs"])
        if s["schedule"] == "cosine"
        else None
    )
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y),
        batch_size=s["batch_size"],
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    accs = []
    started = time.perf_counter()
    for _ in range(s["epochs"]):
        model.train()
        for xb, yb in loader:
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
        if sched:
            sched.step()
        model.eval()
        with torch.no_grad():
            accs.append(float((model(tx).argmax(1) == ty).float().mean()) * 100)
    return accs, time.perf_counter() - started


def train_qc(recipe, seed):
    """`qc train` on the recipe with its seed replaced; the test accuracy after each epoch."""
    text = re.sub(r"(^\s*seed:\s*)\d+", rf"\g<1>{seed}", open(recipe).read(), flags=re.M)
    with tempfile.TemporaryDirectory() as d:
        r = os.path.join(d, os.path.basename(recipe))
        open(r, "w").write(text)
        started = time.perf_counter()
        out = subprocess.run(
            [os.path.join(ROOT, "target/release/qc"), "train", r, "-o", os.path.join(d, "w.safetensors")],
            capture_output=True,
            text=True,
            cwd=os.path.dirname(os.path.abspath(recipe)),
        )
        elapsed = time.perf_counter() - started
    if out.returncode != 0:
        sys.exit(f"qc train failed:\n{out.stderr}")
    accs = [float(a) for a in re.findall(r"test acc +([0-9.]+)%", out.stdout)]
    return accs, elapsed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default=os.path.join(ROOT, "examples/fashion_cnn.qrecipe"))
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-qc", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    s = recipe_settings(args.recipe)
    print(f"torch {torch.__version__}, {args.threads} threads; recipe {os.path.relpath(args.recipe, ROOT)}: {s}")
    norm = lambda a: (torch.from_numpy(a.astype(np.float32) / 255.0).unsqueeze(1) - s["mean"]) / s["std"]
    x, y = norm(idx("train-images-idx3-ubyte.gz")), torch.from_numpy(idx("train-labels-idx1-ubyte.gz").astype(np.int64))
    tx, ty = norm(idx("t10k-images-idx3-ubyte.gz")), torch.from_numpy(idx("t10k-labels-idx1-ubyte.gz").astype(np.int64))
    print("| seed | PyTorch test accuracy per epoch | PyTorch time | qc test accuracy per epoch | qc time |")
    print("| ---: | --- | ---: | --- | ---: |")
    finals = {"PyTorch": [], "qc": []}
    for seed in [int(v) for v in args.seeds.split(",")]:
        accs, t = train_pytorch(s, seed, x, y, tx, ty)
        finals["PyTorch"].append(accs[-1])
        row = f"| {seed} | {' / '.join(f'{a:.2f}%' for a in accs)} | {t:.1f} s |"
        if args.skip_qc:
            row += " | |"
        else:
            qaccs, qt = train_qc(args.recipe, seed)
            finals["qc"].append(qaccs[-1] if qaccs else float("nan"))
            row += f" {' / '.join(f'{a:.2f}%' for a in qaccs)} | {qt:.1f} s |"
        print(row, flush=True)
    for who, v in finals.items():
        if v:
            print(f"{who}: final test accuracy mean {np.mean(v):.2f}%, min {min(v):.2f}%, max {max(v):.2f}% over {len(v)} seeds")


if __name__ == "__main__":
    main()
