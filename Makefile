# qc: the two commands of the README, and their parts.
#   make demo   set up this machine, build, and run the main job on a shipped example
#   make test   set up this machine, then run the whole test suite
.PHONY: setup build demo test edge-core py-setup py-dev-wheel wheel test-python bench-setup fuzz-setup fuzz lint fmt clean

CARGO ?= cargo
DEMO_RECIPE ?= examples/fashion_cnn.qrecipe

setup:
	bash scripts/setup.sh

build: setup
	$(CARGO) build --release

demo: build
	bash scripts/demo.sh $(DEMO_RECIPE)

test: setup edge-core
	$(CARGO) test --workspace
	$(MAKE) py-dev-wheel
	$(PYTEST)

# The edge runtime core builds and tests with no libtorch and none of the host crate's dependencies.
edge-core:
	bash scripts/check_edge_core.sh

# qc's Python package (runtime/python/, `import qc`): maturin, numpy and pytest from PyPI, pinned,
# into the git-ignored .venv-py/ (re-installed when the pins change: the stamp is older than this
# Makefile then). `make wheel` builds the release wheel into target/wheels/; `make test-python`
# builds a dev-profile wheel (quicker to build; the same code), installs it into .venv-py/ and runs
# the pytest suite tests/python/ against the `qc` binary of `cargo build`.
PY = .venv-py/bin/python
PY_PACKAGES = maturin==1.16.0 numpy==2.4.6 pytest==9.2.0
MATURIN = $(PY) -m maturin build --manifest-path runtime/python/Cargo.toml --interpreter $(PY)
py-setup: .venv-py/.installed

$(PY):
	python3 -m venv .venv-py

.venv-py/.installed: $(PY) Makefile
	$(PY) -m pip install --quiet --disable-pip-version-check $(PY_PACKAGES)
	touch $@

wheel: py-setup
	rm -f target/wheels/qc-*.whl
	$(MATURIN) --release --out target/wheels

test-python: py-dev-wheel
	$(CARGO) build --quiet --bin qc
	$(PYTEST)

# The dev-profile wheel installed into .venv-py/. `make test` runs the pytest suite against the
# `target/debug/qc` that its `cargo test` built; `make test-python` builds that binary first.
PYTEST = QC_BIN=target/debug/qc $(PY) -m pytest -q tests/python
py-dev-wheel: py-setup
	rm -rf target/wheels/dev
	$(MATURIN) --profile dev --out target/wheels/dev
	$(PY) -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps target/wheels/dev/qc-*.whl

# PyTorch 2.11.0 (with numpy and safetensors), ONNX Runtime, ONNX (+ onnxscript, torch.onnx's),
# OpenVINO and NNCF from PyPI, pinned, into the git-ignored .venv-bench/, for the side-by-side
# benchmarks in bench/ and the fixture scripts; not needed to build or test qc. Re-run after the
# pins change: the stamp file is older than this Makefile then.
BENCH_PY = .venv-bench/bin/python
BENCH_PACKAGES = torch==2.11.0 torchvision==0.26.0 numpy safetensors onnx==1.23.2 onnxscript==0.7.2 \
	onnxruntime==1.32.0 openvino==2026.4.1 nncf==3.4.0
bench-setup: .venv-bench/.installed

$(BENCH_PY):
	python3 -m venv .venv-bench

.venv-bench/.installed: $(BENCH_PY) Makefile
	$(BENCH_PY) -m pip install --quiet $(BENCH_PACKAGES)
	touch $@

# Fuzzing (docs/fuzzing.md): cargo-fuzz into the git-ignored .tools/, then every target of fuzz/ for
# RUNS inputs each, one after another (`make fuzz RUNS=1000000 TARGETS="npy idx"` for some).
# `make test` replays the committed crashers of fuzz/regressions/ without either.
RUNS ?= 100000
TARGETS ?=
fuzz-setup: .tools/bin/cargo-fuzz

.tools/bin/cargo-fuzz:
	$(CARGO) install cargo-fuzz --version 0.13.2 --locked --root .tools

fuzz: fuzz-setup
	bash scripts/fuzz.sh $(RUNS) $(TARGETS)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
