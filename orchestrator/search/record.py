"""The sweep's MLflow parent run: opened before any trial, summarised after the last.

Parent run (experiment ``fusion/<model>``, run name = sweep name, tag ``sweep_name``): the
resolved YAML, git SHA, a sha256 per data set; at the end the trial table (CSV), the best
trial, the Pareto front (multi-objective), fANOVA and MDI parameter importances per objective
(``summary.json`` and ``importance/<evaluator>/<objective>/<param>`` metrics). Child runs left
RUNNING by early-stopped trials are closed (tag ``early_stopped``); errored trials FAILED.

The MLflow writes run in the sweep's recorder (:mod:`orchestrator.search.recorder`), which imports
this module without the model registry or torch: what needs the spec is computed in the
driver (:func:`parent_plan`, the trial rows, importances) and handed over as plain data.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from orchestrator.common import atomic_write, child_runs, ensure_experiment, mlflow_client
from orchestrator.common.failpoints import failpoint

if TYPE_CHECKING:
    from orchestrator.search.space import SweepSpec

log = logging.getLogger(__name__)


def data_digest(value: str, spec: SweepSpec) -> str:
    """sha256 over a set's pair files (names and bytes); generated sets hash their name."""
    if value.startswith("generated:"):
        return hashlib.sha256(value.encode()).hexdigest()
    from fusion_models.data import open_pair_set

    h = hashlib.sha256()
    for pair in open_pair_set(spec.run.resolve_path(value), task=spec.run.data.task).pairs:
        for path in (pair.path_a, pair.path_b):
            h.update(Path(path).name.encode())
            h.update(Path(path).read_bytes())
    return h.hexdigest()


def find_parent(uri: str, model: str, sweep: str) -> str | None:
    """The parent run id of a sweep (by its name), or None."""
    client = mlflow_client(uri)
    exp = client.get_experiment_by_name(f"fusion/{model}")
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], f"tags.sweep_name = '{sweep}'")
    return runs[0].info.run_id if runs else None


def parent_plan(spec: SweepSpec, name: str, resume: bool) -> dict[str, Any]:
    """What opening the parent run needs, as plain data (the data sets hashed here, once per
    sweep): ``model``, ``name``, ``resume``, ``tags``, ``yaml`` (the resolved spec) and
    ``num_samples``; see :func:`open_parent_run`."""
    from orchestrator.search.space import evaluation_sets
    from orchestrator.training import git_sha

    data = spec.run.data
    tags = {"sweep_name": name, "model": spec.run.model, "git_sha": git_sha(),
            "spec": spec.source, "kind": "sweep"}
    split, final_sets = evaluation_sets(spec)
    roles = [("train", data.train), ("val", spec.run.val_entry())]
    roles += [(f"train_extra{i}", v) for i, v in enumerate(data.extra_train)]
    roles += [(f"test{i or ''}", v) for i, v in enumerate(final_sets)] if split == "test" else []
    for role, value in roles:
        tags[f"data.{role}"] = value
        tags[f"data.{role}.sha256"] = data_digest(value, spec)
    tags["final_eval.split"] = split
    return {"model": spec.run.model, "name": name, "resume": resume, "tags": tags,
            "yaml": yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False),
            "num_samples": spec.tune.num_samples}


def open_parent_run(uri: str, plan: dict[str, Any]) -> str:
    """Create the parent run of :func:`parent_plan` (or reopen it on ``resume``); its id."""
    client = mlflow_client(uri)
    if plan["resume"]:
        run_id = find_parent(uri, plan["model"], plan["name"])
        if run_id:
            client.update_run(run_id, status="RUNNING")
            return run_id
    exp_id = ensure_experiment(f"fusion/{plan['model']}", uri)
    run = client.create_run(exp_id, run_name=plan["name"], tags=plan["tags"])
    client.log_text(run.info.run_id, plan["yaml"], "sweep.yaml")
    client.log_param(run.info.run_id, "num_samples", plan["num_samples"])
    return run.info.run_id


def open_parent(spec: SweepSpec, name: str, uri: str, resume: bool) -> str:
    """Create the parent run (or reopen it on ``--resume``); return its id."""
    return open_parent_run(uri, parent_plan(spec, name, resume))


def finish_store_migration(uri: str) -> None:
    """Finish the schema migration of a sqlite MLflow store that a killed sweep cut short
    while it created the store (MLflow refuses to open it: "out-of-date database schema")."""
    if not uri.startswith("sqlite:///") or not Path(uri.removeprefix("sqlite:///")).is_file():
        return
    import sqlalchemy
    from mlflow.store.db.utils import (
        _get_latest_schema_revision,
        _get_schema_version,
        _upgrade_db,
    )

    engine = sqlalchemy.create_engine(uri)
    try:
        found = _get_schema_version(engine)
        if found != _get_latest_schema_revision():
            log.warning("MLflow store %s: schema %s, its creation was cut short; migrating",
                        uri, found)
            _upgrade_db(engine)
    finally:
        engine.dispose()


def close_parent(uri: str, run_id: str, status: str, note: str = "") -> None:
    client = mlflow_client(uri)
    if note:
        client.set_tag(run_id, "status_note", note[:5000])
    client.set_terminated(run_id, status=status)


def error_line(error: BaseException | None) -> str:
    """The exception line of a trial's error (the last line of Ray's remote traceback)."""
    if error is None:
        return ""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    return (lines[-1] if lines else type(error).__name__)[:300]


