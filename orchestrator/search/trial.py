"""One sweep trial: the shared training loop inside a Tune trial (``workers: 0``) or inside
every Ray Train worker of a ``TorchTrainer`` that a Tune function fits (``workers >= 1``, the
Ray 2.60 V2 pattern: Tune's ``Tuner(trainer)`` is not supported there).

Each trial logs to ONE MLflow child run of the sweep's parent run, from rank 0 only, through
the sweep's recorder actor (:mod:`orchestrator.search.recorder`; in-process when the context has
none): no trial process imports MLflow. The child run is found again by its ``trial_id`` tag
when Tune restores the trial (``--resume``), so a resumed trial continues its run instead of
opening a duplicate. Every epoch reports to Tune with a checkpoint folder holding ``last.pt``
(after its MLflow records were written, or kept on the sweep's spool while MLflow is down:
the trial trains on and the recorder delivers them later); a restored trial continues from it.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Metric keys relayed to Tune (no step-level noise): the loop's epoch, loss means, metrics.
_REPORTED_PREFIXES = ("train/", "val/", "time/")


@dataclass(frozen=True)
class TrialContext:
    """Everything a trial needs, picklable (closed over by the trainable)."""

    run_spec: dict  # RunSpec.model_dump()
    tune: dict  # TuneSpec.model_dump()
    tracking_uri: str
    experiment: str
    parent_run_id: str
    sweep_name: str
    cache_dir: str
    workers: int
    use_gpu: bool
    cpu_per_worker: float
    gpu_per_worker: float
    storage: str
    recorder: Any = None  # the sweep's Recorder actor handle; None: log from this process


#: A re-seed trial's config (``orchestrator sweep --reseed-best``): ``{RESEED: {**params,
#: "__seed__": seed, "__reseed_of__": original trial id}}`` (one grid-search entry).
RESEED = "__reseed__"


def split_config(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model parameters, re-seed extras ``{"seed", "reseed_of"}`` or {}) of a trial config."""
    if RESEED not in config:
        return dict(config), {}
    params = dict(config[RESEED])
    return params, {"seed": params.pop("__seed__"), "reseed_of": params.pop("__reseed_of__")}


def trial_spec(ctx: TrialContext, params: dict[str, Any], seed: int | None = None):
    """The trial's RunSpec: the sweep's run spec with the sampled parameters in ``fixed``
    (and ``train.seed`` replaced for a re-seed trial)."""
    from orchestrator.common import RunSpec

    raw = dict(ctx.run_spec)
    raw["fixed"] = {**raw.get("fixed", {}), **params}
    if seed is not None:
        raw["train"] = {**raw["train"], "seed": int(seed)}
    if ctx.use_gpu:
        raw["train"] = {**raw["train"], "device": "cuda"}
    return RunSpec(**raw)


