"""Per-trial overhead of `orchestrator sweep` against bare Ray patterns doing the same work.

On one local Ray (2 CPUs), each variant runs ``--trials`` trials of ``--model``'s smoke settings
(1 epoch), 2 concurrent:

- ``sweep (workers: 0)``: ``run_sweep`` (OptunaSearch + sqlite study, MLflow parent/child runs,
  per-epoch checkpoints, trial table, importances), each trial's loop in its Tune trial;
- ``bare tune``: a Tune function trainable calling ``run_training`` and ``tune.report`` (no
  Optuna, no MLflow, no checkpoints), actors reused like the sweep's;
- ``sweep (workers: 1)`` (``--train``): the same sweep with each trial a Ray Train TorchTrainer;
- ``bare train v2`` (``--train``): the Ray 2.60 Train V2 pattern of ``docs``' recipe, the one
  our ``workers: 1`` trials use: a bare Tune function fitting one TorchTrainer per trial
  (``TuneReportCallback``, run named after the trial, driver 0.1 CPU, one 0.9-CPU worker),
  calling ``run_training`` and ``ray.train.report`` (no Optuna, MLflow or checkpoints).

Each bare variant runs exactly the parameter sets its sweep sampled, in the same order, so the
work per trial is the same (a sampled ``channels: 32`` trial costs several times a ``channels:
8`` one). Data, patches and each sweep's MLflow store (a one-time schema creation of several
seconds that every later sweep in the folder skips) are built before the clocks start; the
store creation is printed on its own. Prints wall time, s/trial, the ratio to the variant's
bare baseline and the overhead per trial over it.

    python benchmarks/sweep_overhead.py --trials 4 [--train]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

_TUNE_KEYS = ("val/", "epoch")


def run_spec(spec, params: dict):
    """The RunSpec one trial trains: the sweep's run spec with ``params`` fixed."""
    from orchestrator.common.config import RunSpec

    raw = spec.run.model_dump(mode="json")
    raw["fixed"] = {**raw.get("fixed", {}), **params}
    return RunSpec(**raw)


def bare_tune(spec, configs: list[dict], cache: str, storage: str) -> float:
    """Wall seconds of the bare Tune function variant over ``configs``."""
    from ray import tune

    from orchestrator.training.loop import run_training

    def trainable(config: dict) -> None:
        def report(metrics: dict, info: dict) -> None:
            tune.report({k: v for k, v in metrics.items() if k.startswith(_TUNE_KEYS)})

        run_training(run_spec(spec, config["params"]), report, tempfile.mkdtemp(), cache)

    t0 = time.perf_counter()
    tune.Tuner(tune.with_resources(trainable, {"cpu": spec.resources.cpu_per_worker}),
               param_space={"params": tune.grid_search(configs)},
               tune_config=tune.TuneConfig(max_concurrent_trials=spec.tune.max_concurrent,
                                           reuse_actors=True),
               run_config=tune.RunConfig(name="bare", storage_path=storage, verbose=0)).fit()
    return time.perf_counter() - t0


