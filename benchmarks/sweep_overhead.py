"""Per-trial overhead of `orchestrator sweep` against a bare Ray Tune function, same run.

Three variants on one local Ray (2 CPUs), each ``--trials`` trials of the same work
(``--model``'s smoke settings, 1 epoch, 2 concurrent):

- ``bare tune``: a Tune function trainable calling ``run_training`` and ``tune.report``
  (no Optuna, no MLflow, no checkpoints), reused actors;
- ``sweep (workers: 0)``: ``run_sweep`` (OptunaSearch + sqlite study, MLflow parent/child runs,
  per-epoch checkpoints, trial table, importances);
- ``sweep (workers: 1)``: the same with each trial a Ray Train TorchTrainer (``--train``).

Prints wall time, per-trial time and the ratio to the bare variant.

    python benchmarks/sweep_overhead.py --trials 4 [--train]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def bare(spec, trials: int, cache: str, storage: str) -> float:
    from ray import tune

    from orchestrator.train import run_training

    run_spec = spec.run

    def trainable(config: dict) -> None:
        def report(metrics: dict, info: dict) -> None:
            tune.report({k: v for k, v in metrics.items() if k.startswith(("val/", "epoch"))})

        run_training(run_spec, report, tempfile.mkdtemp(), cache)

    t0 = time.perf_counter()
    tune.Tuner(tune.with_resources(trainable, {"cpu": 1}),
               param_space={"i": tune.grid_search(list(range(trials)))},
               tune_config=tune.TuneConfig(max_concurrent_trials=2, reuse_actors=True),
               run_config=tune.RunConfig(name="bare", storage_path=storage, verbose=0)).fit()
    return time.perf_counter() - t0


def ours(spec, cache: str, workdir: Path) -> float:
    from orchestrator.sweep import run_sweep

    os.chdir(workdir)
    t0 = time.perf_counter()
    run_sweep(spec, cache_dir=cache, verbose=0)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pmgi")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--train", action="store_true", help="also time workers: 1 (Ray Train)")
    args = parser.parse_args(argv)
    import ray

    from orchestrator.search_space import load_sweep

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    root = Path(tempfile.mkdtemp(prefix="sweep-overhead-"))
    cache = str(root / "cache")
    yaml_path = REPO / "search_spaces" / f"{args.model}.yaml"
    spec = load_sweep(yaml_path, ["tune.max_concurrent=2"], smoke=True,
                      num_samples=args.trials)
    from orchestrator.train import run_training

    run_training(spec.run, None, str(root / "warm"), cache)  # build data + patches once
    rows = [("bare tune", bare(spec, args.trials, cache, str(root / "bare")))]
    (root / "w0").mkdir()
    rows.append(("sweep (workers: 0)", ours(spec, cache, root / "w0")))
    if args.train:
        spec1 = load_sweep(yaml_path, ["tune.max_concurrent=2", "resources.workers=1",
                                       "resources.cpu_per_worker=0.9"], smoke=True,
                           num_samples=args.trials)
        (root / "w1").mkdir()
        rows.append(("sweep (workers: 1)", ours(spec1, cache, root / "w1")))
    ray.shutdown()
    base = rows[0][1]
    print(f"{args.model}, {args.trials} trials of 1 smoke epoch, 2 concurrent, 2 CPUs")
    print(f"{'variant':<22}{'wall s':>9}{'s/trial':>9}{'vs bare':>9}{'overhead s/trial':>18}")
    for name, wall in rows:
        print(f"{name:<22}{wall:>9.1f}{wall / args.trials:>9.1f}{wall / base:>8.2f}x"
              f"{(wall - base) / args.trials:>18.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
