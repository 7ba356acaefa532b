"""`orchestrator promote`: a sweep's best checkpoint into the MLflow Model Registry.

:func:`promote` registers the best FINISHED child run's ``checkpoints`` folder (with best.pt)
as a new version of ``fusion-<model>`` via ``create_model_version`` (raw checkpoint folders
cannot go through ``register_model``: orchestration.md §3f) and points an alias at it.
The registered versions are what :func:`orchestrator.common.resolve_checkpoint` fetches.
"""

from __future__ import annotations

import logging
import math
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.common import BEST, child_runs, mlflow_client, resolve_checkpoint, sha256_file

log = logging.getLogger(__name__)
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class PromoteResult:
    """What :func:`promote` registered."""

    model_name: str
    version: str
    alias: str
    run_id: str
    metric: str
    value: float
    sha256: str
    sweep: str


def find_sweep(client: Any, sweep: str) -> Any:
    """The parent run of a sweep given by name (tag ``sweep_name``) or by its run id."""
    from mlflow.exceptions import MlflowException

    if _RUN_ID.match(sweep):
        try:
            run = client.get_run(sweep)
        except MlflowException:  # not a run id after all
            run = None
        if run is not None and "sweep_name" in run.data.tags:
            return run
    if "'" in sweep:
        raise ValueError(f"invalid sweep name {sweep!r} (no quotes)")
    exps = client.search_experiments(filter_string="name LIKE 'fusion/%'")
    names = sorted(e.name for e in exps)
    runs = client.search_runs([e.experiment_id for e in exps],
                              f"tags.sweep_name = '{sweep}'") if exps else []
    if not runs:
        raise ValueError(f"unknown sweep {sweep!r}: no parent run tagged sweep_name={sweep!r} "
                         f"(nor a sweep run with that id) in experiments {names or 'fusion/*'}")
    return runs[0]


def _metric_value(run: Any, metric: str) -> float | None:
    value = run.data.metrics.get(metric)
    return float(value) if value is not None and math.isfinite(value) else None


def has_best(client: Any, run_id: str) -> bool:
    return any(a.path == BEST for a in client.list_artifacts(run_id, "checkpoints"))


def _eligible(run: Any) -> bool:
    """Never promoted: a paper-default control run (``--reseed-best --with-default``) or a
    run whose best.pt came from a degenerate-flagged evaluation (a copy of a source)."""
    from orchestrator.search import CONTROL

    tags = run.data.tags
    if tags.get("reseed_of") == CONTROL:
        return False
    if "best_flagged" in tags:
        return tags["best_flagged"] != "true"
    # a run from before the tag existed: judge it by its last evaluation's flags
    return not run.data.metrics.get("val/degenerate", 0.0) > 0


def pick_run(client: Any, uri: str, parent: Any, metric: str, mode: str,
             run_id: str | None = None) -> Any:
    """The child run to promote: ``run_id`` (checked), else the best FINISHED one with best.pt
    (by its last ``metric`` value; see :func:`_eligible` for the runs never picked)."""
    pid = parent.info.run_id
    if run_id:
        kids = _RUN_ID.match(run_id) and child_runs(uri, pid, f"attributes.run_id = '{run_id}'")
        if not kids:
            raise ValueError(f"run {run_id} is not a child run of sweep "
                             f"{parent.data.tags.get('sweep_name')!r} (parent run {pid})")
        if not has_best(client, run_id):
            raise ValueError(f"run {run_id} has no {BEST} artifact to promote")
        return kids[0]
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', not {mode!r}")
    finished = child_runs(uri, pid, "attributes.status = 'FINISHED'")
    scored = [(v, r) for r in finished
              if (v := _metric_value(r, metric)) is not None and _eligible(r)]
    excluded = sum(not _eligible(r) for r in finished)
    scored.sort(key=lambda vr: vr[0], reverse=mode == "max")
    for _, run in scored:
        if has_best(client, run.info.run_id):
            return run
        log.info("skipping run %s: no %s", run.info.run_id, BEST)
    raise ValueError(f"no candidate run in sweep {parent.data.tags.get('sweep_name')!r}: none "
                     f"of {len(scored)} FINISHED child run(s) with a finite {metric!r} has {BEST}"
                     + (f"; {excluded} run(s) left out as degenerate-flagged or paper-default "
                        "control (name one with --run-id to promote it anyway)"
                        if excluded else ""))


def promote(sweep: str, tracking_uri: str, metric: str = "val/Qabf", mode: str = "max",
            alias: str = "champion", run_id: str | None = None) -> PromoteResult:
    """Register a sweep's best (or the given) trial checkpoint and point ``alias`` at it.

    Raises:
        ValueError: unknown sweep, no candidate run, a run outside the sweep or without
            best.pt, or a best.pt whose sha256 differs from the run's ``best_sha256`` tag.
    """
    from mlflow.exceptions import MlflowException

    client = mlflow_client(tracking_uri)
    parent = find_sweep(client, sweep)
    run = pick_run(client, tracking_uri, parent, metric, mode, run_id)
    rid = run.info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        digest = sha256_file(resolve_checkpoint(f"runs:/{rid}", tracking_uri, Path(tmp)))
    model = parent.data.tags.get("model") or run.data.tags.get("model", "unknown")
    name = f"fusion-{model}"
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, tags={"model": model})
    value = run.data.metrics.get(metric, float("nan"))
    sweep_name = parent.data.tags.get("sweep_name", sweep)
    tags = {"sweep": sweep_name, "metric": metric, metric: str(value), "sha256": digest,
            "run_id": rid, "trial_id": run.data.tags.get("trial_id", "")}
    mv = client.create_model_version(name, source=f"{run.info.artifact_uri}/checkpoints",
                                     run_id=rid, tags=tags)
    client.set_registered_model_alias(name, alias, mv.version)
    log.info("registered %s v%s (run %s, %s=%s) @%s", name, mv.version, rid, metric, value, alias)
    return PromoteResult(name, str(mv.version), alias, rid, metric, float(value), digest,
                         sweep_name)
