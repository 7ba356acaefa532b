"""Timings that unit tests used to assert (``elapsed < 10``), measured here instead.

A wall-clock bound in a test fails on a busy shared machine and says nothing on a fast one, so
the tests check behaviour only and this script prints the times, each with its ratio to a
baseline measured in the same run (a fixed single-threaded float64 matmul loop): a loaded
machine shows as a slow baseline, slower code as a larger ratio.

- ``mffgan 25 steps``: 25 MFF-GAN training steps, patch 32, batch 2 (tests/models/test_mffgan.py);
- ``pmgi 25 steps``: 25 PMGI training steps, 36 x 36, batch 2 (tests/models/test_pmgi.py);
- ``FMI_none 576x768``: FMI without features on ../shared/data/tno 01, mean-rule fused
  (tests/test_metrics_extra.py);
- ``ray validator import``: ``ray.autoscaler._private.util`` in a fresh interpreter, and
  ``validate cluster/*.yaml``: ``prepare_config`` + ``validate_config`` of every cluster config
  (tests/test_cluster_yaml.py).

Every workload runs single-threaded (``torch.set_num_threads(1)``); each time is the best of
``--repeat`` runs.

    python benchmarks/unit_timings.py [--repeat 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FUSION_SHARED_DIR", REPO.parent / "shared"))
sys.path.insert(0, str(REPO))
#: The bound the unit tests asserted, for reference (seconds).
FORMER_BOUNDS = {"mffgan 25 steps": 10.0, "pmgi 25 steps": 10.0, "FMI_none 576x768": 10.0}


def baseline() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(512, 512, generator=g, dtype=torch.float64)
    for _ in range(12):
        x = torch.tanh(x @ x)


def _half_blurred(side: int) -> tuple[torch.Tensor, torch.Tensor]:
    import torch.nn.functional as F

    from fusion_models.models.losses import _gaussian_window

    x = torch.rand(1, 1, side, side, generator=torch.Generator().manual_seed(0)) * 2 - 1
    blurred = F.conv2d(F.pad(x, (4, 4, 4, 4), mode="reflect"), _gaussian_window(9, 2.0, x))
    h = side // 2
    return (torch.cat([x[..., :h], blurred[..., h:]], dim=-1),
            torch.cat([blurred[..., :h], x[..., h:]], dim=-1))


def mffgan_setup() -> Callable[[], None]:
    from fusion_models.models.mffgan import MFFGAN, Config

    torch.manual_seed(0)
    model = MFFGAN(Config(lr_g=3e-3, lr_d=3e-3, patch=32))
    a, b = _half_blurred(32)
    batch = {"a": a.repeat(2, 1, 1, 1), "b": b.repeat(2, 1, 1, 1)}
    batch.update(a_label=batch["a"], b_label=batch["b"])
    return lambda: [model.training_step(batch) for _ in range(25)]


def pmgi_setup() -> Callable[[], None]:
    from fusion_models.models.pmgi import PMGI, Config

    torch.manual_seed(0)
    model = PMGI(Config(task="mff"))
    g = torch.Generator().manual_seed(1)
    a = torch.nn.functional.avg_pool2d(torch.rand(2, 1, 36, 36, generator=g), 3, 1, 1) * 2 - 1
    batch = {"a": a, "b": a.flip(-1), "a_label": a, "b_label": a.flip(-1)}
    return lambda: [model.training_step(batch) for _ in range(25)]


def fmi_setup() -> Callable[[], None]:
    import cv2
    import numpy as np

    from fusion_models.metrics import fmi

    ir, vi = (cv2.imread(str(SHARED / f"data/tno/{s}/01.png"), cv2.IMREAD_GRAYSCALE)
              for s in ("ir", "vi"))
    a, b = (torch.from_numpy(np.asarray(x, dtype=np.float64))[None, None] for x in (ir, vi))
    fused = torch.maximum(a, b)
    return lambda: fmi.fmi_none(fused, a, b)


def ray_import() -> None:
    subprocess.run([sys.executable, "-c", "import ray.autoscaler._private.util"], check=True,
                   env={**os.environ, "PYTHONWARNINGS": "ignore"})


def validate_setup() -> Callable[[], None]:
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    configs = [yaml.safe_load(p.read_text()) for p in sorted((REPO / "cluster").glob("*.yaml"))]
    return lambda: [validate_config(prepare_config(copy.deepcopy(c))) for c in configs]


WORKLOADS: dict[str, Callable[[], Callable[[], object]]] = {
    "baseline (matmul loop)": lambda: baseline,
    "mffgan 25 steps": mffgan_setup,
    "pmgi 25 steps": pmgi_setup,
    "FMI_none 576x768": fmi_setup,
    "ray validator import": lambda: ray_import,
    "validate cluster/*.yaml": validate_setup,
}


def best_time(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="Runs per workload (best kept).")
    parser.add_argument("--json", help="Also write the rows here.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name, setup in WORKLOADS.items():
        seconds = best_time(setup(), args.repeat)
        rows.append({"workload": name, "seconds": round(seconds, 4)})
    base = rows[0]["seconds"]
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, 1 thread, load average {load:.2f}, best of {args.repeat}")
    print(f"{'workload':<26}{'seconds':>10}{'x baseline':>12}{'former bound':>14}")
    for row in rows:
        row["ratio"] = round(row["seconds"] / base, 2)
        bound = FORMER_BOUNDS.get(row["workload"])
        print(f"{row['workload']:<26}{row['seconds']:>10.3f}{row['ratio']:>12.2f}"
              f"{f'< {bound:g} s' if bound else '':>14}")
    if args.json:
        Path(args.json).write_text(json.dumps({"load_average": load, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
