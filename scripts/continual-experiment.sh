#!/usr/bin/env bash
# The measurement behind docs/continual-learning.md: five topic files fed one
# after another (each dropped into a spool source, crawled and sealed into a
# stream, then `lorastream learn`), twice on the same model, data and
# training budget:
#   naive   [feedback] enabled = false, no replay, no validation/early stopping:
#           every candidate promoted (naive sequential LoRA);
#   policy  lorastream's shipped defaults (the feedback policy, replay, the
#           overfitting guard).
# Prints, per run, the matrix with the probe column, the versions with their
# decisions, the wall time, and a final summary row. Both runs use the
# shipped [lora]/[train] settings; EXTRA_TOML is appended to both configs.
#
# usage: scripts/continual-experiment.sh MODEL_DIR [DATA_DIR] [OUT_DIR]
#   MODEL_DIR  a Hugging Face model directory (../shared/tools/make-smollm2.sh DIR)
#   DATA_DIR   topic exports (default ../shared/data/quora; every *.csv, in name order)
#   OUT_DIR    where the runs' state goes (default: a temp dir)
#   RUNS       which runs (default "naive policy")
#   FIELDS     question/answer column names (default "Questions Answers")
set -euo pipefail
model=$(cd "${1:?usage: continual-experiment.sh MODEL_DIR [DATA_DIR] [OUT_DIR]}" && pwd)
root="$(cd "$(dirname "$0")/.." && pwd)"
data=$(cd "${2:-$root/../shared/data/quora}" && pwd)
out=${3:-$(mktemp -d)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
bin="${LORASTREAM:-$root/target/release/lorastream}"
[ -x "$bin" ] || { echo "build first: make build" >&2; exit 2; }
read -r qcol acol <<<"${FIELDS:-Questions Answers}"
mapfile -t topics < <(find "$data" -maxdepth 1 -name '*.csv' | sort)
[ "${#topics[@]}" -gt 0 ] || { echo "no *.csv in $data" >&2; exit 2; }

config() { # $1 run dir, $2 run name
  cat <<TOML
[daemon]
state_dir = "$1/state"
[[sources]]
name = "topics"
kind = "spool"
dir = "$1/spool"
settle_secs = 0
[sources.fields]
question = "$qcol"
answer = "$acol"
[model]
source = "path:$model"
threads = ${THREADS:-0}
[server]
enabled = false
TOML
  if [ "$2" = naive ]; then
    cat <<TOML
[train]
replay_fraction = 0.0
validation_fraction = 0.0
patience = 0
[feedback]
enabled = false
TOML
  fi
  printf '%s\n' "${EXTRA_TOML:-}"
}

for run in ${RUNS:-naive policy}; do
  dir="$out/$run"
  rm -rf "$dir"
  mkdir -p "$dir/spool"
  config "$dir" "$run" >"$dir/lorastream.toml"
  lz() { "$bin" -q --config "$dir/lorastream.toml" "$@"; }
  start=$(date +%s)
  for t in "${topics[@]}"; do
    cp "$t" "$dir/spool/"
    lz crawl --source topics --once --seal >/dev/null
    lz learn
  done
  secs=$(( $(date +%s) - start ))
  echo "== $run: ${#topics[@]} streams in ${secs} s"
  lz eval
  lz adapters list
  lz eval --json >"$dir/matrix.json"
  lz adapters list --json >"$dir/versions.json"
  echo "$secs" >"$dir/seconds"
done

# One summary row per run: each stream's perplexity under the served version
# vs the base model, max forgetting, the probe's change, wall time.
for run in ${RUNS:-naive policy}; do
  python3 - "$out/$run" "$run" <<'PY'
import json, sys
d, run = sys.argv[1], sys.argv[2]
m = json.load(open(f"{d}/matrix.json"))
secs = open(f"{d}/seconds").read().strip()
rows, cols, cells = m["versions"], m["streams"], m["cells"]
served = m["chain"][-1]
r, b = cells[rows.index(served)], cells[rows.index(0)]
parts = []
for i, s in enumerate(cols):
    if s == 0 or r[i] is None or b[i] is None:
        continue
    parts.append(f"s{s} {100 * (r[i] / b[i] - 1):+.1f}%")
f = [v for k, v in m["forgetting"].items() if k != "0"]
probe = m["forgetting"].get("0")
probe_s = f"{100 * probe:+.1f}%" if probe is not None else "-"
print(f"| {run} | v{served} | {', '.join(parts)} | {100 * max(f, default=0):.1f}% | {probe_s} | {secs} s |")
PY
done
