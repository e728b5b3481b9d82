# qc: the two commands of the README, and their parts.
#   make demo   set up this machine, build, and run the main job on a shipped example
#   make test   set up this machine, then run the whole test suite
.PHONY: setup build demo test edge-core lint fmt clean

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

# The edge runtime core builds and tests with no libtorch and none of the host crate's dependencies.
edge-core:
	bash scripts/check_edge_core.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
