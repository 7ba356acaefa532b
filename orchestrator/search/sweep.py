"""`orchestrator sweep`: Ray Tune + Optuna over one model's search space.

The driver validates the YAML, checks the resource request against the cluster (an
unschedulable trial is an error, never a silent hang), starts the sweep's MLflow recorder (an
actor that opens the parent run and writes every trial's records, see
:mod:`orchestrator.search.recorder`), then runs ``Tuner.fit``: OptunaSearch (TPE, seeded,
define-by-run for conditional entries, study persisted in sqlite beside the Tune results)
behind ``max_concurrent``, ASHA on the reported ``epoch``. Each trial is
:mod:`orchestrator.search.trial`. ``--resume`` restores the newest sweep of the YAML's model (or
``--name``) from its Tune folder.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.common.failpoints import arm_step_hook, armed_env, failpoint
from orchestrator.evaluation import ensure_ray
from orchestrator.search.space import SpaceSampler, SweepSpec
from orchestrator.search.trial import TrialContext, split_config, train_driver, tune_trial

log = logging.getLogger(__name__)


class SweepError(RuntimeError):
    """A sweep that cannot start (resources, resume target)."""

    exit_code = 1


class SweepInterrupted(SweepError):
    """SIGINT (Ctrl-C) stopped the sweep: Tune saved its state, the open runs are closed
    KILLED; ``--resume --name <name>`` continues it."""

    exit_code = 130

    def __init__(self, name: str, message: str = "") -> None:
        super().__init__(message or f"sweep {name} interrupted; resume it with --resume "
                         f"--name {name}")
        self.name = name


#: Set by :func:`sweep_callback`'s SIGINT hook while ``Tuner.fit`` runs (Tune's own handler
#: then stops the trials and saves the experiment state, and ``fit`` returns normally).
_INTERRUPTED = threading.Event()


@dataclass
class SweepOutcome:
    """What a finished sweep hands back to the CLI."""

    name: str
    path: Path
    parent_run_id: str
    tracking_uri: str
    trials: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    pareto: list[dict[str, Any]] = field(default_factory=list)
    best_fused_dir: str | None = None
    final_eval: list[dict[str, Any]] = field(default_factory=list)


def check_resources(spec: SweepSpec, cluster: dict[str, float],
                    nodes: list[dict[str, float]]) -> None:
    """Raise :class:`SweepError` when one trial (or one of its workers) cannot be placed.

    Args:
        cluster: ``ray.cluster_resources()``; nodes: each alive node's resources.
    """
    r = spec.resources
    need = r.per_trial()
    have = {k: float(cluster.get(k, 0.0)) for k in ("CPU", "GPU")}
    short = [k for k in ("CPU", "GPU") if need[k] > have[k] + 1e-9]
    worker = {"CPU": r.cpu_per_worker, "GPU": r.gpu_per_worker}
    fits_node = any(all(n.get(k, 0.0) + 1e-9 >= worker[k] for k in worker) for n in nodes)
    if r.workers and r.driver_resource and cluster.get(r.driver_resource, 0.0) < 1:
        raise SweepError(f"{spec.source}: resources.driver_resource: the cluster offers no "
                         f"{r.driver_resource!r} resource (see cluster/gpu.yaml's head node)")
    if short or not fits_node:
        what = (f"{r.workers} worker(s) x {worker} + driver {{'CPU': {r.driver_cpu}}}"
                if r.workers else f"{worker} in the trial process")
        raise SweepError(
            f"{spec.source}: resources: one trial needs {need} ({what}) but the cluster has "
            f"{have} over {len(nodes)} node(s)"
            + ("" if fits_node else f"; no single node offers {worker} for one worker")
            + ". Lower resources.cpu_per_worker/gpu_per_worker/workers or add nodes.")


def connect(spec: SweepSpec, address: str | None) -> None:
    """Join ``address`` (or start a local Ray), then check that one trial of ``spec`` can be
    placed (:class:`SweepError` otherwise)."""
    import ray

    env = armed_env()
    if env and not ray.is_initialized():  # failpoint tests: every process of the job is armed
        if not address:
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(address=address, log_to_driver=False, runtime_env={"env_vars": env})
    ensure_ray(address)
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    check_resources(spec, ray.cluster_resources(), nodes)


def storage_paths(storage: str) -> tuple[str, Path]:
    """(Tune/Train storage, local sweep root). A URI (``s3://``, ``gs://``: the shared storage
    a multi-node cluster needs) goes to Tune and Train as it is, while the sweep's own files
    (Optuna study, trial table, best fused images) stay in ``./ray_results`` on the driver's
    machine; a local path serves as both."""
    if "://" in storage:
        return storage, Path("ray_results").resolve()
    local = Path(storage).resolve()
    return str(local), local


def find_sweep(storage: str, local_root: Path, model: str, name: str | None) -> str:
    """The name of the sweep to resume: ``name``, or the newest ``<model>-*`` under the local
    sweep root; checked restorable by Tune in ``storage``."""
    from ray import tune

    if name:
        candidates = [name]
    else:
        found = sorted(local_root.glob(f"{model}-*"), key=lambda p: p.stat().st_mtime,
                       reverse=True)
        candidates = [p.name for p in found]
    for candidate in candidates:
        if tune.Tuner.can_restore(f"{storage.rstrip('/')}/{candidate}"):
            return candidate
    raise SweepError(f"--resume: no restorable sweep {'named ' + name if name else 'of ' + model}"
                     f" under {storage}")


def _searcher(spec: SweepSpec, name: str, folder: Path):
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    t = spec.tune
    multi = len(t.metrics) > 1
    folder.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(f"sqlite:///{folder / 'optuna.db'}")
    return OptunaSearch(space=SpaceSampler(spec.space), metric=t.metrics if multi else t.metrics[0],
                        mode=t.modes if multi else t.modes[0], seed=t.seed, study_name=name,
                        storage=storage)


def _scheduler(spec: SweepSpec):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    s = spec.tune.scheduler
    if s.kind == "none" or spec.epochs <= s.grace_period:
        return FIFOScheduler()
    return ASHAScheduler(time_attr="epoch", metric=spec.tune.metrics[0], mode=spec.tune.modes[0],
                         max_t=spec.epochs, grace_period=s.grace_period,
                         reduction_factor=s.reduction_factor)


def trainable(spec: SweepSpec, ctx: TrialContext):
    """The Tune trainable of one trial with its resource request (``workers`` 0: the loop in
    the trial; >= 1: a Ray Train driver, pinned by ``driver_resource``)."""
    from functools import partial

    from ray import tune

    r = spec.resources
    if r.workers == 0:
        fn = partial(_loop_trial, ctx=ctx, epochs=spec.epochs)
        res = {"cpu": r.cpu_per_worker, "gpu": r.gpu_per_worker}
    else:
        fn = partial(train_driver, ctx=ctx)
        res = {"cpu": r.driver_cpu}
        if r.driver_resource:  # pin the trial driver (and its Train controller) to the head
            res[r.driver_resource] = 1
    if armed_env():  # fault-injection tests only; unarmed sweeps run the trial as it is
        fn = partial(_failpoint_trial, inner=fn)
    fn.__name__ = f"{spec.run.model}_trial"
    return tune.with_resources(fn, res)


def _loop_trial(config: dict[str, Any], ctx: TrialContext, epochs: int) -> None:
    """A ``workers: 0`` trial (:func:`~orchestrator.search.trial.tune_trial`), except one whose
    every epoch was done before the driver died and Tune saved none of it: the loop would run
    no epoch and report nothing (Tune then fails the sweep on a result without its metric),
    so the last epoch's metrics, kept in the trial's own ``last.pt``, are reported again."""
    from ray import tune

    metrics = None
    if tune.get_checkpoint() is None:
        params = split_config(config)[0]
        metrics = _completed(Path(tune.get_context().get_trial_dir()) / "run" / "rank0"
                             / "last.pt", int(params.get("epochs", epochs)))
    if metrics is None:
        tune_trial(config, ctx)
        return
    from orchestrator.search.trial import TrialReporter

    log.info("trial %s: every epoch done before the restart", tune.get_context().get_trial_id())
    TrialReporter(ctx, None, tune.report, tune.Checkpoint)(metrics, {"epoch": metrics["epoch"]})


def _completed(last: Path, epochs: int) -> dict[str, float] | None:
    """The metrics of ``last`` when it holds the final epoch (of ``epochs``), else None."""
    if epochs <= 0 or not last.is_file():
        return None
    import torch

    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    if int(ckpt.get("epoch", 0)) < epochs:
        return None
    return {k: float(v) for k, v in ckpt.get("metrics", {}).items()}


def _failpoint_trial(config: dict[str, Any], inner: Any) -> None:
    """A trial with the ``trial_start`` and ``mid_epoch`` failpoints in its process."""
    failpoint("trial_start")
    arm_step_hook()
    inner(config)


def sweep_callback() -> Any:
    """The sweep's Tune callback: notes a SIGINT (Tune's own handler still stops the trials
    and saves the experiment state) and holds the driver's failpoints. Stateless; pickled
    (in Tune's experiment state) as a call of this function."""
    from ray import tune

    class SweepCallback(tune.Callback):
        def setup(self, **info: Any) -> None:
            if threading.current_thread() is not threading.main_thread():
                return
            tune_handler = signal.getsignal(signal.SIGINT)

            def on_sigint(sig: int, frame: Any) -> None:
                _INTERRUPTED.set()
                if callable(tune_handler):
                    tune_handler(sig, frame)

            signal.signal(signal.SIGINT, on_sigint)

        def on_trial_result(self, **info: Any) -> None:
            failpoint("trial_result")

        def on_trial_complete(self, **info: Any) -> None:
            failpoint("trial_complete")

        def __reduce__(self) -> tuple:
            return sweep_callback, ()

    return SweepCallback()


def reuses_actors(spec: SweepSpec) -> bool:
    """Whether a sweep's Tune trial processes serve several trials in turn."""
    return spec.resources.workers == 0


def _tuner(spec: SweepSpec, ctx: TrialContext, name: str, storage: str, local_root: Path,
           resume: bool, verbose: int):
    from ray import tune

    fn = trainable(spec, ctx)
    if resume:
        return tune.Tuner.restore(f"{storage.rstrip('/')}/{name}", trainable=fn,
                                  resume_unfinished=True,
                                  resume_errored=False, restart_errored=False)
    tune_config = tune.TuneConfig(
        num_samples=spec.tune.num_samples, search_alg=_searcher(spec, name, local_root / name),
        scheduler=_scheduler(spec), max_concurrent_trials=spec.tune.max_concurrent,
        reuse_actors=reuses_actors(spec), time_budget_s=spec.tune.time_budget_s)
    return tune.Tuner(fn, tune_config=tune_config,
                      run_config=run_config(spec, name, storage, verbose))


def run_config(spec: SweepSpec, name: str, storage: str, verbose: int):
    """Tune's run config of a sweep (or of its re-seed run) named ``name`` in ``storage``."""
    from ray import tune

    return tune.RunConfig(name=name, storage_path=storage, verbose=verbose,
                          callbacks=[sweep_callback()],
                          failure_config=tune.FailureConfig(max_failures=spec.tune.max_failures))


def trial_context(spec: SweepSpec, name: str, uri: str, parent: str, cache_dir: str,
                  storage: str, recorder: Any = None) -> TrialContext:
    """What every trial of this sweep (or of its re-seed runs) is handed (``recorder``: the
    sweep's recorder actor, which knows the parent run; ``parent`` may then be empty)."""
    r = spec.resources
    return TrialContext(
        run_spec=spec.run.model_dump(mode="json"), tune=spec.tune.model_dump(mode="json"),
        tracking_uri=uri, experiment=f"fusion/{spec.run.model}", parent_run_id=parent,
        sweep_name=name, cache_dir=str(Path(cache_dir).resolve()), workers=r.workers,
        use_gpu=r.gpu_per_worker > 0, cpu_per_worker=r.cpu_per_worker,
        gpu_per_worker=r.gpu_per_worker, storage=storage, recorder=recorder)


def _preload_summary_imports() -> None:
    """Import what the sweep's summary needs (Optuna's importance evaluators pull in
    scikit-learn, ~1.5 s here) while the trials run rather than after the last one."""
    try:
        import optuna.importance  # noqa: F401
    except Exception:  # noqa: BLE001 - an optimisation only; the real import reports errors
        log.debug("preloading optuna.importance failed", exc_info=True)


def run_sweep(spec: SweepSpec, *, address: str | None = None, resume: bool = False,
              name: str | None = None, tracking_uri: str | None = None,
              cache_dir: str = ".fusion_cache", verbose: int = 1) -> SweepOutcome:
    """Run (or resume) a sweep; return its trials, best trial and Pareto front.

    Raises:
        SweepInterrupted: SIGINT stopped it (the state is saved; ``--resume`` continues).
    """
    from orchestrator.common import resolve_tracking_uri
    from orchestrator.search import record
    from orchestrator.search.recorder import ask, recording

    storage, local_root = storage_paths(spec.storage)
    if resume:
        name = find_sweep(storage, local_root, spec.run.model, name)
    name = name or f"{spec.run.model}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    uri = resolve_tracking_uri(tracking_uri or spec.tracking)
    connect(spec, address)
    if resume:
        record.finish_store_migration(uri)
    plan = record.parent_plan(spec, name, resume)
    _INTERRUPTED.clear()
    with recording(uri, f"fusion/{spec.run.model}", plan) as recorder:
        ctx = trial_context(spec, name, uri, "", cache_dir, storage, recorder)
        try:
            grid = _fit(spec, ctx, name, storage, local_root, resume, verbose)
            failpoint("summary_start")
            outcome = SweepOutcome(name, local_root / name, ask(recorder, "parent_run_id"), uri)
            outcome.path.mkdir(parents=True, exist_ok=True)
            summary = record.summarise(spec, grid, outcome, ask(recorder, "child_ids"))
            ask(recorder, "write_summary", summary)
        except KeyboardInterrupt:
            _close_interrupted(recorder, uri, name)
            raise SweepInterrupted(name) from None
        except BaseException as exc:
            _close_failed(recorder, exc)
            raise
    return outcome


class _NoTuneRestoreHint(logging.Filter):
    """Drops Tune's "Resume experiment with: Tuner.restore(...)" advice: a sweep is resumed
    with ``orchestrator sweep --resume`` (:class:`SweepInterrupted` says how)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore(" not in record.getMessage()


def _fit(spec: SweepSpec, ctx: TrialContext, name: str, storage: str, local_root: Path,
         resume: bool, verbose: int) -> Any:
    """``Tuner.fit`` of the sweep; KeyboardInterrupt when a SIGINT stopped it."""
    tune_log = logging.getLogger("ray.tune.tune")
    hint = _NoTuneRestoreHint()
    tune_log.addFilter(hint)
    try:
        tuner = _tuner(spec, ctx, name, storage, local_root, resume, verbose)
        threading.Thread(target=_preload_summary_imports, daemon=True).start()
        grid = tuner.fit()
    finally:
        tune_log.removeFilter(hint)
    if _INTERRUPTED.is_set():
        raise KeyboardInterrupt
    return grid


def _close_interrupted(recorder: Any, uri: str, name: str) -> None:
    """Close the child runs still RUNNING and the parent run KILLED: Tune saved their trials
    as unfinished, and ``--resume`` reopens the same runs (logged, not raised, on failure)."""
    from orchestrator.common import child_runs
    from orchestrator.search.recorder import ask

    note = f"interrupted (SIGINT); resume with --resume --name {name}"
    try:
        parent = ask(recorder, "parent_run_id")
        for run in child_runs(uri, parent):
            if run.info.status == "RUNNING":
                ask(recorder, "finish", run.data.tags.get("trial_id", ""), "KILLED", note)
        ask(recorder, "close_parent", "KILLED", note)
    except Exception:  # noqa: BLE001 - the sweep is stopping already
        log.exception("could not close the interrupted sweep's runs")


def _close_failed(recorder: Any, exc: BaseException) -> None:
    """Close the parent run FAILED (logged, not raised, when the recorder cannot)."""
    from orchestrator.search.recorder import ask

    try:
        ask(recorder, "close_parent", "FAILED", f"{type(exc).__name__}: {exc}")
    except Exception:  # noqa: BLE001 - the sweep is failing already
        log.exception("could not close the sweep's parent run")
