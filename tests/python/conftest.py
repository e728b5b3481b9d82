"""Fixtures of qc's Python tests: the `qc` binary, fashion_cnn compiled once from Python (PyTorch's
FP32 fixture weights, a short real calibration), and Fashion-MNIST test images."""

import gzip
import os
import pathlib
import subprocess

import numpy as np
import pytest

import qc

ROOT = pathlib.Path(__file__).resolve().parents[2]
FASHION = pathlib.Path("/usr/share/datasets/fashion-mnist")


def qc_bin() -> pathlib.Path:
    """The `qc` command line: $QC_BIN, else the debug build `cargo test` made, else the release one."""
    named = os.environ.get("QC_BIN")
    candidates = [pathlib.Path(named)] if named else [ROOT / "target/debug/qc", ROOT / "target/release/qc"]
    for c in candidates:
        if c.is_file():
            return c
    pytest.fail(f"no qc binary at {', '.join(map(str, candidates))}: run `cargo build` first")


def run_qc(*args, check=True) -> subprocess.CompletedProcess:
    """Runs `qc ARGS...` from the repository root; text output."""
    done = subprocess.run([str(qc_bin()), *map(str, args)], cwd=ROOT, capture_output=True, text=True)
    if check and done.returncode != 0:
        pytest.fail(f"qc {' '.join(map(str, args))} failed:\n{done.stderr}")
    return done


def fashion_recipe(folder: pathlib.Path) -> pathlib.Path:
    """examples/fashion_cnn.qrecipe with PyTorch's FP32 fixture weights and 8 calibration batches."""
    lines = []
    for line in (ROOT / "examples/fashion_cnn.qrecipe").read_text().splitlines():
        if line.strip().startswith("calibrate "):
            line = "  calibrate fashion_mnist(split: train) batches: 8"
        lines.append(line)
    weights = ROOT / "tests/data/fashion_cnn.fp32.pth"
    lines.append(f'weights "{weights}"')
    path = folder / "fashion_cnn_fp32.qrecipe"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def recipe(tmp_path_factory) -> pathlib.Path:
    return fashion_recipe(tmp_path_factory.mktemp("recipe"))


@pytest.fixture(scope="session")
def compiled(recipe, tmp_path_factory):
    """(model path, stage summary) of the recipe compiled by `qc.compile`."""
    out = tmp_path_factory.mktemp("model") / "fashion_cnn.qmodel"
    stages = qc.compile(recipe, output=out)
    return out, stages


@pytest.fixture(scope="session")
def model_path(compiled) -> pathlib.Path:
    return compiled[0]


@pytest.fixture()
def model(model_path) -> qc.Model:
    return qc.load(model_path)


@pytest.fixture(scope="session")
def images() -> np.ndarray:
    """The first 64 Fashion-MNIST test images, float32 [64, 1, 28, 28] in [0, 1]."""
    with gzip.open(FASHION / "t10k-images-idx3-ubyte.gz") as f:
        raw = f.read()
    n = 64
    pixels = np.frombuffer(raw, dtype=np.uint8, offset=16, count=n * 28 * 28)
    return (pixels.reshape(n, 1, 28, 28) / np.float32(255)).astype(np.float32)
