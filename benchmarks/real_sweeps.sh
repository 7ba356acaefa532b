#!/usr/bin/env bash
# The real-data quality runs of issue 11, one task after another (CPU: about 30-45 min each on
# 2 cores). For each task: the sweep (its YAML's time budget), the best configuration and
# the paper-default control re-trained with 3 seeds each, promotion of the best trial (alias
# @<task> of fusion-pmgi), and
# `orchestrator compare` on the held-out test pairs (tables in runs/real/<task>/).
#   bash benchmarks/real_sweeps.sh ivif medical_pet mff mef
# Skip steps already done with SKIP_SWEEP=1 (e.g. after a sweep that finished).
set -euo pipefail
cd "$(dirname "$0")/.."
URI=${REAL_TRACKING_URI:-sqlite:///runs/real/mlflow.db}
mkdir -p runs/real
orchestrator import-weights ../shared/weights --all > /dev/null
for task in "$@"; do
  name=real-pmgi-$task spec=search_spaces/real/pmgi_$task.yaml out=runs/real/$task
  split=$(sed -n 's#^  train: \.\./\.\./splits/\([a-z_]*\)/train#\1#p' "$spec")
  [ -d "splits/$split" ] || orchestrator split "search_spaces/splits/$split.yaml" --out "splits/$split"
  mkdir -p "$out"
  t0=$(date +%s)
  if [ -z "${SKIP_SWEEP:-}" ]; then
    orchestrator sweep "$spec" --name "$name" --tracking-uri "$URI" --quiet > "$out/sweep.log" 2>&1
  fi
  t1=$(date +%s)
  orchestrator sweep "$spec" --name "$name" --tracking-uri "$URI" --reseed-best 1 --seeds 3 \
    --with-default --quiet > "$out/reseed.log" 2>&1
  t2=$(date +%s)
  orchestrator promote "$name" --alias "$task" --tracking-uri "$URI" > "$out/promote.log" 2>&1
  orchestrator compare "$name" --out "$out/compare" --tracking-uri "$URI" > "$out/compare.log" 2>&1
  t3=$(date +%s)
  echo "$task: sweep $((t1 - t0)) s, reseed $((t2 - t1)) s, promote+compare $((t3 - t2)) s" \
    | tee -a runs/real/timings.txt
  grep -h "registered model\|promoted beats" "$out/promote.log" "$out/compare.log" || true
done
