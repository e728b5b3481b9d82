#!/usr/bin/env python3
"""Per-request latency at batch 1 from Python: qc's `Model.run` (the `qc` package, in-process)
against `qc run --bench` (the same model timed inside qc's own process) and against ONNX Runtime's
Python `InferenceSession` on the model `qc export --onnx` writes, interleaved over several rounds.

The Python overhead of one call is `Model.run` minus `qc run --bench`, on fashion_cnn and on a
model that does almost nothing (a 4 -> 2 linear layer), where nearly all of a call is overhead.

Run it with the interpreter that has the wheel installed (`make wheel`, then pip install it into
.venv-py, or `make test-python`):

    .venv-py/bin/python bench/python_latency.py --rounds 7 --threads 1
    .venv-py/bin/python bench/python_latency.py --help

ONNX Runtime runs in a worker process of another interpreter (`--ort-python`, default
.venv-ort/bin/python, which `make setup` makes; .venv-bench/bin/python works too), timed the same
way: warm-up calls, then a block of timed calls, median.
"""

import argparse
import json
import pathlib
import re
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "bench/out/python"

TINY = """model tiny {
  input x: f32[N, 4]
  fc = linear(x, out: 2)
  output fc
}

quantize {
  scheme    x86
  calibrate random(batches: 2)
}
"""


def fashion_recipe() -> pathlib.Path:
    """fashion_cnn with PyTorch's FP32 fixture weights, calibrated on 8 batches of Fashion-MNIST."""
    lines = []
    for line in (ROOT / "examples/fashion_cnn.qrecipe").read_text().splitlines():
        if line.strip().startswith("calibrate "):
            line = "  calibrate fashion_mnist(split: train) batches: 8"
        lines.append(line)
    lines.append(f'weights "{ROOT / "tests/data/fashion_cnn.fp32.pth"}"')
    path = OUT / "fashion_cnn_fp32.qrecipe"
    path.write_text("\n".join(lines) + "\n")
    return path


def block(fn, calls: int) -> float:
    """Two warm-up calls, then `calls` timed ones: the median in microseconds."""
    fn()
    fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - start)
    return statistics.median(times) / 1e3


def ort_worker(model: str, x_path: str, threads: int, calls: int, rounds: int) -> None:
    """In the ONNX Runtime interpreter: one session, then one block per line read from stdin."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    x = np.load(x_path)
    name = session.get_inputs()[0].name
    y = session.run(None, {name: x})[0]
    print(json.dumps({"version": ort.__version__, "output": y.tolist()}), flush=True)
    for _ in range(rounds):
        sys.stdin.readline()
        print(json.dumps({"us": block(lambda: session.run(None, {name: x}), calls)}), flush=True)


def qc_bench(qc_bin: pathlib.Path, model: pathlib.Path, x: pathlib.Path, threads: int, calls: int) -> float:
    """`qc run MODEL --input X --threads N --bench CALLS`: its median, in microseconds."""
    done = subprocess.run(
        [str(qc_bin), "run", str(model), "--input", str(x), "--threads", str(threads), "--bench", str(calls)],
        capture_output=True,
        text=True,
        check=True,
    )
    m = re.search(r"median ([0-9.]+) ms/run", done.stdout)
    if not m:
        sys.exit(f"cannot read the median of `qc run --bench`:\n{done.stdout}")
    return float(m.group(1)) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1, help="threads of every runtime (default 1)")
    ap.add_argument("--calls", type=int, default=2000, help="timed calls per block (default 2000)")
    ap.add_argument("--qc", default=str(ROOT / "target/release/qc"), help="the qc binary (default target/release/qc)")
    ap.add_argument("--ort-python", default=str(ROOT / ".venv-ort/bin/python"))
    ap.add_argument("--ort-worker", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ort_worker:
        model, x, threads, calls, rounds = args.ort_worker
        ort_worker(model, x, int(threads), int(calls), int(rounds))
        return

    import numpy as np

    import qc

    OUT.mkdir(parents=True, exist_ok=True)
    qc_bin = pathlib.Path(args.qc)
    if not qc_bin.is_file():
        sys.exit(f"no qc binary at {qc_bin}: `cargo build --release` makes it")
    fashion = OUT / "fashion_cnn.qmodel"
    qc.compile(fashion_recipe(), output=fashion)
    (OUT / "tiny.qrecipe").write_text(TINY)
    tiny = OUT / "tiny.qmodel"
    qc.compile(OUT / "tiny.qrecipe", output=tiny)
    onnx = OUT / "fashion_cnn.onnx"
    subprocess.run([str(qc_bin), "export", str(fashion), "--onnx", str(onnx)], check=True, capture_output=True)

    rng = np.random.default_rng(0)
    xs = {
        "fashion_cnn": rng.random((1, 1, 28, 28), dtype=np.float32),
        "tiny": rng.random((1, 4), dtype=np.float32),
    }
    paths = {"fashion_cnn": fashion, "tiny": tiny}
    for key, x in xs.items():
        np.save(OUT / f"{key}.x.npy", x)
    models = {key: qc.load(p, threads=args.threads) for key, p in paths.items()}

    worker = subprocess.Popen(
        [args.ort_python, __file__, "--ort-worker", str(onnx), str(OUT / "fashion_cnn.x.npy"),
         str(args.threads), str(args.calls), str(args.rounds)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    hello = json.loads(worker.stdout.readline())
    ort_y = np.array(hello["output"], dtype=np.float32)
    qc_y = models["fashion_cnn"].run(xs["fashion_cnn"])
    agree = int((ort_y.argmax(1) == qc_y.argmax(1)).all())
    max_diff = float(np.abs(ort_y - qc_y).max())

    columns = ["fashion_cnn Model.run", "fashion_cnn qc run --bench", "fashion_cnn onnxruntime",
               "tiny Model.run", "tiny qc run --bench"]
    results = {c: [] for c in columns}
    for r in range(args.rounds):
        order = columns[r % len(columns):] + columns[: r % len(columns)]
        for c in order:
            key = c.split()[0]
            if c.endswith("Model.run"):
                m, x = models[key], xs[key]
                results[c].append(block(lambda: m.run(x), args.calls))
            elif c.endswith("--bench"):
                results[c].append(qc_bench(qc_bin, paths[key], OUT / f"{key}.x.npy", args.threads, args.calls))
            else:
                worker.stdin.write("go\n")
                worker.stdin.flush()
                results[c].append(json.loads(worker.stdout.readline())["us"])
    worker.wait()

    med = {c: statistics.median(v) for c, v in results.items()}
    print(f"batch 1, {args.threads} thread(s), {args.rounds} rounds x {args.calls} calls, "
          f"medians of the per-round medians (µs); onnxruntime {hello['version']}")
    print(f"{'column':<28} {'µs/call':>9}   per round")
    for c in columns:
        print(f"{c:<28} {med[c]:>9.1f}   {' '.join(f'{v:.1f}' for v in results[c])}")
    for key in ("fashion_cnn", "tiny"):
        over = [a - b for a, b in zip(results[f"{key} Model.run"], results[f"{key} qc run --bench"])]
        print(f"Python overhead per call, {key}: {statistics.median(over):.1f} µs "
              f"(Model.run - qc run --bench, median of rounds)")
    print(f"onnxruntime vs qc on fashion_cnn: same top-1 {'yes' if agree else 'no'}, "
          f"max |logit difference| {max_diff:.4g}")


if __name__ == "__main__":
    main()
