#!/usr/bin/env bash
# One device run for the models (PyTorch there; pydantic etc. carried as wheels in .whl/):
#   1. benchmarks/train_speed.py on CUDA (bf16 autocast, channels_last): patches/s per model;
#   2. benchmarks/train_evidence.py on CUDA: the one training loop on real tno pairs
#      (.gpu_shared/data/tno, a git-ignored copy of ../shared/data/tno), every model.
source benchmarks/_gpu_prologue.sh
echo "== 1. train speed (CUDA)"
python3 benchmarks/train_speed.py --device cuda --steps 10 --budget 10 \
  --json "$OUT/train_speed_cuda.json"
echo "== 2. training loop on tno (CUDA)"
python3 benchmarks/train_evidence.py --data .gpu_shared/data/tno --device cuda \
  --epochs ${EPOCHS:-2} --steps ${STEPS:-100} --batch 32 --json "$OUT/evidence_cuda.json" \
  --out /tmp/evidence
