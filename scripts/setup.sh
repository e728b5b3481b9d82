#!/usr/bin/env bash
#! Idempotent setup: libtorch 2.11.0 (CPU) from the PyPI wheel into .libtorch/, and Debian's
#! dataset-fashion-mnist, and ONNX Runtime + ONNX (pinned, from PyPI) in the git-ignored .venv-ort/ for
#! the ONNX export agreement test. Safe to run again: each step checks what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
LIBTORCH="$ROOT/.libtorch"
TORCH_VERSION=2.11.0

log() { printf 'setup: %s\n' "$*"; }

install_libtorch() {
  if [ -f "$LIBTORCH/build-version" ] && [ "$(cat "$LIBTORCH/build-version")" = "$TORCH_VERSION" ] \
     && [ -f "$LIBTORCH/lib/libtorch_cpu.so" ]; then
    log "libtorch $TORCH_VERSION already in .libtorch/"
    return
  fi
  log "installing libtorch $TORCH_VERSION (CPU) from the PyPI wheel into .libtorch/"
  local tmp
  tmp=$(mktemp -d "$ROOT/.libtorch.tmp.XXXXXX")
  trap 'rm -rf "$tmp"' RETURN
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp/wheels" \
    "torch==$TORCH_VERSION" "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-cupti==13.0.85"
  mkdir -p "$tmp/libtorch/lib" "$tmp/libtorch/include"
  python3 - "$tmp" <<'PY'
import glob, os, shutil, sys, zipfile
tmp = sys.argv[1]
out = os.path.join(tmp, "libtorch")
torch_whl = glob.glob(os.path.join(tmp, "wheels", "torch-*.whl"))[0]
keep_libs = {"libc10.so", "libtorch_cpu.so", "libtorch.so", "libgomp.so.1"}
with zipfile.ZipFile(torch_whl) as z:
    for name in z.namelist():
        if name.startswith("torch/include/") and not name.endswith("/"):
            dest = os.path.join(out, "include", name[len("torch/include/"):])
        elif name.startswith("torch/lib/") and os.path.basename(name) in keep_libs:
            dest = os.path.join(out, "lib", os.path.basename(name))
        else:
            continue
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with z.open(name) as src, open(dest, "wb") as dst:
            shutil.copyfileobj(src, dst)
for pattern, lib in (("nvidia_cuda_runtime-*.whl", "libcudart.so.13"), ("nvidia_cuda_cupti-*.whl", "libcupti.so.13")):
    whl = glob.glob(os.path.join(tmp, "wheels", pattern))[0]
    with zipfile.ZipFile(whl) as z:
        member = [n for n in z.namelist() if n.endswith("/" + lib)][0]
        with z.open(member) as src, open(os.path.join(out, "lib", lib), "wb") as dst:
            shutil.copyfileobj(src, dst)
PY
  echo "$TORCH_VERSION" > "$tmp/libtorch/build-version"
  rm -rf "$LIBTORCH"
  mv "$tmp/libtorch" "$LIBTORCH"
  log "libtorch installed: $(du -sh "$LIBTORCH" | cut -f1)"
}

install_fashion_mnist() {
  if [ -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] || \
     ls /usr/share/datasets/fashion-mnist/*t10k* >/dev/null 2>&1; then
    log "Fashion-MNIST already in /usr/share/datasets/fashion-mnist/"
    return
  fi
  log "installing Debian's dataset-fashion-mnist"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null
}

ORT_VERSION=1.32.0
ONNX_VERSION=1.23.2
ORT_VENV="$ROOT/.venv-ort"

install_onnxruntime() {
  local py="$ORT_VENV/bin/python"
  if [ -x "$py" ] && "$py" - "$ORT_VERSION" "$ONNX_VERSION" >/dev/null 2>&1 <<'PY'
import sys
import numpy, onnx, onnxruntime
sys.exit(0 if (onnxruntime.__version__, onnx.__version__) == (sys.argv[1], sys.argv[2]) else 1)
PY
  then
    log "onnxruntime $ORT_VERSION and onnx $ONNX_VERSION already in .venv-ort/"
    return
  fi
  log "installing onnxruntime $ORT_VERSION, onnx $ONNX_VERSION and numpy into .venv-ort/"
  [ -x "$py" ] || python3 -m venv "$ORT_VENV"
  "$py" -m pip install --quiet --disable-pip-version-check \
    "onnxruntime==$ORT_VERSION" "onnx==$ONNX_VERSION" numpy
}

install_libtorch
install_fashion_mnist
install_onnxruntime
log "done"
