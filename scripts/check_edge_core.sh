#!/usr/bin/env bash
#! The edge runtime core (runtime/core, crate qc-runtime) ships alone: it must build and pass its
#! tests with no libtorch, and depend on none of tch, torch-sys, flate2 or zip (those belong to the
#! host crate, runtime/host) nor prost/protox (the ONNX export, onnx/). `make test` runs this first.
set -euo pipefail
cd "$(dirname "$0")/.."

forbidden='^(tch|torch-sys|flate2|zip|prost|prost-build|protox) '
if deps=$(cargo tree -p qc-runtime -e normal,build,dev --prefix none | grep -E "$forbidden"); then
  echo "edge core: qc-runtime depends on what belongs to the host crate:" >&2
  echo "$deps" | sort -u >&2
  exit 1
fi
echo "edge core: cargo tree -p qc-runtime shows none of tch, torch-sys, flate2, zip, prost, prost-build, protox"

# LIBTORCH points nowhere: anything that needed libtorch would fail to build or link here.
LIBTORCH=/nonexistent/libtorch LIBTORCH_USE_PYTORCH=0 cargo test -p qc-runtime --all-targets
echo "edge core: qc-runtime builds and its tests pass without libtorch"
