"""Trains the float model of per_layer_qat.qrecipe in PyTorch and saves its state_dict.

    make bench-setup
    .venv-bench/bin/python examples/per-layer-qat/train_float.py

writes examples/per-layer-qat/fashion_fp32.pth: an eager nn.Module (convolutions without bias,
each followed by BatchNorm2d) trained for 2 epochs on Fashion-MNIST (Debian's
dataset-fashion-mnist, pixels scaled to [0, 1] and normalized with mean 0.2860, std 0.3530 as
the recipe's input line says), Adam lr 1e-3, batch 128, seed 0, one thread for reproducibility.
It prints the test accuracy.
"""

import gzip
import os

import numpy as np
import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = "/usr/share/datasets/fashion-mnist"


def idx(name):
    with gzip.open(os.path.join(DATA, name), "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


class Net(nn.Module):
    """per_layer_qat.qrecipe's model, module for module (ReLUs and pools have no state)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.fc1 = nn.Linear(32 * 7 * 7, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = nn.functional.max_pool2d(torch.relu(self.bn2(self.conv2(x))), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    norm = lambda a: (torch.from_numpy(a.astype(np.float32) / 255.0).unsqueeze(1) - 0.2860) / 0.3530
    x, y = norm(idx("train-images-idx3-ubyte.gz")), torch.from_numpy(idx("train-labels-idx1-ubyte.gz").astype(np.int64))
    tx, ty = norm(idx("t10k-images-idx3-ubyte.gz")), torch.from_numpy(idx("t10k-labels-idx1-ubyte.gz").astype(np.int64))
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    for epoch in range(2):
        model.train()
        for xb, yb in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            acc = float((model(tx).argmax(1) == ty).float().mean()) * 100
        print(f"epoch {epoch + 1}: test accuracy {acc:.2f}%")
    path = os.path.join(HERE, "fashion_fp32.pth")
    torch.save(model.state_dict(), path)
    print(f"wrote {os.path.relpath(path)} ({len(model.state_dict())} keys)")


if __name__ == "__main__":
    main()
