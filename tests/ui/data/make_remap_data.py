"""Writes the small checkpoints of the key-remapping UI cases (tests/ui/checkpoint_*.qrecipe,
tests/ui/weights_*.qrecipe): the two-layer model `fc1 = linear(x: 8 -> 4)`, `fc2 = linear(4 -> 2)`
saved as DataParallel would, with `fc2` renamed `head`, with an int64 weight, as an empty file
and as a bare pickle. Run from the repository root with `make bench-setup`'s Python:
    .venv-bench/bin/python tests/ui/data/make_remap_data.py
"""
import collections
import pickle

import torch
from safetensors.torch import save_file

torch.manual_seed(0)
sd = collections.OrderedDict(
    [
        ("fc1.weight", torch.randn(4, 8)),
        ("fc1.bias", torch.randn(4)),
        ("fc2.weight", torch.randn(2, 4)),
        ("fc2.bias", torch.randn(2)),
    ]
)
d = "tests/ui/data/"
save_file({"module." + k: v for k, v in sd.items()}, d + "mlp_dataparallel.safetensors")
save_file({k.replace("fc2.", "head."): v for k, v in sd.items()}, d + "mlp_renamed.safetensors")
save_file({k: (v * 100).long() if k == "fc1.weight" else v for k, v in sd.items()}, d + "mlp_int64.safetensors")
# The model's own keys under `module.`, as a .pth (torch.save's zip format).
torch.save(collections.OrderedDict(("module." + k, v) for k, v in sd.items()), d + "mlp_dataparallel.pth")
open(d + "empty.pth", "wb").close()
with open(d + "raw_pickle.pth", "wb") as f:
    pickle.dump({k: v.tolist() for k, v in sd.items()}, f, protocol=2)
