"""qc: run compiled int8 models in-process on numpy arrays, compile recipes, check checkpoints.

    import numpy as np
    import qc

    qc.compile("examples/fashion_cnn.qrecipe", output="fashion.qmodel")
    m = qc.load("fashion.qmodel")
    y = m.run(np.zeros((1, 1, 28, 28), np.float32))   # logits, shape (1, 10)

`qc.load` and `qc.Model` run a `.qmodel` on qc's own CPU kernels (no libtorch); `qc.compile`,
`qc.keys`, `qc.fates` and `qc.check_checkpoint` work on `.qrecipe` files as the `qc` command
does. Every error is a `qc.QcError` whose message is the text `qc` prints for it.
"""

from ._qc import (
    Model,
    QcError,
    __version__,
    check_checkpoint,
    compile,
    fates,
    keys,
    load,
)

__all__ = [
    "Model",
    "QcError",
    "__version__",
    "check_checkpoint",
    "compile",
    "fates",
    "keys",
    "load",
]
