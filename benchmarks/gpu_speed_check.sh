#!/usr/bin/env bash
# Issue 13's GPU rows in one device run (PyTorch there; pydantic etc. carried as wheels in
# .whl/, as for gpu_train_check.sh; nothing fetched):
#   1. `orchestrator fuse`'s path for FusionGAN at 640x480: eager vs ours in fp32, bf16, and
#      bf16 + torch.compile, which on CUDA replays CUDA graphs (goal >= 580 pairs/s); every
#      row also prints max|d| to the eager output in grey levels (the correctness check);
#   2. the training step at the paper's batch 32, bf16 + channels_last (goal >= 1,560
#      patches/s).
# Not yet run on a GPU (none lent so far): expect to fix small things on the first run.
source benchmarks/_gpu_prologue.sh
fuse() { python3 benchmarks/fuse_speed.py --device cuda --models fusiongan --batch 1,8,32 "$@"; }
echo "== 1. fuse: fp32, bf16, bf16 + compile (CUDA graphs)"
fuse --json "$OUT/fuse_fp32.json"
fuse --bf16 --json "$OUT/fuse_bf16.json"
timeout 300 bash -c "$(declare -f fuse); fuse --bf16 --compile --json $OUT/fuse_graphs.json"
echo "== 2. training step, paper batch"
python3 benchmarks/train_speed.py --device cuda --models fusiongan --steps 50 --budget 20 \
  --json "$OUT/train_fusiongan.json"