def bare_train_v2(spec, configs: list[dict], cache: str, storage: str) -> float:
    """Wall seconds of the bare Tune -> TorchTrainer (Train V2) variant over ``configs``."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from orchestrator.search.sweep import reuses_actors
    from orchestrator.training.loop import run_training

    r = spec.resources

    def worker(config: dict) -> None:
        tc = ray.train.get_context()

        def report(metrics: dict, info: dict) -> None:
            ray.train.report({k: v for k, v in metrics.items() if k.startswith(_TUNE_KEYS)})

        run_training(run_spec(spec, config["params"]), report, tempfile.mkdtemp(), cache,
                     rank=tc.get_world_rank(), world_size=tc.get_world_size())

    def driver(config: dict) -> None:
        trial_id = tune.get_context().get_trial_id()
        TorchTrainer(
            worker, train_loop_config=config,
            scaling_config=ray.train.ScalingConfig(
                num_workers=r.workers, use_gpu=False,
                resources_per_worker={"CPU": r.cpu_per_worker}),
            run_config=ray.train.RunConfig(name=f"train-{trial_id}", storage_path=storage,
                                           callbacks=[TuneReportCallback()]),
        ).fit()

    t0 = time.perf_counter()
    tune.Tuner(tune.with_resources(driver, {"cpu": r.driver_cpu}),
               param_space={"params": tune.grid_search(configs)},
               tune_config=tune.TuneConfig(max_concurrent_trials=spec.tune.max_concurrent,
                                           reuse_actors=reuses_actors(spec)),
               run_config=tune.RunConfig(name="bare-v2", storage_path=storage, verbose=0)).fit()
    return time.perf_counter() - t0


def make_store(workdir: Path, model: str) -> float:
    """Create the sweep folder's MLflow store (schema + experiment) in a fresh process, as an
    earlier sweep or `orchestrator train` there would have; returns its wall seconds."""
    code = ("from orchestrator.common.tracking import ensure_experiment, resolve_tracking_uri; "
            f"ensure_experiment('fusion/{model}', resolve_tracking_uri())")
    workdir.mkdir(parents=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=workdir, check=True,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    return time.perf_counter() - t0


def ours(spec, cache: str, workdir: Path) -> tuple[float, list[dict]]:
    """Wall seconds of ``run_sweep`` in ``workdir`` and the parameters of its trials (in
    the order Tune created them)."""
    from orchestrator.search.sweep import run_sweep

    os.chdir(workdir)
    t0 = time.perf_counter()
    out = run_sweep(spec, cache_dir=cache, verbose=0)
    wall = time.perf_counter() - t0
    os.chdir(REPO)
    bad = [r for r in out.trials if r["status"] != "finished"]
    if bad:
        raise RuntimeError(f"sweep trials did not finish: {bad}")
    return wall, [{k[len("param."):]: v for k, v in r.items() if k.startswith("param.")}
                  for r in out.trials]


def warm_up(spec, cache: str, root: Path) -> None:
    """Untimed: data and patches built, the driver's Ray Tune/Train imports done and Ray's
    first actors started, so no variant pays a first-in-the-session cost."""
    import ray.train.torch  # noqa: F401
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback  # noqa: F401

    from orchestrator.training.loop import run_training

    run_training(spec.run, None, str(root / "warm"), cache)

    def touch(config: dict) -> None:
        import torch  # noqa: F401

        tune.report({"ok": 1})

    tune.Tuner(tune.with_resources(touch, {"cpu": 1}), param_space={"i": tune.grid_search([0, 1])},
               tune_config=tune.TuneConfig(max_concurrent_trials=2, reuse_actors=True),
               run_config=tune.RunConfig(name="warm", storage_path=str(root / "warm"),
                                         verbose=0)).fit()


def variants(args: argparse.Namespace) -> list[tuple]:
    """(label, --set overrides, bare variant name, bare function) per sweep variant."""
    base = ["tune.max_concurrent=2"]
    out = [("workers: 0", base, "bare tune", bare_tune)]
    if args.train:
        out.append(("workers: 1", [*base, "resources.workers=1", "resources.cpu_per_worker=0.9"],
                    "bare train v2", bare_train_v2))
    return out


def measure(args: argparse.Namespace, root: Path) -> tuple[dict, dict, dict[str, float]]:
    """({variant: [wall s per repeat]}, {sweep variant: its bare variant}, {sweep variant:
    store creation s}). Repeats alternate the order: sweep first, then bare first."""
    from orchestrator.search.space import load_sweep

    yaml_path = REPO / "search_spaces" / f"{args.model}.yaml"
    cache = str(root / "cache")
    walls: dict[str, list[float]] = {}
    pairs, stores, configs = {}, {}, {}
    for rep in range(args.repeat):
        for i, (label, overrides, bare_name, bare_fn) in enumerate(variants(args)):
            spec = load_sweep(yaml_path, overrides, smoke=True, num_samples=args.trials)
            if rep == 0 and i == 0:
                warm_up(spec, cache, root)
            name, folder = f"sweep ({label})", root / f"w{i}-{rep}"
            pairs[name] = bare_name
            stores.setdefault(name, make_store(folder, args.model))  # every repeat's folder
            if rep % 2 == 0:
                wall, configs[name] = ours(spec, cache, folder)
            bare = bare_fn(spec, configs[name], cache, str(root / f"bare{i}-{rep}"))
            if rep % 2 == 1:
                wall, _ = ours(spec, cache, folder)
            walls.setdefault(bare_name, []).append(bare)
            walls.setdefault(name, []).append(wall)
    return walls, pairs, stores


def report(args: argparse.Namespace, walls: dict, pairs: dict, stores: dict,
           load: tuple[float, float]) -> None:
    n = args.trials
    mean = {name: sum(v) / len(v) for name, v in walls.items()}
    print(f"\n{args.model}, {n} trials of 1 smoke epoch, 2 concurrent, 2 CPUs, {args.repeat} "
          f"repeat(s) (same parameters per trial in each sweep and its bare baseline); "
          f"load average {load[0]:.2f} before, {load[1]:.2f} after")
    print(f"{'variant':<22}{'wall s':>9}{'s/trial':>9}{'vs bare':>10}{'overhead s/trial':>18}"
          f"   walls per repeat")
    for bare_name in dict.fromkeys(pairs.values()):
        for name in [bare_name, *[s for s, b in pairs.items() if b == bare_name]]:
            ratio, over = "", ""
            if name in pairs:
                ratio = f"{mean[name] / mean[bare_name]:.2f}x"
                over = f"{(mean[name] - mean[bare_name]) / n:+.2f}"
            each = " / ".join(f"{w:.1f}" for w in walls[name])
            print(f"{name:<22}{mean[name]:>9.1f}{mean[name] / n:>9.2f}{ratio:>10}{over:>18}"
                  f"   {each}")
    for name, secs in stores.items():
        print(f"(not timed above: {name}'s new MLflow store, created once: {secs:.1f} s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pmgi")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--train", action="store_true",
                        help="also time workers: 1 (Ray Train) and the bare Train V2 pattern")
    parser.add_argument("--repeat", type=int, default=1,
                        help="measure each pair this many times, alternating which runs first")
    args = parser.parse_args(argv)
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    before = os.getloadavg()[0]
    try:
        walls, pairs, stores = measure(args, Path(tempfile.mkdtemp(prefix="sweep-overhead-")))
    finally:
        ray.shutdown()
    report(args, walls, pairs, stores, (before, os.getloadavg()[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