def _node_id() -> str:
    """The Ray node this process runs on ("" outside Ray)."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    except Exception:  # noqa: BLE001 - tracking must not fail on a missing runtime context
        return ""


def open_child_run(ctx: TrialContext, trial_id: str, trial_name: str, spec,
                   extra_tags: dict[str, Any] | None = None):
    """The trial's MLflow child run (a :class:`~orchestrator.search.recorder.RemoteRun` through the
    sweep's recorder, else an in-process :class:`~orchestrator.common.tracking.MlflowRun`): the
    existing one with this trial_id, else a new one (``extra_tags``: a re-seed trial's
    ``seed`` and ``reseed_of``)."""
    from orchestrator.training import run_params

    tags = {"sweep": ctx.sweep_name, "model": spec.model, "node_id": _node_id(),
            **{k: str(v) for k, v in (extra_tags or {}).items()}}
    if ctx.recorder is not None:
        from orchestrator.search.recorder import RemoteRun

        return RemoteRun(ctx.recorder, trial_id, trial_name, run_params(spec), tags)
    from orchestrator.common import open_child

    return open_child(ctx.tracking_uri, ctx.experiment, ctx.parent_run_id, trial_id,
                      trial_name, run_params(spec), tags)


_UNREAD = object()  # the run's best epoch, not asked for yet


class TrialReporter:
    """The loop's ``report``: the epoch's MLflow records (rank 0; best.pt only when it
    changed), written before the epoch is reported to Tune/Train."""

    def __init__(self, ctx: TrialContext, mlflow_run, report_fn, checkpoint_cls) -> None:
        from orchestrator.search.space import TuneSpec

        self.tune = TuneSpec(**ctx.tune)
        self.run = mlflow_run
        self.report_fn, self.checkpoint_cls = report_fn, checkpoint_cls
        # which best.pt was uploaded last (see _best_key); a resumed run already holds one
        self.logged_best: object = _UNREAD if mlflow_run is not None else None

    @staticmethod
    def _best_key(info: dict) -> object:
        """What identifies the best.pt on disk: the epoch it holds (``best_epoch`` changes
        exactly when the loop rewrites it), else its path and mtime."""
        if info.get("best_epoch") is not None:
            return int(info["best_epoch"])
        path = Path(info["checkpoint"])
        return str(path), path.stat().st_mtime_ns

    def _changed_best(self, info: dict) -> tuple[str, int | None, bool] | None:
        """(path, epoch, flagged) of best.pt when it changed since the last upload, else None."""
        if not info.get("checkpoint"):
            return None
        if self.logged_best is _UNREAD:
            self.logged_best = self.run.best_epoch()
        key = self._best_key(info)
        if key == self.logged_best:
            return None
        self.logged_best = key
        return info["checkpoint"], info.get("best_epoch"), bool(info.get("best_flagged", False))

    def __call__(self, metrics: dict[str, float], info: dict) -> None:
        from orchestrator.search.space import objective_values, penalise_degenerate

        if "diverged" in info:
            raise RuntimeError(f"trial diverged: {info['diverged']}")
        if self.run is not None:  # sent now, written while the Tune checkpoint is prepared
            self.run.log_epoch(metrics, info, self._changed_best(info))
        reported = penalise_degenerate(metrics, self.tune)
        out = {k: float(v) for k, v in reported.items() if k.startswith(_REPORTED_PREFIXES)}
        out["epoch"] = float(info["epoch"])
        if any(m in metrics for m in self.tune.metrics):
            objective_values(metrics, self.tune)  # NaN objective -> error, never a silent rank
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if self.run is not None and info.get("last_checkpoint"):
                _copy_with_sidecar(Path(info["last_checkpoint"]), Path(tmp) / "last.pt")
                (Path(tmp) / "run_id").write_text(self.run.run_id)
                checkpoint = self.checkpoint_cls.from_directory(tmp)
            if self.run is not None:
                self.run.flush()  # in MLflow (or its spool) before Tune/Train hears of it
            self.report_fn(out, checkpoint=checkpoint)


def _copy_with_sidecar(src: Path, dst: Path) -> Path:
    """Copy a checkpoint and its ``.sha256`` sidecar (when it has one), so the copy is
    verified on load like the original."""
    from fusion_models.registry import sidecar_path

    side = sidecar_path(src)
    if side.is_file():
        shutil.copy(side, sidecar_path(dst))
    return Path(shutil.copy(src, dst))


def _copy_resume(src: Path, into: Path) -> Path | None:
    if not src.is_file():
        return None
    into.mkdir(parents=True, exist_ok=True)
    return _copy_with_sidecar(src, into / "resume.pt")


def _resume_path(get_checkpoint, into: Path, local_last: Path) -> Path | None:
    """What a restored trial continues from: Tune's/Train's checkpoint, else the ``last.pt``
    the loop wrote in this trial's own folder (a driver killed before Tune saved its state
    still loses no finished epoch); None for a fresh trial. Copied into ``into``."""
    ckpt = get_checkpoint()
    if ckpt is None:
        return _copy_resume(local_last, into)
    with ckpt.as_directory() as d:
        return _copy_resume(Path(d) / "last.pt", into)


def run_trial_loop(ctx: TrialContext, params: dict[str, Any], trial_id: str, trial_name: str,
                   out_dir: Path, rank: int, world_size: int, report_fn, checkpoint_cls,
                   get_checkpoint) -> None:
    """The loop for one trial on one process (rank); raises when the run diverged."""
    from orchestrator.training import run_training

    params, reseed = split_config(params)
    spec = trial_spec(ctx, params, reseed.get("seed"))
    mlflow_run = open_child_run(ctx, trial_id, trial_name, spec, reseed) if rank == 0 else None
    reporter = TrialReporter(ctx, mlflow_run, report_fn, checkpoint_cls)
    resume = _resume_path(get_checkpoint, out_dir, out_dir / f"rank{rank}" / "last.pt")
    try:
        run_training(spec, reporter, out_dir / f"rank{rank}", ctx.cache_dir,
                     resume_from=resume, rank=rank, world_size=world_size)
    except SystemExit:  # Tune stopping the trial (ASHA) exits its thread after a report
        _close(mlflow_run, "FINISHED", "stopped early by the scheduler")
        raise
    except BaseException as exc:
        _close(mlflow_run, "FAILED", f"{type(exc).__name__}: {exc}")
        raise
    if mlflow_run is not None:
        mlflow_run.finish("FINISHED")


def _close(mlflow_run, status: str, note: str) -> None:
    """Flush and close the run of a loop that ended by an exception; a failure here is
    logged, so the loop's own exception is the one raised."""
    if mlflow_run is None:
        return
    try:
        mlflow_run.finish(status, note)
    except Exception:  # noqa: BLE001 - the trial is failing already
        log.exception("could not close MLflow run %s as %s", status, note[:200])


