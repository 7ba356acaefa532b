#!/usr/bin/env bash
# The field's headline comparison, TarDAL vs UFGAN on EN and SD (models.md §1.8), with both
# models searched by `orchestrator sweep` under the same budget on the IVIF split (TNO +
# RoadScene: trained on splits/ivif/train, selected on splits/ivif/val), then measured on the
# 15 held-out test pairs next to the four baselines.
#   bash benchmarks/tardal_vs_ufgan.sh            # BUDGET=900 SAMPLES=8 (seconds, trials per model)
# Tracking: sqlite:///runs/cmp/mlflow.db; the table: runs/cmp/table.md.
set -euo pipefail
cd "$(dirname "$0")/.."
URI=${CMP_TRACKING_URI:-sqlite:///runs/cmp/mlflow.db}
BUDGET=${BUDGET:-900} SAMPLES=${SAMPLES:-8}
mkdir -p runs/cmp
[ -d splits/ivif ] || orchestrator split search_spaces/splits/ivif.yaml --out splits/ivif
for m in tardal ufgan; do
  t0=$(date +%s)
  orchestrator sweep "search_spaces/$m.yaml" --name "cmp-$m" --tracking-uri "$URI" --quiet \
    --set data.train=splits/ivif/train --set data.val=splits/ivif/val \
    --set 'tune.test_data=[splits/ivif/test]' --set "tune.time_budget_s=$BUDGET" \
    --set "tune.num_samples=$SAMPLES" > "runs/cmp/sweep-$m.log" 2>&1
  orchestrator promote "cmp-$m" --alias ivif-cmp --tracking-uri "$URI" > "runs/cmp/promote-$m.log" 2>&1
  echo "$m: sweep + promote $(( $(date +%s) - t0 )) s" | tee -a runs/cmp/timings.txt
done
orchestrator eval --data splits/ivif/test --task ivif --tracking-uri "$URI" \
  --model models:/fusion-tardal@ivif-cmp --reference models:/fusion-ufgan@ivif-cmp --method all \
  --metrics EN,SD,SF,AG,MI,Qabf,VIF,SSIM --json runs/cmp/eval.json --quiet
python benchmarks/cmp_table.py runs/cmp/eval.json | tee runs/cmp/table.md
