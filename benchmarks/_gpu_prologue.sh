# Sourced by the device scripts gpu_train_check.sh and gpu_speed_check.sh: strict mode, $OUT,
# the carried wheels (.whl/: pydantic etc.; the machine has PyTorch, nothing is fetched)
# installed beside the repo, and the GPU named.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
