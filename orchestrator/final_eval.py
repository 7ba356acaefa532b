"""After a sweep: the top-k trials' best checkpoints measured on the test set(s) with Ray Data
(fuse + every metric inside ``map_batches``, one model load per actor), logged to each trial's
child run (``test/<set>/<metric>``) and as a summary table (``final_eval.csv``) on the parent.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from orchestrator.search_space import SweepSpec
from orchestrator.sweep_record import log_table, ranked

log = logging.getLogger(__name__)


def top_k(spec: SweepSpec, rows: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """The k best non-errored trials with a child run, by the first objective."""
    return [r for r in ranked(spec, rows) if r["run_id"]][:k]


def _test_sets(spec: SweepSpec, cache_dir: str) -> list[tuple[str, Any]]:
    from orchestrator.train import resolve_set

    run = spec.run
    entries = spec.tune.test_data or [run.data.val or run.data.train]
    out = []
    for entry in entries:
        pair_set = resolve_set(run, entry, Path(cache_dir))
        label = entry.split(":", 1)[1] if entry.startswith("generated:") else Path(entry).name
        out.append((label, pair_set))
    return out


def final_eval(spec: SweepSpec, outcome: Any, cache_dir: str, address: str | None = None,
               metrics: str = "all") -> list[dict[str, Any]]:
    """Evaluate ``tune.final_eval_top_k`` trials; returns one row per (trial, test set)."""
    from mlflow.tracking import MlflowClient

    from fusion_models.metrics import get_convention, resolve_metric_names
    from orchestrator.evaluate import make_settings, plan_items
    from orchestrator.evaluate_ray import evaluate_ray
    from orchestrator.promote import resolve_checkpoint
    from orchestrator.train import colour_rule

    k = spec.tune.final_eval_top_k
    best = top_k(spec, outcome.trials, k) if k else []
    if not best:
        return []
    client = MlflowClient(outcome.tracking_uri)
    names = resolve_metric_names(metrics)
    rows: list[dict[str, Any]] = []
    for label, pair_set in _test_sets(spec, cache_dir):
        rule = colour_rule(spec.run, pair_set)
        items = plan_items(pair_set, None)
        for trial in best:
            local = resolve_checkpoint(f"runs:/{trial['run_id']}", outcome.tracking_uri,
                                       dst=outcome.path / "final_eval" / trial["trial_id"])
            settings = make_settings(names, get_convention("cdd"), None, rule, "cpu",
                                     model=str(local))
            mean = evaluate_ray(items, settings, address=address).mean()
            finite = {f"test/{label}/{m}": v for m, v in mean.items() if math.isfinite(v)}
            client.log_batch(trial["run_id"], metrics=_metrics(finite))
            rows.append({"trial_id": trial["trial_id"], "run_id": trial["run_id"],
                         "set": label, "pairs": len(items), **mean})
    log_table(client, outcome.parent_run_id, rows, list(dict.fromkeys(k for r in rows for k in r)),
              outcome.path / "final_eval.csv")
    return rows


def _metrics(values: dict[str, float]) -> list:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, 0) for k, v in values.items()]
