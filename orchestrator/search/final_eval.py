"""After a sweep: the top-k trials' best checkpoints measured on the test set(s) with Ray Data
(fuse + every metric inside ``map_batches``, one model load per actor), logged to each trial's
child run (``test/<set>/<metric>``) and as a summary table (``final_eval.csv``) on the parent.

Test sets are :func:`~orchestrator.search.space.evaluation_sets`: ``tune.test_data`` or the
generated ``test`` split; a sweep without a disjoint test set is measured on its validation set
and the numbers are logged as ``validation/<set>/<metric>`` (split ``validation`` in the table):
those pairs chose the checkpoints, so they are never called test.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from orchestrator.common import GENERATED
from orchestrator.common.failpoints import failpoint
from orchestrator.search.record import log_table, ranked
from orchestrator.search.space import SweepSpec, evaluation_sets

log = logging.getLogger(__name__)


def top_k(spec: SweepSpec, rows: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """The k best non-errored trials with a child run, by the first objective."""
    return [r for r in ranked(spec, rows) if r["run_id"]][:k]


def set_label(entry: str) -> str:
    """Short name of a data entry: ``generated:ivif:test`` -> ``ivif-test``, a role folder of
    an ``orchestrator split`` -> ``<split>-<role>`` (``ivif-test``), else the folder's name."""
    if entry.startswith(GENERATED):
        return entry[len(GENERATED):].replace(":", "-")
    path = Path(entry)
    if (path.parent / "split.json").is_file():
        return f"{path.parent.name}-{path.name}"
    return path.name


def evaluation_pair_sets(spec: SweepSpec, cache_dir: str) -> tuple[str, list[tuple[str, Any]]]:
    """(split, [(label, pair set)]): split ``test`` or ``validation``."""
    from orchestrator.training import resolve_set

    split, entries = evaluation_sets(spec)
    return split, [(set_label(spec.run.resolve_path(e)), resolve_set(spec.run, e, Path(cache_dir)))
                   for e in entries]


def final_eval(spec: SweepSpec, outcome: Any, cache_dir: str, address: str | None = None,
               metrics: str = "all") -> list[dict[str, Any]]:
    """Evaluate ``tune.final_eval_top_k`` trials and the ``tune.references`` checkpoints;
    returns one row per (trial or reference, set), each with its ``split`` (``test`` or
    ``validation``); reference rows have their ref as ``trial_id`` and no ``run_id``."""
    from mlflow.tracking import MlflowClient

    from fusion_models.metrics import get_convention, resolve_metric_names
    from orchestrator.common import resolve_checkpoint
    from orchestrator.evaluation import evaluate_ray, make_settings, plan_items
    from orchestrator.training import colour_rule

    k = spec.tune.final_eval_top_k
    best = top_k(spec, outcome.trials, k) if k else []
    if not best:
        return []
    client = MlflowClient(outcome.tracking_uri)
    names = resolve_metric_names(metrics)
    rows: list[dict[str, Any]] = []
    split, sets = evaluation_pair_sets(spec, cache_dir)
    refs = {ref: resolve_checkpoint(ref, outcome.tracking_uri,
                                    dst=outcome.path / "final_eval" / "references")
            for ref in spec.tune.references}
    for label, pair_set in sets:
        rule = colour_rule(spec.run, pair_set)
        items = plan_items(pair_set, None)
        for ref, local in refs.items():  # the same pairs, the same settings; no child run
            settings = make_settings(names, get_convention("cdd"), None, rule, "cpu",
                                     model=str(local))
            mean = evaluate_ray(items, settings, address=address).mean()
            rows.append({"trial_id": ref, "run_id": "", "split": split, "set": label,
                         "pairs": len(items), **mean})
        for trial in best:
            local = resolve_checkpoint(f"runs:/{trial['run_id']}", outcome.tracking_uri,
                                       dst=outcome.path / "final_eval" / trial["trial_id"])
            settings = make_settings(names, get_convention("cdd"), None, rule, "cpu",
                                     model=str(local))
            mean = evaluate_ray(items, settings, address=address).mean()
            finite = {f"{split}/{label}/{m}": v for m, v in mean.items() if math.isfinite(v)}
            client.log_batch(trial["run_id"], metrics=_metrics(finite))
            failpoint("final_eval")
            rows.append({"trial_id": trial["trial_id"], "run_id": trial["run_id"],
                         "split": split, "set": label, "pairs": len(items), **mean})
    log_table(client, outcome.parent_run_id, rows, list(dict.fromkeys(k for r in rows for k in r)),
              outcome.path / "final_eval.csv")
    return rows


def _metrics(values: dict[str, float]) -> list:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, 0) for k, v in values.items()]
