#!/usr/bin/env bash
# Short runs of the four task commands on their embedded defaults and on the real data in
# ../shared/data (issue 4). Each writes its run folder under $OUT and a JSON line to $OUT/<name>.json.
# Usage: bash benchmarks/run_tasks.sh [OUT]   (a few minutes per run on 2 CPU cores)
set -u
OUT=${1:-/tmp/rnnkit-task-runs}
DATA=${DATA:-$(cd "$(dirname "$0")/../.." && pwd)/shared/data}
mkdir -p "$OUT"
run() {  # name, then the rnnkit arguments
  local name=$1; shift
  local start=$SECONDS
  rnnkit "$@" --out "$OUT/$name" --json --no-progress > "$OUT/$name.log" 2>&1
  echo "$name rc=$? wall=$((SECONDS - start))s" | tee -a "$OUT/summary.txt"
  tail -n 1 "$OUT/$name.log" > "$OUT/$name.json"
}
run names      train classify --epochs 3 --schedule plateau
run gunpoint   train classify --data "$DATA/gunpoint/GunPoint_TRAIN.ts" --test "$DATA/gunpoint/GunPoint_TEST.ts" \
               --epochs 300 --early-stopping 0 --batch-size 16 --cell gru --hidden-size 64 --lr 3e-3 --pooling max
run mr         train classify --data "$DATA/mr" --level word --epochs 2 --schedule plateau --hidden-size 128 --embedding-size 128 \
               --dropout 0.3
# dates: the reported figures are those of this run's step-200 checkpoint (the run was stopped
# there for time), scored with: rnnkit evaluate $OUT/dates --data <the 1000 held-out test pairs>
run dates      train translate --epochs 1 --max-steps 400 --hidden-size 128
run multi30k   train translate --source "$DATA/multi30k/tok/train.lc.norm.tok.de.gz" \
               --target "$DATA/multi30k/tok/train.lc.norm.tok.en.gz" \
               --valid-source "$DATA/multi30k/tok/val.lc.norm.tok.de.gz" \
               --valid-target "$DATA/multi30k/tok/val.lc.norm.tok.en.gz" \
               --level word --min-freq 2 --max-length 20 --limit 4000 --hidden-size 128 --embedding-size 64 \
               --batch-size 32 --max-steps 60 --epochs 1 --max-decode 30
run names-gen  train generate-from --epochs 2
run airline    train forecast --data "$DATA/airpassengers/Airline.csv" --horizon 36 --lookback 24 --season 12
