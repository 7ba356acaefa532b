"""`orchestrator promote`: a sweep's best checkpoint into the MLflow Model Registry.

:func:`promote` registers the best FINISHED child run's ``checkpoints`` folder (with best.pt)
as a new version of ``fusion-<model>`` via ``create_model_version`` (raw checkpoint folders
cannot go through ``register_model``: orchestration.md §3f) and points an alias at it.
:func:`resolve_checkpoint` turns a path, ``models:/`` or ``runs:/`` ref into a verified file.
"""

from __future__ import annotations

import logging
import math
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.tracking import child_runs, mlflow_client, sha256_file

log = logging.getLogger(__name__)
CACHE_DIR = ".fusion_models"
BEST = "checkpoints/best.pt"
REF_FORMS = ("a checkpoint file, models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID[/PATH] "
             "or pretrained:NAME")
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
    from orchestrator.reseed import CONTROL

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


def _model_version(client: Any, spec: str) -> Any:
    """``NAME@ALIAS`` or ``NAME/VERSION`` -> the ModelVersion."""
    if "@" in spec:
        name, alias = spec.rsplit("@", 1)
        return client.get_model_version_by_alias(name, alias)
    name, _, version = spec.rpartition("/")
    if not name or not version.isdigit():
        raise ValueError(f"models:/{spec}: expected {REF_FORMS}")
    return client.get_model_version(name, version)


def _download(ref: str, uri: str, dst: Path) -> tuple[Path, str, str]:
    """Fetch a models:/ or runs:/ ref into ``dst``: (file, expected sha256, its record)."""
    import mlflow.artifacts

    client = mlflow_client(uri)
    if ref.startswith("models:/"):
        mv = _model_version(client, ref[len("models:/"):])
        dst = dst / mv.name / str(mv.version)
        # not models:/ itself: mlflow 3.17 resolves it with the global registry URI
        src = client.get_model_version_download_uri(mv.name, mv.version)
        expected, what = mv.tags.get("sha256"), f"model version {mv.name}/{mv.version} tag sha256"
    else:
        run_id, _, path = ref[len("runs:/"):].partition("/")
        path = path.strip("/") or BEST
        stem = Path(path).stem if path.endswith(".pt") else "best"
        dst = dst / "runs" / run_id / path
        src = f"runs:/{run_id}/{path}"
        expected = client.get_run(run_id).data.tags.get(f"{stem}_sha256")
        what = f"run {run_id} tag {stem}_sha256"
    local = Path(mlflow.artifacts.download_artifacts(src, dst_path=str(dst), tracking_uri=uri,
                                                     registry_uri=uri))
    if local.is_dir():
        found = sorted(local.rglob("best.pt"))
        if not found:
            raise ValueError(f"{ref}: no best.pt in the downloaded artifacts ({local})")
        local = found[0]
    if not expected:
        raise ValueError(f"{ref}: cannot verify {local.name}: no {what}")
    return local, expected, what


def resolve_checkpoint(ref: str, tracking_uri: str, dst: Path | None = None) -> Path:
    """A local checkpoint file for ``ref`` (see :data:`REF_FORMS`), verified by sha256.

    ``models:/`` and ``runs:/`` refs are downloaded into ``dst`` (default ``./.fusion_models``)
    and checked against the model version's ``sha256`` tag or the run's ``best_sha256`` tag;
    ``pretrained:NAME`` is an imported released checkpoint (``orchestrator import-weights``),
    checked against its ``.sha256`` file.

    Raises:
        ValueError: a missing local file, an unknown model/run/alias, or a digest mismatch.
    """
    if ref.startswith("pretrained:"):
        from orchestrator.import_cmd import resolve_pretrained

        return resolve_pretrained(ref)
    if not ref.startswith(("models:/", "runs:/")):
        path = Path(ref)
        if not path.is_file():
            raise ValueError(f"checkpoint {ref!r} not found (give {REF_FORMS})")
        return path
    from mlflow.exceptions import MlflowException

    try:
        local, expected, what = _download(ref, tracking_uri, Path(dst or CACHE_DIR))
    except (MlflowException, OSError) as exc:
        raise ValueError(f"cannot fetch {ref} from {tracking_uri}: {exc}") from exc
    actual = sha256_file(local)
    if actual != expected:
        raise ValueError(f"{ref}: sha256 mismatch for {local}: file has {actual}, "
                         f"{what} says {expected}")
    log.info("%s -> %s (sha256 %s verified)", ref, local, actual[:12])
    return local
