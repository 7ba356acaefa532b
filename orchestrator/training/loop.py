"""The one training loop: used by ``orchestrator train`` and by every sweep trial.

``run_training(spec, report)`` builds the data (cached patch store), the model and its
optimisers, runs the epochs, validates every ``eval_every`` epochs on full-size pairs, saves
``best.pt`` and ``last.pt`` and hands each epoch's metrics to ``report``. It imports neither
Ray nor MLflow: reporting and tracking are passed in, so the loop runs on machines without them.
A NaN/Inf loss ends the run with status ``diverged`` and the step where it happened.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader

from fusion_models.data import PairSet, generated_set, open_pair_set
from fusion_models.data.colour import default_rule
from fusion_models.data.patches import PatchStore
from fusion_models.models.base import FusionModel
from fusion_models.registry import build, verify_checkpoint_file
from orchestrator.common import INIT_FORMS, RunSpec, failpoint
from orchestrator.common.atomic import save_checkpoint_file
from orchestrator.training.validation import evaluate_model, load_val_pairs, sample_grid

log = logging.getLogger(__name__)

#: report(metrics, info): metrics are flat floats (``epoch``, ``train/*``, ``val/*``); info has
#: ``epoch``, ``checkpoint`` (path of best.pt or None), ``best_epoch`` (the epoch best.pt
#: holds; it changes exactly when best.pt was rewritten), ``best_flagged`` (its evaluation
#: had degenerate-flagged pairs), ``last_checkpoint``, ``samples``
#: (uint8 grid or None), ``step_terms`` (list of (global_step, {term: value})).
Reporter = Callable[[dict[str, float], dict], None]
StepCallback = Callable[[int, dict[str, float]], None]


class Diverged(RuntimeError):
    """A loss term became NaN/Inf."""

    def __init__(self, step: int, epoch: int, terms: dict[str, float]) -> None:
        bad = {k: v for k, v in terms.items() if not math.isfinite(v)}
        super().__init__(f"diverged at step {step} (epoch {epoch}): non-finite {bad}")
        self.step, self.epoch, self.terms = step, epoch, bad


@dataclass
class TrainResult:
    """Outcome of :func:`run_training`."""

    status: str  # "finished" | "diverged"
    epochs_run: int
    best_value: float | None
    best_checkpoint: str | None
    last_checkpoint: str | None
    history: list[dict[str, float]] = field(default_factory=list)
    reason: str = ""
    diverged_step: int | None = None
    run_id: str | None = None  # set by callers that track the run (MLflow)
    best_epoch: int | None = None
    best_flagged: bool = False  # best.pt's evaluation had degenerate-flagged pairs


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return the generator driving the data order."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but torch sees no CUDA device")
    return torch.device(name)


def resolve_set(spec: RunSpec, value: str, cache_dir: Path) -> PairSet:
    """A data entry of the spec: a set folder or ``generated:<kind>[:<split>]`` (cached)."""
    if value.startswith("generated:"):
        return generated_set(value.split(":", 1)[1], cache_dir / "generated")
    return open_pair_set(spec.resolve_path(value), task=spec.data.task)


def colour_rule(spec: RunSpec, pair_set: PairSet) -> str:
    """The spec's colour rule for a set: ``data.colour``, or for ``auto`` the task's default
    (``data.task``, else the task the set's folder names imply)."""
    if spec.data.colour != "auto":
        return spec.data.colour
    return default_rule(spec.data.task or pair_set.task)


def resolve_init(ref: str) -> Path:
    """The local file of an ``init`` reference (see :data:`orchestrator.common.config.INIT_FORMS`);
    ``runs:/`` and ``models:/`` are fetched from MLflow (imported only for those)."""
    if ref.startswith(("runs:/", "models:/", "pretrained:")):
        from orchestrator.common import resolve_checkpoint, resolve_tracking_uri

        return resolve_checkpoint(ref, resolve_tracking_uri(None))
    if not Path(ref).is_file():
        raise ValueError(f"fixed.init: {ref!r} is not a file ({INIT_FORMS})")
    verify_checkpoint_file(ref)  # against its .sha256 sidecar, when it has one
    return Path(ref)


def load_init(model: FusionModel, ref: str) -> None:
    """Start ``model`` from the weights of checkpoint ``ref`` (not its optimiser state).

    Raises:
        ValueError: the checkpoint is of another model, or its tensors do not fit this
            model's Config (the message names the keys).
    """
    ckpt = torch.load(resolve_init(ref), map_location="cpu", weights_only=True)
    if ckpt.get("model") != model.name:
        raise ValueError(f"fixed.init: {ref} is a {ckpt.get('model')!r} checkpoint, this run "
                         f"trains {model.name!r}")
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise ValueError(f"fixed.init: {ref} does not fit {model.name} with these "
                         f"parameters: {exc}") from None
    log.info("weights start from %s (epoch %s)", ref, ckpt.get("epoch"))


def _make_model(spec: RunSpec, device: torch.device) -> FusionModel:
    model = build(spec.model, spec.model_params())
    if spec.init_ref():
        load_init(model, spec.init_ref())
    model = model.to(device)
    if device.type == "cuda":
        model.amp_dtype = torch.bfloat16
        model = model.to(memory_format=torch.channels_last)
    return model


def _loader(spec: RunSpec, model: FusionModel, train_sets: list[PairSet], cache_dir: Path,
            generator: torch.Generator) -> DataLoader:
    """Batches over the patches of ``data.train`` and every ``data.extra_train`` set."""
    datasets = []
    for train_set in train_sets:
        store = PatchStore.build_or_load(train_set, model.patch_spec(), cache_dir / "patches",
                                         colour_rule=spec.data.colour, task=spec.data.task)
        if len(store) == 0:
            raise ValueError(f"no training patches: the images of {train_set.root} are smaller "
                             f"than the patch ({model.patch_spec()})")
        log.info("patch store %s: %d patches", store.path, len(store))
        datasets.append(store.dataset(model.input_scale))
    data = datasets[0] if len(datasets) == 1 else ConcatDataset(datasets)
    batch = min(model.config.batch_size, len(data))
    return DataLoader(data, batch_size=batch, shuffle=True, drop_last=True,
                      generator=generator, num_workers=spec.train.num_workers)


def _train_epoch(model: FusionModel, loader: DataLoader, epoch: int, step0: int,
                 max_steps: int | None, on_step: StepCallback | None
                 ) -> tuple[dict[str, float], list[tuple[int, dict[str, float]]], int]:
    """One epoch; returns (mean of each term, per-step terms, steps done)."""
    model.train()
    sums: dict[str, float] = defaultdict(float)
    steps: list[tuple[int, dict[str, float]]] = []
    device = model.device
    for i, batch in enumerate(loader):
        if max_steps is not None and i >= max_steps:
            break
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        terms = {k: float(v) for k, v in model.training_step(batch).items()}
        step = step0 + i + 1
        if not all(math.isfinite(v) for v in terms.values()):
            raise Diverged(step, epoch, terms)
        for k, v in terms.items():
            sums[k] += v
        steps.append((step, terms))
        if on_step:
            on_step(step, terms)
    n = max(1, len(steps))
    return {f"train/{k}": v / n for k, v in sums.items()}, steps, len(steps)


def _save(model: FusionModel, epoch: int, path: Path, metrics: dict[str, float],
          best: dict[str, float | int | str] | None = None) -> str:
    """Atomic checkpoint with a ``.sha256`` sidecar; ``best`` (``{"metric", "value", "epoch"}``,
    in ``last.pt``) lets a resumed run keep the best it had instead of taking its next
    validation as the best. A full disk raises :class:`DiskFullError` naming the file and
    leaves the previous checkpoint as it was."""
    ckpt = model.checkpoint(epoch)
    ckpt["metrics"] = {k: float(v) for k, v in metrics.items()}
    if best is not None:
        ckpt["best"] = best
    failpoint("checkpoint_write")  # fault-injection tests (orchestrator.common.failpoints)
    # temp file + fsync + rename: never a half-written checkpoint under the real name
    save_checkpoint_file(ckpt, path)
    return str(path)


def _better(value: float, flagged: bool, result: TrainResult, mode: str) -> bool:
    """Whether an evaluation replaces best.pt: an unflagged one always beats a flagged best
    and a flagged one never replaces an unflagged best (``train.reject_degenerate``: a copy
    of a source never wins while a real fusion exists); otherwise the metric decides."""
    if result.best_value is not None and flagged != result.best_flagged:
        return not flagged and math.isfinite(value)
    return _improved(value, result.best_value, mode)


def _improved(value: float, best: float | None, mode: str) -> bool:
    if not math.isfinite(value):
        return False
    return best is None or (value > best if mode == "max" else value < best)


@dataclass
class _Run:
    """What :func:`run_training` sets up once."""

    model: FusionModel
    loader: DataLoader
    val_pairs: list
    out_dir: Path


def sync_gradients(model: FusionModel, world_size: int) -> None:
    """Data-parallel training for multi-network models: before every optimiser step, average
    that optimiser's gradients over the ``world_size`` ranks (one flat all-reduce). Every rank
    starts from the same seed, hence the same weights, and sees its own batches."""
    import torch.distributed as dist

    def average(opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset: offset + g.numel()].view_as(g))
            offset += g.numel()

    for opt in model.optimizers.values():
        opt.register_step_pre_hook(average)