def _trial_rows(spec: SweepSpec, grid: Any, children: dict[str, str]) -> list[dict[str, Any]]:
    """One row per Tune result; ``children``: child run id by trial id."""
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        trial_id = str(metrics.get("trial_id", ""))
        epoch = int(metrics.get("epoch", 0) or 0)
        row = {"trial_id": trial_id, "status": "error" if result.error else
               ("stopped" if epoch < spec.epochs else "finished"), "epoch": epoch,
               "run_id": children.get(trial_id, ""), "error": error_line(result.error)}
        row.update({f"param.{k}": v for k, v in (result.config or {}).items()})
        for m in spec.tune.metrics + ["val/degenerate"]:
            row[m] = metrics.get(m, float("nan"))
        rows.append(row)
    return rows


def child_ids(uri: str, parent: str) -> dict[str, str]:
    """The sweep's child run ids by their ``trial_id`` tag."""
    return {r.data.tags.get("trial_id", ""): r.info.run_id for r in child_runs(uri, parent)}


def _close_children(uri: str, rows: list[dict[str, Any]]) -> None:
    client = mlflow_client(uri)
    for row in rows:
        if not row["run_id"]:
            continue
        run = client.get_run(row["run_id"])
        if row["status"] == "stopped":
            client.set_tag(row["run_id"], "early_stopped", f"epoch {row['epoch']}")
        if run.info.status == "RUNNING":
            status = "FAILED" if row["status"] == "error" else "FINISHED"
            client.set_terminated(row["run_id"], status=status)


def ranked(spec: SweepSpec, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trial rows that did not error and have a finite first objective, best first."""
    metric, mode = spec.tune.metrics[0], spec.tune.modes[0]
    ok = [r for r in rows if r["status"] != "error" and math.isfinite(float(r[metric]))]
    return sorted(ok, key=lambda r: float(r[metric]), reverse=mode == "max")


def log_table(client: Any, run_id: str, rows: list[dict[str, Any]], fields: list[str],
              path: Path) -> None:
    """Rows as CSV: written to ``path`` and logged on ``run_id`` under the same file name."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, buf.getvalue())
    client.log_text(run_id, buf.getvalue(), path.name)


def _pareto(spec: SweepSpec, outcome: Any) -> list[dict]:
    """The Pareto front of a multi-objective sweep, from its Optuna study ([] otherwise)."""
    import optuna

    if len(spec.tune.metrics) < 2:
        return []
    storage = f"sqlite:///{outcome.path / 'optuna.db'}"
    try:
        study = optuna.load_study(study_name=outcome.name, storage=storage)
    except (KeyError, ValueError) as exc:
        log.warning("no Optuna study for the Pareto front: %s", exc)
        return []
    return [{"number": t.number, "params": t.params,
             "values": dict(zip(spec.tune.metrics, t.values, strict=True))}
            for t in study.best_trials]


def log_importances(client: Any, run_id: str, sens: dict[str, Any]) -> None:
    """``importance/<evaluator>/<objective>/<param>`` metrics on the parent run."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(f"importance/{kind}/{metric}/{param}", value, now, 0)
             for metric, per in sens["importances"].items()
             for kind, values in per.items() for param, value in values.items()]
    for i in range(0, len(batch), 1000):
        client.log_batch(run_id, metrics=batch[i : i + 1000])


def summarise(spec: SweepSpec, grid: Any, outcome: Any, children: dict[str, str]
              ) -> dict[str, Any]:
    """The trial rows, best trial and Pareto front into ``outcome``; returns what
    :func:`write_summary` logs on the parent run (importances computed here).

    Args:
        children: child run id by trial id (:func:`child_ids`).
    """
    from orchestrator.reporting import param_importances

    rows = _trial_rows(spec, grid, children)
    outcome.trials, outcome.best = rows, next(iter(ranked(spec, rows)), None)
    outcome.pareto = _pareto(spec, outcome)
    sens = param_importances(spec, rows, seed=spec.tune.seed)
    summary = {"best": outcome.best, "pareto_front": outcome.pareto,
               "param_importances": sens, "trials": len(rows),
               "errors": sum(r["status"] == "error" for r in rows)}
    best = None
    if outcome.best:
        metric = spec.tune.metrics[0]
        best = (outcome.best["run_id"], metric, float(outcome.best[metric]))
    return {"rows": rows, "sens": sens, "table": outcome.path / "trials.csv",
            "summary": summary, "best": best}


def write_summary(uri: str, parent: str, rows: list[dict[str, Any]], sens: dict[str, Any],
                  table: Path, summary: dict[str, Any],
                  best: tuple[str, str, float] | None) -> None:
    """Close the child runs, log the importances, trial table (also written to ``table``),
    summary and best trial on the parent run, and close it."""
    _close_children(uri, rows)
    failpoint("summary")
    client = mlflow_client(uri)
    log_importances(client, parent, sens)
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k.startswith("param."), k))
    log_table(client, parent, rows, keys, table)
    client.log_text(parent, json.dumps(summary, indent=1, default=str), "summary.json")
    if best:
        run_id, metric, value = best
        client.set_tag(parent, "best_run_id", run_id)
        client.log_metric(parent, f"best/{metric}", value)
    close_parent(uri, parent, "FINISHED")
