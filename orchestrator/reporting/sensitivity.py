"""Which knobs matter, and how much of a "better" result is noise.

- :func:`param_importances`: Optuna's fANOVA and mean-decrease-impurity (MDI) evaluators, both
  random-forest based and seeded, for every objective of a sweep, over a study rebuilt from
  the sweep's trial table (so the report needs only MLflow, not the driver's ``optuna.db``).
  The trials used are the finished ones; when fewer than :data:`MIN_TRIALS` finished, the
  trials ASHA stopped early join at their last reported value, and the basis says so.
- :func:`seed_stats`: per re-seeded configuration (``orchestrator sweep --reseed-best N
  --seeds K``), the mean, standard deviation (ddof 1), min and max of each objective over the
  K seeds, next to the value the sweep reported for it (the selected, optimistic one).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from typing import Any

import numpy as np

from orchestrator.search import SweepSpec

log = logging.getLogger(__name__)

#: Fewer finished trials than this: importances also use the trials stopped early.
MIN_TRIALS = 4
EVALUATORS = ("fanova", "mdi")


def _finite(row: dict[str, Any], metrics: list[str]) -> bool:
    try:
        return all(math.isfinite(float(row[m])) for m in metrics)
    except (KeyError, TypeError, ValueError):
        return False


def usable_rows(spec: SweepSpec, rows: list[dict[str, Any]]) -> tuple[list[dict], str]:
    """The trial rows importances are computed over, and a sentence saying which."""
    metrics = spec.tune.metrics
    finished = [r for r in rows if r["status"] == "finished" and _finite(r, metrics)]
    if len(finished) >= MIN_TRIALS:
        return finished, f"{len(finished)} finished trials"
    ok = [r for r in rows if r["status"] != "error" and _finite(r, metrics)]
    stopped = sum(r["status"] == "stopped" for r in ok)
    return ok, (f"{len(ok)} trials ({len(ok) - stopped} finished, {stopped} stopped early by "
                "ASHA and counted at their last reported epoch)")


def trial_params(spec: SweepSpec, row: dict[str, Any]) -> dict[str, Any]:
    """The searched parameters of a trial row, typed (a CSV cell is a string)."""
    out = {}
    for key, entry in spec.space.items():
        value = entry.coerce(row.get(f"param.{key}"))
        if value is not None:
            out[key] = value
    return out


def rebuild_study(spec: SweepSpec, rows: list[dict[str, Any]], metric: str) -> Any:
    """An in-memory Optuna study of ``rows`` with ``metric`` as its single objective."""
    import optuna

    mode = spec.tune.modes[spec.tune.metrics.index(metric)]
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for row in rows:
        params = trial_params(spec, row)
        dists = {k: spec.space[k].distribution() for k in params}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists,
                                                  value=float(row[metric])))
    return study


def _evaluator(kind: str, seed: int) -> Any:
    from optuna.importance import FanovaImportanceEvaluator, MeanDecreaseImpurityImportanceEvaluator

    cls = FanovaImportanceEvaluator if kind == "fanova" else MeanDecreaseImpurityImportanceEvaluator
    return cls(seed=seed)


def param_importances(spec: SweepSpec, rows: list[dict[str, Any]], seed: int = 0
                      ) -> dict[str, Any]:
    """Importances per objective and evaluator.

    Returns:
        ``{"basis": sentence, "n_trials": n, "importances": {metric: {"fanova": {param: v},
        "mdi": {param: v}}}, "notes": {metric: reason}}``; each importance dict sums to 1,
        largest first. A metric without one is in ``notes`` (too few trials, one parameter
        value only, ...).
    """
    import optuna

    used, basis = usable_rows(spec, rows)
    result: dict[str, Any] = {"basis": basis, "n_trials": len(used), "importances": {},
                              "notes": {}}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for metric in spec.tune.metrics:
        if len(used) < 2:
            result["notes"][metric] = f"needs at least 2 usable trials, has {len(used)}"
            continue
        study = rebuild_study(spec, used, metric)
        per: dict[str, dict[str, float]] = {}
        try:
            for kind in EVALUATORS:
                values = optuna.importance.get_param_importances(
                    study, evaluator=_evaluator(kind, seed), normalize=True)
                per[kind] = {k: float(v) for k, v in values.items()}
        except (RuntimeError, ValueError) as exc:
            result["notes"][metric] = f"not computed: {exc}"
            continue
        result["importances"][metric] = per
    return result


def seed_stats(spec: SweepSpec, rows: list[dict[str, Any]],
               originals: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Seed variance per re-seeded configuration.

    Args:
        rows: re-seed trial rows with ``reseed_of`` (the original trial id), ``seed``,
            ``status`` and the objective values.
        originals: the sweep's trial rows by trial id.

    Returns:
        One row per configuration (the sweep's rank order): ``trial_id``, ``run_id``,
        ``seeds`` (the seeds that finished), ``n``, and per objective ``<m>`` (the sweep's
        value), ``<m>/values``, ``<m>/mean``, ``<m>/std`` (ddof 1; NaN for one seed),
        ``<m>/min``, ``<m>/max``.
    """
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["status"] != "error" and _finite(row, spec.tune.metrics):
            groups[str(row["reseed_of"])].append(row)
    out = []
    for trial_id, original in originals.items():
        got = sorted(groups.get(trial_id, []), key=lambda r: int(r["seed"]))
        entry: dict[str, Any] = {"trial_id": trial_id, "run_id": original.get("run_id", ""),
                                 "seeds": [int(r["seed"]) for r in got], "n": len(got)}
        for m in spec.tune.metrics:
            values = np.array([float(r[m]) for r in got], dtype=float)
            entry[m] = float(original[m])
            entry[f"{m}/values"] = values.tolist()
            entry[f"{m}/mean"] = float(values.mean()) if len(values) else math.nan
            entry[f"{m}/std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
            entry[f"{m}/min"] = float(values.min()) if len(values) else math.nan
            entry[f"{m}/max"] = float(values.max()) if len(values) else math.nan
        out.append(entry)
    return out