def _setup(spec: RunSpec, out_dir: Path, cache_dir: Path, rank: int = 0,
           world_size: int = 1) -> _Run:
    seed_everything(spec.train.seed)  # same weights on every rank
    generator = torch.Generator().manual_seed(spec.train.seed + rank)  # own batches per rank
    device = resolve_device(spec.train.device)
    if device.type == "cuda" and world_size > 1:
        device = torch.device("cuda", torch.cuda.current_device())
    out_dir.mkdir(parents=True, exist_ok=True)
    model = _make_model(spec, device)
    if world_size > 1:
        if model.data_dependent_steps:
            raise ValueError(f"{spec.model}: its optimiser steps per batch depend on the loss "
                             "values, so it cannot train on several workers (resources.workers"
                             " must be 1)")
        sync_gradients(model, world_size)
    train_sets = [resolve_set(spec, v, cache_dir) for v in [spec.data.train,
                                                               *spec.data.extra_train]]
    val_set = resolve_set(spec, spec.val_entry(), cache_dir)
    val_pairs = load_val_pairs(val_set, colour_rule(spec, val_set), spec.data.val_pairs)
    loader = _loader(spec, model, train_sets, cache_dir, generator)
    cap = spec.train.max_steps_per_epoch
    model.steps_per_epoch = min(len(loader), cap) if cap else len(loader)
    return _Run(model, loader, val_pairs, out_dir)


