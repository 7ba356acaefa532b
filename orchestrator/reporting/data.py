"""A finished sweep as MLflow holds it: the parent run's resolved spec, trial table, test
results and seed variance, typed back from their CSV/JSON artifacts; the top trials' loss and
validation curves from their child runs. Only MLflow is read (no Ray, no ``optuna.db``), so a
report can be written on any machine that reaches the tracking server.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any

from orchestrator.common import load_yaml
from orchestrator.search import SweepSpec

#: Trial-table columns that stay text; the rest are numbers (``param.*`` stay text too and are
#: typed by their space entry, see :func:`orchestrator.reporting.sensitivity.trial_params`).
_TEXT = {"trial_id", "run_id", "status", "error", "set", "reseed_of"}


@dataclass
class SweepRecord:
    """Everything a report shows about one sweep."""

    name: str
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    spec: SweepSpec
    trials: list[dict[str, Any]]
    seed_stats: list[dict[str, Any]] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    comparison: dict[str, Any] | None = None  # `orchestrator compare`'s comparison.json


def _text(client: Any, run_id: str, path: str) -> str | None:
    """An artifact's text, or None when the run has no such artifact."""
    import tempfile
    from pathlib import Path

    folder = path.rsplit("/", 1)[0] if "/" in path else None
    names = {a.path for a in client.list_artifacts(run_id, folder)}
    if path not in names:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return Path(client.download_artifacts(run_id, path, tmp)).read_text()


def _typed(value: str, key: str) -> Any:
    if key in _TEXT or key.startswith("param."):
        return value
    if value == "":
        return math.nan
    try:
        return float(value)
    except ValueError:
        return value


def parse_table(text: str) -> list[dict[str, Any]]:
    """CSV text -> rows; numeric columns as floats (empty cells NaN), ``epoch`` as int."""
    rows = []
    for raw in csv.DictReader(io.StringIO(text)):
        row = {k: _typed(v, k) for k, v in raw.items()}
        if "epoch" in row and isinstance(row["epoch"], float) and math.isfinite(row["epoch"]):
            row["epoch"] = int(row["epoch"])
        rows.append(row)
    return rows


def read_spec(client: Any, run_id: str) -> SweepSpec:
    """The resolved sweep spec logged on the parent run (``sweep.yaml``)."""
    text = _text(client, run_id, "sweep.yaml")
    if text is None:
        raise ValueError(f"run {run_id} has no sweep.yaml artifact: not a sweep's parent run")
    return SweepSpec.model_validate(load_yaml(text, f"run {run_id}: sweep.yaml"))


def read_trials(client: Any, run_id: str) -> list[dict[str, Any]]:
    """The parent run's trial table (``trials.csv``, written when the sweep finished)."""
    text = _text(client, run_id, "trials.csv")
    if text is None:
        raise ValueError(f"sweep run {run_id} has no trials.csv: the sweep has not finished "
                         "(resume it with `orchestrator sweep SPEC --resume`)")
    return parse_table(text)


def read_seed_stats(client: Any, run_id: str) -> list[dict[str, Any]]:
    """``seed_variance.json``'s per-configuration stats ([] before any ``--reseed-best``)."""
    text = _text(client, run_id, "seed_variance.json")
    return json.loads(text)["stats"] if text else []


def load_record(sweep: str, tracking_uri: str) -> SweepRecord:
    """The sweep (name or parent run id) from MLflow.

    Raises:
        ValueError: unknown sweep, or one that has not finished.
    """
    from orchestrator.common import mlflow_client
    from orchestrator.deploy import find_sweep

    client = mlflow_client(tracking_uri)
    parent = find_sweep(client, sweep)
    rid = parent.info.run_id
    return SweepRecord(
        name=parent.data.tags.get("sweep_name", sweep), parent_run_id=rid,
        experiment_id=parent.info.experiment_id, tracking_uri=tracking_uri,
        spec=read_spec(client, rid), trials=read_trials(client, rid),
        seed_stats=read_seed_stats(client, rid), tags=dict(parent.data.tags),
        comparison=_json(client, rid, "comparison/comparison.json"))


def _json(client: Any, run_id: str, path: str) -> Any:
    text = _text(client, run_id, path)
    return json.loads(text) if text else None


def curves(tracking_uri: str, run_id: str, keys: list[str]) -> dict[str, list[tuple[int, float]]]:
    """Metric histories of one run: {key: [(step, value), ...]} for the keys it has."""
    from orchestrator.common import mlflow_client

    client = mlflow_client(tracking_uri)
    have = client.get_run(run_id).data.metrics
    out = {}
    for key in keys:
        if key in have:
            hist = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
            out[key] = [(m.step, float(m.value)) for m in hist]
    return out


def with_run_metrics(tracking_uri: str, parent_run_id: str, rows: list[dict[str, Any]],
                     prefix: str = "val/") -> list[dict[str, Any]]:
    """The trial rows with every ``prefix`` metric of their child run added (its last logged
    value: the last epoch the trial reached), where the row does not have it already."""
    from orchestrator.common import child_runs

    by_id = {r.info.run_id: r.data.metrics for r in child_runs(tracking_uri, parent_run_id)}
    out = []
    for row in rows:
        metrics = by_id.get(row.get("run_id", ""), {})
        extra = {k: float(v) for k, v in metrics.items() if k.startswith(prefix) and k not in row}
        out.append({**row, **extra})
    return out
