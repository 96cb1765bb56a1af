#!/usr/bin/env bash
# Runs lorastream's benchmarks and the transformers + PEFT peer
# (../shared/bench/peer_hf.py) alternately on the same model, data and
# settings, and prints each pair's figures and the ratio ours/peer.
#
# usage: scripts/bench-vs-peer.sh MODEL_DIR DATA.jsonl [ROUNDS]
#   BENCHES   which benches (default: "train eval generate")
#   THREADS   CPU threads for both (default 2)
#   DTYPE     lorastream's --dtype (default auto, as `[model] dtype`; the peer
#             always runs f32): auto is bf16 on a CPU with native bf16
#   EXTRA     extra flags for lorastream only (e.g. --no-decode-bf16)
# Each round runs ours then the peer; the summary gives the medians over the
# rounds of tokens/s and peak memory, and their ratios (ours / peer).
# Peak resident memory of each run is measured with GNU time when present.
set -euo pipefail
model=${1:?usage: bench-vs-peer.sh MODEL_DIR DATA.jsonl [ROUNDS]}
data=${2:?usage: bench-vs-peer.sh MODEL_DIR DATA.jsonl [ROUNDS]}
rounds=${3:-3}
root="$(cd "$(dirname "$0")/.." && pwd)"
peer="${PEER:-$root/../shared/bench/peer_hf.py}"
py="$root/.venv/bin/python"
ours="$root/target/release/lorastream"
threads=${THREADS:-2}
benches=${BENCHES:-train eval generate}
[ -x "$ours" ] || { echo "build first: make build" >&2; exit 2; }
[ -f "$peer" ] || { echo "peer benchmark $peer not found" >&2; exit 2; }
[ -x "$py" ] || { echo "venv missing: scripts/setup-libtorch.sh" >&2; exit 2; }

common=(--model "$model" --data "$data" --threads "$threads" --seq-len "${SEQ_LEN:-256}" --batch-size "${BATCH_SIZE:-4}")
results=$(mktemp)
trap 'rm -f "$results"' EXIT
args_for() {
  case $1 in
    train) echo "--steps ${STEPS:-10} --warmup ${WARMUP:-2} --rank 8 --alpha 16 --targets ${TARGETS:-q_proj,v_proj}" ;;
    eval) echo "--limit ${LIMIT:-32}" ;;
    generate) echo "--limit ${GEN_LIMIT:-4} --max-new-tokens ${MAX_NEW:-32}" ;;
  esac
}

# Runs a command, prints its JSON line with "max_rss_mb" added.
measure() {
  local out tm
  tm=$(mktemp)
  if [ -x /usr/bin/time ]; then
    out=$(/usr/bin/time -v -o "$tm" "$@" 2>/dev/null | tail -n 1)
    local kb
    kb=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$tm")
    echo "$out" | "$py" -c "import json,sys; d=json.loads(sys.stdin.read()); d['max_rss_mb']=round($kb/1024,1); print(json.dumps(d))"
  else
    "$@" 2>/dev/null | tail -n 1
  fi
  rm -f "$tm"
}

for bench in $benches; do
  extra=(--dtype "${DTYPE:-auto}")
  if [ -n "${EXTRA:-}" ]; then
    read -r -a more <<<"$EXTRA"
    extra+=("${more[@]}")
  fi
  # shellcheck disable=SC2046
  for r in $(seq 1 "$rounds"); do
    o=$(measure "$ours" bench "$bench" "${common[@]}" $(args_for "$bench") "${extra[@]}")
    p=$(measure env HF_HUB_OFFLINE=1 "$py" "$peer" "$bench" "${common[@]}" $(args_for "$bench"))
    echo "round $r ours $o"
    echo "round $r peer $p"
    echo "$o" >>"$results"
    echo "$p" >>"$results"
    "$py" - "$bench" "$o" "$p" <<'PY'
import json, sys
bench, o, p = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
line = f"round {bench}: tokens/s ours {o['tokens_per_s']} peer {p['tokens_per_s']} ratio {o['tokens_per_s']/p['tokens_per_s']:.3f}"
if "perplexity" in o:
    line += f"; perplexity ours {o['perplexity']} peer {p['perplexity']} diff {100*(o['perplexity']/p['perplexity']-1):+.3f}%"
if "max_rss_mb" in o and "max_rss_mb" in p:
    line += f"; peak RSS ours {o['max_rss_mb']} MB peer {p['max_rss_mb']} MB ({o['max_rss_mb']/p['max_rss_mb']:.0%})"
print(line)
PY
  done
done

echo "summary (medians of $rounds rounds, dtype ${DTYPE:-auto}, threads $threads):"
"$py" - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
for bench in ("train", "eval", "generate"):
    ours = [r for r in rows if r["bench"] == bench and r["impl"] == "lorastream"]
    peer = [r for r in rows if r["bench"] == bench and r["impl"] != "lorastream"]
    if not ours or not peer:
        continue
    med = lambda rs, k: statistics.median(r[k] for r in rs)
    o, p = med(ours, "tokens_per_s"), med(peer, "tokens_per_s")
    line = f"{bench:9s} tokens/s ours {o:8.2f} peer {p:8.2f} ratio {o / p:.2f}x"
    if all("max_rss_mb" in r for r in ours + peer):
        om, pm = med(ours, "max_rss_mb"), med(peer, "max_rss_mb")
        line += f" | peak RSS ours {om:.0f} MB peer {pm:.0f} MB ({om / pm:.0%})"
    if "perplexity" in ours[0]:
        op, pp = med(ours, "perplexity"), med(peer, "perplexity")
        line += f" | perplexity ours {op} peer {pp} ({100 * (op / pp - 1):+.3f}%)"
    print(line)
PY