def _validate(run: _Run, spec: RunSpec, epoch: int, metrics: dict[str, float],
              result: TrainResult) -> np.ndarray | None:
    """Validation metrics into ``metrics``; best.pt when this evaluation is better (see
    :func:`_better`)."""
    t = spec.train
    val_m, fused = evaluate_model(run.model, run.val_pairs, t.val_metrics)
    metrics.update(val_m)
    value = val_m.get(t.select_metric, float("nan"))
    flagged = t.reject_degenerate and val_m.get("val/degenerate", 0.0) > 0
    if flagged:
        log.info("epoch %d: %.0f%% of the validation pairs flagged degenerate", epoch,
                 100 * val_m["val/degenerate"])
    if _better(value, flagged, result, t.select_mode):
        result.best_value, result.best_epoch, result.best_flagged = value, epoch, flagged
        result.best_checkpoint = _save(run.model, epoch, run.out_dir / "best.pt", metrics)
    if not t.sample_pairs:
        return None
    return sample_grid(run.val_pairs[: t.sample_pairs], fused[: t.sample_pairs])


def _best_record(spec: RunSpec, result: TrainResult) -> dict[str, float | int | str] | None:
    if result.best_value is None:
        return None
    return {"metric": spec.train.select_metric, "mode": spec.train.select_mode,
            "value": float(result.best_value), "epoch": int(result.best_epoch or 0),
            "flagged": bool(result.best_flagged)}


