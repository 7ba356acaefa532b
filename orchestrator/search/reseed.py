"""`orchestrator sweep SPEC --reseed-best N --seeds K`: how much of a "better" result is noise.

The N best configurations of a finished sweep (its first objective, from the parent run's
trial table) are trained again with K new seeds each (``train.seed`` = the sweep's seed + 1
.. + K), with the sweep's own resolved spec (the ``sweep.yaml`` on its parent run), as one
Ray Tune grid of N x K trials without early stopping. Each is an MLflow child run of the
sweep's parent run, tagged ``reseed_of`` (the original trial id) and ``seed``. The parent run
gets ``seed_variance.csv`` and ``seed_variance.json``: per configuration the sweep's value and
the seeds' mean, standard deviation, min and max for each objective.

With ``--with-default`` the grid also trains the control: the model at its paper defaults
(the YAML's ``fixed`` and ``train`` budget, no searched parameter set, a cold start) with
the same K seeds, as child runs tagged ``reseed_of`` = :data:`CONTROL`. `orchestrator
compare` measures both on the test pairs; `orchestrator promote` never picks a control run.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.search.space import SweepSpec

log = logging.getLogger(__name__)

#: ``reseed_of`` of the paper-default control runs (``--reseed-best N --with-default``).
CONTROL = "paper-default"


@dataclass
class ReseedOutcome:
    """What the CLI prints: the sweep, its re-seed Tune run, rows per trial, stats per config."""

    sweep: str
    parent_run_id: str
    name: str
    metrics: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    stats: list[dict[str, Any]] = field(default_factory=list)


def sweep_record(uri: str, sweep: str | None, model: str) -> tuple[Any, SweepSpec, list[dict]]:
    """(parent run, resolved spec, trial rows) of ``sweep`` (name or parent run id), or of the
    newest finished sweep of ``model`` when ``sweep`` is None.

    Raises:
        ValueError: no such sweep, a sweep of another model, or one without its trial table.
    """
    from orchestrator.common import mlflow_client
    from orchestrator.deploy import find_sweep
    from orchestrator.reporting import read_spec, read_trials

    client = mlflow_client(uri)
    if sweep is None:
        exp = client.get_experiment_by_name(f"fusion/{model}")
        runs = client.search_runs(
            [exp.experiment_id], "tags.kind = 'sweep' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"], max_results=1) if exp else []
        if not runs:
            raise ValueError(f"--reseed-best: no finished sweep of {model} in {uri}; "
                             "run `orchestrator sweep` first or pass --name")
        parent = runs[0]
    else:
        parent = find_sweep(client, sweep)
    found = parent.data.tags.get("model")
    if found != model:
        raise ValueError(f"--reseed-best: sweep {parent.data.tags.get('sweep_name')!r} trained "
                         f"{found}, but the YAML is for {model}")
    spec = read_spec(client, parent.info.run_id)
    return parent, spec, read_trials(client, parent.info.run_id)


def reseed_configs(spec: SweepSpec, rows: list[dict[str, Any]], top_n: int,
                   seeds: int, with_default: bool = False) -> list[dict[str, Any]]:
    """The grid: one config per (configuration, seed), best configuration first; then, with
    ``with_default``, the paper-default control (no searched parameter) with the same seeds."""
    from orchestrator.reporting import trial_params
    from orchestrator.search.record import ranked

    best = [r for r in ranked(spec, rows)][:top_n]
    if not best:
        raise ValueError("--reseed-best: the sweep has no trial with a finite "
                         f"{spec.tune.metrics[0]} to re-seed")
    base = spec.run.train.seed
    grid = [{**trial_params(spec, row), "__seed__": base + k, "__reseed_of__": row["trial_id"]}
            for row in best for k in range(1, seeds + 1)]
    if with_default:
        grid += [{"__seed__": base + k, "__reseed_of__": CONTROL} for k in range(1, seeds + 1)]
    return grid


def _rows(grid: Any, spec: SweepSpec) -> list[dict[str, Any]]:
    from orchestrator.search.record import error_line
    from orchestrator.search.trial import RESEED

    rows = []
    for result in grid:
        config, metrics = (result.config or {}).get(RESEED, {}), result.metrics or {}
        row = {"trial_id": str(metrics.get("trial_id", "")),
               "reseed_of": config.get("__reseed_of__"), "seed": config.get("__seed__"),
               "status": "error" if result.error else "finished",
               "error": error_line(result.error)}
        row.update({m: float(metrics.get(m, float("nan"))) for m in spec.tune.metrics})
        rows.append(row)
    return rows


def _log(uri: str, parent: str, spec: SweepSpec, outcome: ReseedOutcome, folder: Path) -> None:
    from orchestrator.common import mlflow_client
    from orchestrator.search.record import log_table

    client = mlflow_client(uri)
    flat = [{k: (json.dumps(v) if isinstance(v, list) else v) for k, v in s.items()}
            for s in outcome.stats]
    fields = list(dict.fromkeys(k for s in flat for k in s))
    log_table(client, parent, flat, fields, folder / "seed_variance.csv")
    client.log_text(parent, json.dumps({"reseed_run": outcome.name, "trials": outcome.rows,
                                        "stats": outcome.stats}, indent=1, default=str),
                    "seed_variance.json")
    client.set_tag(parent, "reseeded", f"{len(outcome.stats)} configs x seeds "
                   f"{sorted({s for st in outcome.stats for s in st['seeds']})}")
    first = spec.tune.metrics[0]
    for rank, s in enumerate(outcome.stats, 1):
        if s["n"] > 1:
            client.log_metric(parent, f"seed_std/{first}", s[f"{first}/std"], step=rank)


def run_reseed(spec_path: str, sweep: str | None, top_n: int, seeds: int, *,
               tracking_uri: str | None, cache_dir: str, address: str | None = None,
               verbose: int = 1, with_default: bool = False) -> ReseedOutcome:
    """Re-run the sweep's ``top_n`` configurations with ``seeds`` new seeds each (and the
    paper-default control with the same seeds when ``with_default``)."""
    from ray import tune

    from orchestrator.common import read_yaml, resolve_tracking_uri
    from orchestrator.reporting import seed_stats
    from orchestrator.search.recorder import recording
    from orchestrator.search.sweep import (
        connect,
        run_config,
        storage_paths,
        trainable,
        trial_context,
    )
    from orchestrator.search.trial import RESEED

    if top_n < 1 or seeds < 1:
        raise ValueError("--reseed-best N --seeds K: both must be at least 1")
    uri = resolve_tracking_uri(tracking_uri)
    parent, spec, rows = sweep_record(uri, sweep, read_yaml(spec_path)["model"])
    sweep_name, parent_id = parent.data.tags["sweep_name"], parent.info.run_id
    configs = reseed_configs(spec, rows, top_n, seeds, with_default)
    storage, local_root = storage_paths(spec.storage)
    name = f"{sweep_name}-reseed-{time.strftime('%Y%m%d-%H%M%S')}"
    connect(spec, address)
    with recording(uri, f"fusion/{spec.run.model}", parent_id) as recorder:
        ctx = trial_context(spec, name, uri, parent_id, cache_dir, storage, recorder)
        grid = tune.Tuner(
            trainable(spec, ctx), param_space={RESEED: tune.grid_search(configs)},
            tune_config=tune.TuneConfig(max_concurrent_trials=spec.tune.max_concurrent,
                                        reuse_actors=spec.resources.workers == 0),
            run_config=run_config(spec, name, storage, verbose)).fit()
    outcome = ReseedOutcome(sweep_name, parent_id, name, spec.tune.metrics, _rows(grid, spec))
    by_id = {r["trial_id"]: r for r in rows}
    by_id[CONTROL] = {"trial_id": CONTROL, "run_id": "",
                      **{m: float("nan") for m in spec.tune.metrics}}
    originals = {c["__reseed_of__"]: by_id[c["__reseed_of__"]] for c in configs}
    outcome.stats = seed_stats(spec, outcome.rows, originals)
    folder = local_root / name
    folder.mkdir(parents=True, exist_ok=True)
    _log(uri, parent_id, spec, outcome, folder)
    return outcome
