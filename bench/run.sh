#!/usr/bin/env bash
# Side-by-side benchmark: PyTorch 2.11 x86 int8 (eager-mode PTQ) against `qc run`.
# Builds qc (release) unless SKIP_BUILD=1, then runs bench/side_by_side.py with the given
# arguments, e.g.  bench/run.sh --rounds 5 --threads 2
# PYTHON selects the interpreter (needs torch 2.11, numpy, safetensors); default .venv-bench
# (`make bench-setup` makes it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv-bench/bin/python}
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release --quiet
fi
exec "$PY" bench/side_by_side.py "$@"
