#!/usr/bin/env bash
# One GPU run (issue 11, part 3): FusionGAN and UFGAN trained at the paper's budget on the real
# IVIF training split (TNO + RoadScene, search_spaces/splits/ivif.yaml), the pure-PyTorch loop,
# then the 15 held-out test pairs fused and measured next to the 4 baselines
# (benchmarks/gpu_paper_train.py). Nothing is installed from the network: the machine has
# PyTorch; pydantic, click, PyYAML, opencv-python-headless, scipy, pywavelets travel as wheels in
# .whl/ (`pip download --only-binary=:all: -d .whl ...` here), the data as DATA (default a
# git-ignored copy .gpu_shared/data of ../shared/data/{tno,roadscene}). Carry both:
#   run(command="bash benchmarks/gpu_ivif_paper.sh", carry=[".whl", ".gpu_shared"], timeout_s=540)
# Writes $OUT/paper_ivif/{results.json,<model>/fused/*.png,<model>/best.pt}; STEPS=N caps the
# steps per epoch when the device time is short; CPU try-out: DEVICE=cpu SMOKE=1.
set -euo pipefail
OUT=${OUT:-/tmp/gpu_out} DATA=${DATA:-.gpu_shared/data} DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
data=$(cd "$DATA" && pwd)
split_def=$(mktemp --suffix=.yaml)
sed "s#\.\./\.\./\.\./shared/data#$data#" search_spaces/splits/ivif.yaml > "$split_def"
rm -rf /tmp/paper_split
python3 -m orchestrator.cli split "$split_def" --out /tmp/paper_split
python3 benchmarks/gpu_paper_train.py --split /tmp/paper_split --device "$DEVICE" \
  --out "$OUT/paper_ivif" ${STEPS:+--steps "$STEPS"} ${EPOCHS:+--epochs "$EPOCHS"} \
  ${SMOKE:+--smoke}
