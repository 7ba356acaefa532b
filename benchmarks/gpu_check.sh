#!/usr/bin/env bash
# One device run on a lent GPU machine (PyTorch there; no Ray/MLflow; nothing fetched):
#   1. correctness: the metric and baseline tests, whose device-parametrised cases run on CUDA;
#   2. `orchestrator eval --device cuda` gives the CPU numbers on real sets (colour included);
#   3. timings: benchmarks/metrics_speed.py on CUDA and on the machine's CPUs.
# Needs, beside the repo (both git-ignored, carried by the device tool):
#   .whl/        PyWavelets wheel for the machine's Python (FMI_wavelet)
#   .gpu_shared/ a copy of ../shared/{data/tno,data/harvard_mri_pet,data/lytro,golden}
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD FUSION_SHARED_DIR=$PWD/.gpu_shared PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

echo "== 1. tests (CPU and CUDA parameters)"
python3 -m pytest -q -p no:cacheprovider tests/test_metrics_core.py tests/test_metrics_extra.py \
  tests/test_baselines.py 2>&1 | tail -8

echo "== 2. eval on CUDA vs CPU"
# FMI's CPU/CUDA agreement is in the tests above; here it would dominate the CPU time.
NO_FMI=EN,SD,SF,AG,MI,MSE,PSNR,CC,SCD,VIF,Qabf,SSIM,MS_SSIM,Nabf,CE,EI,RMSE,Qcb,Qcv
for dev in cpu cuda; do
  for set in tno harvard_mri_pet lytro; do
    t0=$SECONDS
    python3 -m orchestrator.cli eval --quiet --data .gpu_shared/data/$set --method all \
      --metrics $NO_FMI --device $dev --json "$OUT/eval_${set}_${dev}.json" \
      || echo "eval $set $dev FAILED"
    echo "eval $set $dev: $((SECONDS - t0)) s wall (incl. python start-up)"
  done
done
python3 - "$OUT" <<'PY'
import json, math, sys
out = sys.argv[1]
worst = 0.0
for s in ("tno", "harvard_mri_pet", "lytro"):
    cpu = json.load(open(f"{out}/eval_{s}_cpu.json"))["methods"]
    gpu = json.load(open(f"{out}/eval_{s}_cuda.json"))["methods"]
    for m in cpu:
        for stem, vals in cpu[m]["per_pair"].items():
            for k, v in vals.items():
                g = gpu[m]["per_pair"][stem][k]
                if math.isfinite(v) or math.isfinite(g):
                    worst = max(worst, abs(g - v) / max(abs(v), 1e-3))
        print(s, m, "metrics_s cpu %.2f cuda %.2f" % (cpu[m]["timing"]["metrics_s"],
                                                       gpu[m]["timing"]["metrics_s"]))
print("worst relative CPU/CUDA difference over all sets, methods, pairs, metrics: %.3g" % worst)
PY

echo "== 3. speed"
python3 benchmarks/metrics_speed.py --device cuda --json "$OUT/speed_cuda.json" 2>&1 | tail -25
