#!/usr/bin/env bash
# lorastream's benchmarks on a CUDA GPU (bf16 base, LoRA in f32, PyTorch's
# fused SDPA) beside the transformers + PEFT peer on the same GPU in bf16
# (scripts/peer-gpu.py wraps ../shared/bench/peer_hf.py), alternating, with
# tokens/s and model FLOPs utilisation (MFU) of each.
#
# usage: scripts/bench-gpu.sh MODEL_DIR DATA.jsonl [ROUNDS]
#   DEVICE        cuda device for both (default cuda:0)
#   PEAK_TFLOPS   the GPU's dense bf16 peak (default 989: H100/H200 SXM)
#   BATCH_SIZE, SEQ_LEN, STEPS, LIMIT, GEN_LIMIT, MAX_NEW as bench-vs-peer.sh
# MFU counts 2·N FLOPs per token forward and 4·N for a LoRA training step
# (forward and the input gradients; the frozen weights get none), N = the
# parameters in model.safetensors; attention FLOPs are left out.
set -euo pipefail
model=${1:?usage: bench-gpu.sh MODEL_DIR DATA.jsonl [ROUNDS]}
data=${2:?usage: bench-gpu.sh MODEL_DIR DATA.jsonl [ROUNDS]}
rounds=${3:-3}
root="$(cd "$(dirname "$0")/.." && pwd)"
py="$root/.venv/bin/python"
ours="$root/target/release/lorastream"
device=${DEVICE:-cuda:0}
peak=${PEAK_TFLOPS:-989}
[ -x "$ours" ] || { echo "build first: make build" >&2; exit 2; }
"$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' ||
  { echo "no CUDA device visible to PyTorch" >&2; exit 2; }
params=$("$py" - "$model" <<'PY'
import json, struct, sys, pathlib
n = 0
for f in pathlib.Path(sys.argv[1]).glob("*.safetensors"):
    with open(f, "rb") as fh:
        header = json.loads(fh.read(struct.unpack("<Q", fh.read(8))[0]))
    for k, v in header.items():
        if k != "__metadata__":
            c = 1
            for d in v["shape"]:
                c *= d
            n += c
print(n)
PY
)
common=(--model "$model" --data "$data" --seq-len "${SEQ_LEN:-512}" --batch-size "${BATCH_SIZE:-16}")
args_for() {
  case $1 in
    train) echo "--steps ${STEPS:-20} --warmup ${WARMUP:-3} --rank 8 --alpha 16 --targets ${TARGETS:-q_proj,v_proj}" ;;
    eval) echo "--limit ${LIMIT:-256}" ;;
    generate) echo "--limit ${GEN_LIMIT:-8} --max-new-tokens ${MAX_NEW:-128}" ;;
  esac
}
echo "GPU bench: $("$py" -c 'import torch; print(torch.cuda.get_device_name(0))'), $params parameters, peak $peak TFLOPS"
for bench in train eval generate; do
  # shellcheck disable=SC2046
  for r in $(seq 1 "$rounds"); do
    o=$("$ours" bench "$bench" "${common[@]}" $(args_for "$bench") --device "$device" --dtype bf16 2>/dev/null | tail -n 1)
    p=$(PEER_DEVICE="$device" HF_HUB_OFFLINE=1 "$py" "$root/scripts/peer-gpu.py" "$bench" "${common[@]}" $(args_for "$bench") 2>/dev/null | tail -n 1)
    "$py" - "$bench" "$params" "$peak" "$o" "$p" <<'PY'
import json, sys
bench, n, peak = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
per_token = (4 if bench == "train" else 2) * n
for name, line in (("ours", sys.argv[4]), ("peer", sys.argv[5])):
    d = json.loads(line)
    mfu = d["tokens_per_s"] * per_token / (peak * 1e12)
    print(f"{bench:9s} {name}: {d['tokens_per_s']:10.1f} tokens/s  MFU {100 * mfu:5.2f}%")
PY
  done
done
