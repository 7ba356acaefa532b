"""Training-step throughput of every registered model at its paper batch and patch size.

Builds each model from its search_spaces/<model>.yaml (paper defaults), feeds random patches
already in the model's input range, runs one warm-up step, then times steps until ``--steps``
are done or ``--budget`` seconds have passed, and prints patches/s in one table.

    python benchmarks/train_speed.py                 # CPU
    python benchmarks/train_speed.py --device cuda   # GPU (bf16 autocast, channels_last)
    python benchmarks/train_speed.py --models fusiongan,pmgi --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fusion_models import registry  # noqa: E402
from orchestrator.common.config import load_spec  # noqa: E402


def random_batch(model, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    spec = model.patch_spec()
    g = torch.Generator().manual_seed(0)
    a = torch.rand(batch, 1, spec.patch, spec.patch, generator=g)
    b = torch.rand(batch, 1, spec.patch, spec.patch, generator=g)
    out = {"a": model.to_input_scale(a), "b": model.to_input_scale(b)}
    o, n = spec.offset, spec.label
    out["a_label"] = out["a"][..., o : o + n, o : o + n].contiguous()
    out["b_label"] = out["b"][..., o : o + n, o : o + n].contiguous()
    return {k: v.to(device) for k, v in out.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_model(name: str, device: torch.device, steps: int, budget: float) -> dict:
    params = load_spec(REPO / "search_spaces" / f"{name}.yaml").model_params()
    torch.manual_seed(0)
    model = registry.build(name, params).to(device).train()
    if device.type == "cuda":
        model.amp_dtype = torch.bfloat16
        model = model.to(memory_format=torch.channels_last)
    batch_size = model.config.batch_size
    batch = random_batch(model, batch_size, device)
    model.training_step(batch)  # warm-up (allocations, cudnn autotune)
    _sync(device)
    done, t0 = 0, time.perf_counter()
    while done < steps and (done == 0 or time.perf_counter() - t0 < budget):
        model.training_step(batch)
        done += 1
    _sync(device)
    seconds = time.perf_counter() - t0
    spec = model.patch_spec()
    return {"model": name, "batch": batch_size, "patch": spec.patch, "steps": done,
            "s_per_step": seconds / done, "patches_per_s": batch_size * done / seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", default=None, help="comma-separated (default: all)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--budget", type=float, default=30.0, help="seconds per model")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    names = args.models.split(",") if args.models else registry.list_models()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"CPU, {torch.get_num_threads()} threads, OMP_WAIT_POLICY="
        f"{os.environ.get('OMP_WAIT_POLICY', 'default')}")
    print(f"training-step throughput on {where}, torch {torch.__version__}")
    print(f"{'model':<10} {'batch':>5} {'patch':>5} {'steps':>5} {'s/step':>8} {'patches/s':>10}")
    rows = []
    for name in names:
        row = time_model(name, device, args.steps, args.budget)
        rows.append(row)
        print(f"{name:<10} {row['batch']:>5} {row['patch']:>5} {row['steps']:>5} "
              f"{row['s_per_step']:>8.3f} {row['patches_per_s']:>10.1f}")
    if args.json:
        args.json.write_text(json.dumps({"device": where, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