def _resume(run: _Run, spec: RunSpec, path: str | Path, result: TrainResult) -> int:
    """Load ``last.pt`` (weights, optimisers, epoch) into ``run`` and its best so far into
    ``result`` (value, epoch; ``best.pt`` of this folder when it holds that epoch); returns
    the global step reached. Raises ValueError (naming it) if it differs from its sidecar."""
    verify_checkpoint_file(path)
    ckpt = torch.load(path, map_location=run.model.device, weights_only=True)
    run.model.load_checkpoint_state(ckpt)
    result.epochs_run = int(ckpt["epoch"])
    best = ckpt.get("best")
    if best and best.get("metric") == spec.train.select_metric \
            and best.get("mode") == spec.train.select_mode:
        result.best_value, result.best_epoch = float(best["value"]), int(best["epoch"])
        result.best_flagged = bool(best.get("flagged", False))
        local = run.out_dir / "best.pt"
        if local.is_file() and _checkpoint_epoch(local) == result.best_epoch:
            result.best_checkpoint = str(local)
        log.info("resumed at epoch %d; best %s %.6g from epoch %d", result.epochs_run,
                 best["metric"], result.best_value, result.best_epoch)
    return int(ckpt.get("metrics", {}).get("step", 0))


def _checkpoint_epoch(path: Path) -> int | None:
    """The epoch a checkpoint holds; None (with a warning) if it fails its sidecar or to load."""
    try:
        verify_checkpoint_file(path)
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        log.warning("not using %s: %s", path, str(exc).splitlines()[0] if str(exc) else exc)
        return None


def run_training(
    spec: RunSpec,
    report: Reporter | None = None,
    out_dir: str | Path = "runs/last",
    cache_dir: str | Path = ".fusion_cache",
    on_step: StepCallback | None = None,
    resume_from: str | Path | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> TrainResult:
    """Train one configuration.

    Args:
        spec: the validated run spec (model, data, fixed params, train settings).
        report: called after every epoch with the metrics and info (see :data:`Reporter`).
        out_dir: where ``best.pt`` and ``last.pt`` go.
        cache_dir: generated data and patch stores (shared between runs).
        on_step: called after every training step with (global step, loss terms).
        resume_from: a ``last.pt`` to continue from (weights, optimisers, epoch).
        rank, world_size: data-parallel position (Ray Train workers): the same initial
            weights on every rank, a rank-specific data order, gradients averaged over ranks
            (``torch.distributed`` must be initialised when ``world_size > 1``).

    Returns:
        :class:`TrainResult`; ``status == "diverged"`` carries the step in ``diverged_step``.
    """
    run = _setup(spec, Path(out_dir), Path(cache_dir), rank, world_size)
    result = TrainResult("finished", 0, None, None, None)
    step = 0
    if resume_from is not None:
        step = _resume(run, spec, resume_from, result)
    start_epoch = result.epochs_run
    epochs, t = run.model.config.epochs, spec.train
    for epoch in range(start_epoch + 1, epochs + 1):
        t0 = time.perf_counter()
        try:
            train_m, step_terms, n = _train_epoch(run.model, run.loader, epoch, step,
                                                  t.max_steps_per_epoch, on_step)
        except Diverged as exc:
            log.error("%s", exc)
            result.status, result.reason, result.diverged_step = "diverged", str(exc), exc.step
            if report:
                report({"epoch": float(epoch), "diverged": 1.0},
                       {"epoch": epoch, "diverged": str(exc), "checkpoint": None})
            return result
        step += n
        metrics = {"epoch": float(epoch), "step": float(step), **train_m,
                   "time/epoch_s": time.perf_counter() - t0}
        samples = None
        if epoch % t.eval_every == 0 or epoch == epochs:
            samples = _validate(run, spec, epoch, metrics, result)
        result.last_checkpoint = _save(run.model, epoch, run.out_dir / "last.pt", metrics,
                                       _best_record(spec, result))
        result.epochs_run = epoch
        result.history.append(metrics)
        if report:
            report(metrics, {"epoch": epoch, "checkpoint": result.best_checkpoint,
                             "best_epoch": result.best_epoch,
                             "best_flagged": result.best_flagged,
                             "last_checkpoint": result.last_checkpoint, "samples": samples,
                             "step_terms": step_terms})
    return result
