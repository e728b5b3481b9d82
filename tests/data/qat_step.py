"""Writes tests/data/fashion_cnn.qat_step.safetensors: what PyTorch 2.11's eager-mode QAT does
with the fashion_cnn QAT fixture (fashion_cnn.qat.pth, from generate.py), for tests/qat.rs.

Run from the repository root with PyTorch 2.11.0 (see GENERATE.md):

    python tests/data/qat_step.py

Keys written:
  x             f32 [8, 1, 28, 28]  inputs (torch.Generator seeded 2024, randn)
  y             i64 [8]             labels (randint 0..10, same generator)
  eval_logits   f32 [8, 10]         model.eval() with observers disabled (disable_observer)
  loss          f32 [1]             cross-entropy of the train-mode forward, observers on
  after.<key>   the whole state_dict after one torch.optim.SGD(lr=0.05, momentum=0.9) step on
                that batch, starting from fashion_cnn.qat.pth
"""

import os
import sys
import warnings

import torch
import torch.ao.quantization as tq
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from generate import FashionCNN, OUT  # noqa: E402


def main():
    print(f"torch {torch.__version__}")
    torch.backends.quantized.engine = "x86"
    torch.use_deterministic_algorithms(True, warn_only=True)
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    model = FashionCNN()
    model.train()
    model.qconfig = tq.get_default_qat_qconfig("x86")
    tq.fuse_modules_qat(model, model.fuse, inplace=True)
    tq.prepare_qat(model, inplace=True)
    model.load_state_dict(torch.load(os.path.join(OUT, "fashion_cnn.qat.pth"), weights_only=True))

    g = torch.Generator().manual_seed(2024)
    x = torch.randn(8, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (8,), generator=g)

    model.eval()
    model.apply(tq.disable_observer)
    with torch.no_grad():
        eval_logits = model(x)
    model.apply(tq.enable_observer)
    model.train()

    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()

    out = {"x": x, "y": y, "eval_logits": eval_logits, "loss": loss.detach().reshape(1)}
    for k, v in model.state_dict().items():
        out[f"after.{k}"] = v.detach().contiguous()
    path = os.path.join(OUT, "fashion_cnn.qat_step.safetensors")
    save_file(out, path)
    print(f"loss {loss.item():.6f}; wrote {len(out)} tensors to {path}")


if __name__ == "__main__":
    sys.exit(main())
