"""Runs an ONNX model exported by `qc export --onnx` with ONNX Runtime (CPU, all graph
optimizations) on the inputs of a .npy file (or IDX images, `*-ubyte.gz`, as `qc run` reads
them) and writes the first output as .npy, after ONNX's full model check. Also prints the op
types of the optimized graph ONNX Runtime runs.

Usage: run_ort.py MODEL.onnx INPUT.npy OUTPUT.npy [OPTIMIZED.onnx [QC.npy SCALE ZP QMIN QMAX]]

With the last five, compares qc's output (`qc run --output QC.npy`) with ONNX Runtime's in the
quantized domain: both requantized with the model's output parameters, and prints the share of
equal elements and the largest difference in output steps.
"""
import gzip
import sys
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort


def read_idx(path):
    """An IDX file (gzipped or not) as a numpy array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if data[:3] != b"\x00\x00\x08":
        sys.exit(f"{path}: not an IDX file of unsigned bytes")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(data[3])]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * len(dims)).reshape(dims)


def main():
    model, inp, out = sys.argv[1:4]
    onnx.checker.check_model(model, full_check=True)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if len(sys.argv) > 4:
        opts.optimized_model_filepath = sys.argv[4]
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    x = read_idx(inp) if "-ubyte" in inp else np.load(inp)
    rank = len(sess.get_inputs()[0].shape)
    if x.ndim == rank - 1:
        x = x[:, None]  # IDX images [N, H, W] as [N, 1, H, W]
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    name = sess.get_inputs()[0].name
    y = sess.run(None, {name: x.astype(np.float32)})[0]
    np.save(out, y)
    if len(sys.argv) > 4:
        ops = Counter(n.op_type for n in onnx.load(sys.argv[4]).graph.node)
        print("onnxruntime", ort.__version__, "optimized graph:", dict(sorted(ops.items())))
    if len(sys.argv) > 5:
        qc = np.load(sys.argv[5])
        scale, zp = np.float32(sys.argv[6]), int(sys.argv[7])
        qmin, qmax = int(sys.argv[8]), int(sys.argv[9])

        def requant(v):
            return np.clip(np.rint(v.astype(np.float64) / scale) + zp, qmin, qmax).astype(np.int64)

        if qc.shape != y.shape:
            sys.exit(f"shapes differ: qc {qc.shape}, onnxruntime {y.shape}")
        d = np.abs(requant(qc) - requant(y))
        print(f"agreement: {100.0 * np.mean(d == 0):.2f}% equal, max {int(d.max())} steps, "
              f"{d.size} elements")
        if y.ndim == 2:
            top1 = np.mean(qc.argmax(axis=1) == y.argmax(axis=1))
            print(f"top-1 agreement: {100.0 * top1:.2f}%")


if __name__ == "__main__":
    main()
