#!/usr/bin/env bash
# Record the AN4 learning-curve table with several recorder processes packed on one machine (one
# GPU, or many CPU cores): each process trains an interleaved shard of the same seeded draw
# (record_an4_curves.py --shard I/N) into its own file, and the shards are merged at the end.
#
#   benchmarks/record_an4_curves_packed.sh DATA_DIR OUT.jsonl [SHARDS] [TIME_LIMIT_S]
#
# Environment: PYTHON (default python3), DEVICE (default cuda), EPOCHS (10), N_CONFIGS (480, the
# whole grid: the time limit decides how many are recorded), WORK (a scratch folder, default a new
# temporary one; shard files and logs stay there). A shard starts no config after TIME_LIMIT_S
# seconds and finishes the one it is training.
set -euo pipefail

data=${1:?usage: $0 DATA_DIR OUT.jsonl [SHARDS] [TIME_LIMIT_S]}
out=${2:?usage: $0 DATA_DIR OUT.jsonl [SHARDS] [TIME_LIMIT_S]}
shards=${3:-12}
limit=${4:-300}
py=${PYTHON:-python3}
work=${WORK:-$(mktemp -d)}
mkdir -p "$work"
here=$(cd "$(dirname "$0")" && pwd)
common=(--space "$here/an4_curves_space.yaml" --data "$data" --n-configs "${N_CONFIGS:-480}"
  --epochs "${EPOCHS:-10}" --seed 0 --device "${DEVICE:-cuda}" --threads 1
  --cache-dir "$work/cache")

# Prepare the corpus and the feature cache once, before the shards read them (the first shard's
# file gets its meta line; the shard resumes it).
"$py" "$here/record_an4_curves.py" "${common[@]}" --out "$work/part0.jsonl" --shard "0/$shards" \
  --time-limit-s 0
# One config for one epoch first: a device or recipe problem shows here in seconds, not as a
# table of errors after the whole time limit.
"$py" "$here/record_an4_curves.py" "${common[@]}" --epochs 1 --n-configs 1 \
  --out "$work/smoke.jsonl" --time-limit-s 60
if ! grep -q '"status": "complete"' "$work/smoke.jsonl"; then
  echo "smoke config did not complete:" >&2
  tail -n 1 "$work/smoke.jsonl" >&2
  exit 1
fi

start=$(date +%s)
pids=()
for ((i = 0; i < shards; i++)); do
  "$py" "$here/record_an4_curves.py" "${common[@]}" --out "$work/part$i.jsonl" \
    --shard "$i/$shards" --time-limit-s "$limit" >"$work/shard$i.log" 2>&1 &
  pids+=($!)
done
failed=0
for pid in "${pids[@]}"; do
  wait "$pid" || failed=$((failed + 1))
done
echo "shards done in $(($(date +%s) - start)) s ($failed failed); logs in $work"
parts=()
for ((i = 0; i < shards; i++)); do
  [[ -s "$work/part$i.jsonl" ]] && parts+=("$work/part$i.jsonl")
done
"$py" "$here/record_an4_curves.py" --space "$here/an4_curves_space.yaml" --seed 0 --out "$out" \
  --merge "${parts[@]}"
