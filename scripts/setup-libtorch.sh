#!/usr/bin/env bash
# Installs libtorch (from the PyPI torch wheel) and the Python test-only packages
# into a virtualenv cached outside the clone, so CI and later sessions reuse it.
#
#   LORASTREAM_VENV   where the venv lives (default: ~/.cache/lorastream/venv)
#   PYTHON            the interpreter that creates it (default: python3)
#
# Idempotent: when the venv already holds what this script would install (a stamp
# file records the requirement set), it only prints the paths and exits.
# Links <clone>/.libtorch to the torch package directory (…/site-packages/torch)
# and <clone>/.venv to the venv, and prints the torch directory as its last line.
set -euo pipefail

VENV="${LORASTREAM_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/lorastream/venv}"
PYTHON="${PYTHON:-python3}"

# One line per requirement. torch==2.13.0 is the libtorch version tch 0.26 expects.
# transformers/peft/safetensors/numpy (parity tests) and openai (the chat API
# test client) are test-only, never runtime.
REQUIREMENTS=(
  "torch==2.13.0"
  "numpy<3"
  "safetensors>=0.4"
  "transformers>=4.46,<5"
  "peft>=0.13"
  "openai>=1.40"
)
WANT="$(printf '%s\n' "${REQUIREMENTS[@]}")"
STAMP="$VENV/.lorastream-requirements"

say() { echo "setup-libtorch: $*" >&2; }

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$VENV/bin/python" ]]; then
  say "venv up to date at $VENV"
else
  say "installing into $VENV (torch is ~4.7 GB; this takes a few minutes the first time)"
  mkdir -p "$(dirname "$VENV")"
  if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q --upgrade pip
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q "${REQUIREMENTS[@]}"
  printf '%s' "$WANT" > "$STAMP.tmp" && mv "$STAMP.tmp" "$STAMP"
  say "installed"
fi

TORCH_DIR="$("$VENV/bin/python" -c 'import os, torch; print(os.path.dirname(torch.__file__))')"
if [[ ! -f "$TORCH_DIR/lib/libtorch_cpu.so" ]]; then
  say "error: $TORCH_DIR/lib/libtorch_cpu.so missing; remove $VENV and rerun"
  exit 1
fi
# The clone finds libtorch through <clone>/.libtorch (.cargo/config.toml points
# LIBTORCH at it; build.rs gives the binaries an rpath to its resolved lib/), and
# the parity tests run their Python scripts with <clone>/.venv/bin/python.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ln -sfn "$TORCH_DIR" "$ROOT/.libtorch"
ln -sfn "$VENV" "$ROOT/.venv"
say "libtorch: $TORCH_DIR (linked at $ROOT/.libtorch; venv at $ROOT/.venv)"
echo "$TORCH_DIR"