def tune_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """``workers: 0``: the loop runs in this Tune trial process."""
    from ray import tune

    tc = tune.get_context()
    run_trial_loop(ctx, config, tc.get_trial_id(), tc.get_trial_name(),
                   Path(tc.get_trial_dir()) / "run", 0, 1, tune.report, tune.Checkpoint,
                   tune.get_checkpoint)


def train_worker(config: dict[str, Any]) -> None:
    """``workers >= 1``: runs on every Ray Train worker; rank 0 tracks."""
    import ray.train

    ctx: TrialContext = config.pop("__ctx__")
    trial_id, trial_name = config.pop("__trial_id__"), config.pop("__trial_name__")
    tc = ray.train.get_context()
    out = Path(tempfile.gettempdir()) / "fusion-trials" / ctx.sweep_name / trial_id
    run_trial_loop(ctx, config, trial_id, trial_name, out, tc.get_world_rank(),
                   tc.get_world_size(), ray.train.report, ray.train.Checkpoint,
                   ray.train.get_checkpoint)
    # finished: the checkpoints live in Train's storage and MLflow; drop the scratch copies
    shutil.rmtree(out / f"rank{tc.get_world_rank()}", ignore_errors=True)


def train_driver(config: dict[str, Any], ctx: TrialContext) -> None:
    """The Tune function of a ``workers >= 1`` trial: fits one TorchTrainer and relays its
    reports to Tune. The Train run is named after the trial, so a retried or resumed trial
    restores the Train run's own latest checkpoint."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    tc = tune.get_context()
    loop_config = {**config, "__ctx__": ctx, "__trial_id__": tc.get_trial_id(),
                   "__trial_name__": tc.get_trial_name()}
    per_worker = {"CPU": ctx.cpu_per_worker}
    if ctx.use_gpu:
        per_worker["GPU"] = ctx.gpu_per_worker
    TorchTrainer(
        train_worker, train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=ctx.workers, use_gpu=ctx.use_gpu,
                                               resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(name=f"train-{tc.get_trial_id()}",
                                       storage_path=ctx.storage,
                                       callbacks=[TuneReportCallback()]),
    ).fit()
