# lorastream — build, run and test. Every target sets up libtorch first if needed.
#
#   make run     set-up, release build, run the daemon with config/lorastream.toml
#   make test    set-up, release build, fmt + clippy + cargo test
#   make build   set-up and release build (target/release/lorastream)
#   make setup   install libtorch (PyPI torch) and test-only Python packages into
#                $LORASTREAM_VENV (default ~/.cache/lorastream/venv)

CARGO  ?= cargo
CONFIG ?= config/lorastream.toml

.PHONY: all setup build run test check fmt clippy cargo-test clean

all: build

# Idempotent: seconds when the venv is already there.
setup:
	@./scripts/setup-libtorch.sh >/dev/null

build: setup
	$(CARGO) build --release --locked

run: build
	./target/release/lorastream run --config $(CONFIG)

fmt:
	$(CARGO) fmt --all -- --check

clippy: setup
	$(CARGO) clippy --all-targets --locked -- -D warnings

cargo-test: setup
	$(CARGO) test --locked

check: fmt clippy cargo-test

test: build check

clean:
	$(CARGO) clean
