#!/usr/bin/env bash
# Side-by-side benchmark: `qc run` against PyTorch 2.11 x86 int8 (eager-mode PTQ), ONNX Runtime
# int8 and OpenVINO int8 (NNCF), with the int8 MAC ceilings of this CPU.
# Builds qc and the isa_ceiling example (release) unless SKIP_BUILD=1, then runs
# bench/side_by_side.py with the given arguments, e.g.  bench/run.sh --rounds 5 --threads 2
# PYTHON selects the interpreter (needs torch 2.11, numpy, safetensors; onnxruntime, openvino and
# nncf for those columns); default .venv-bench (`make bench-setup` makes it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv-bench/bin/python}
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release --quiet
  cargo build --release --quiet -p qc-runtime --example isa_ceiling
fi
exec "$PY" bench/side_by_side.py "$@"
