"""`orchestrator compare SWEEP --out DIR`: the promoted model against the paper defaults, the
authors' weights and the classical baselines, on the sweep's test pairs (no trial saw them).

Rows, per test set and metric convention (``cdd``; ``vifb`` too for infrared-visible):

* ``promoted``: the registered version the sweep's promotion points at (``--model REF`` to
  name another checkpoint), one model;
* ``seeds``: each configuration re-trained by ``orchestrator sweep --reseed-best N
  --with-default``: the sweep's best configuration(s) and the paper-default control, the
  mean ± standard deviation (ddof 1) over their seeds' best checkpoints;
* ``reference``: ``tune.references`` (e.g. the authors' released weights);
* ``baseline``: the four classical methods.

Each row also counts the degenerate-flagged fused images (a copy of a source, or flat), over
all seeds for a seed row. The verdict line counts the metrics on which the promoted model
beats the paper-default mean and every baseline. Written to ``comparison.json``,
``comparison.csv`` and ``comparison.md`` and logged on the sweep's parent run
(``comparison/``), where `orchestrator report` shows the tables.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.common import atomic_open, atomic_write

log = logging.getLogger(__name__)

#: The comparison's metrics (the issue's list; each metric's own direction).
COMPARE_METRICS: tuple[str, ...] = ("EN", "MI", "Qabf", "SF", "AG", "SD", "SSIM", "PSNR", "VIF")


@dataclass
class Method:
    """One row: ``checkpoints`` (one per seed; one for a single model), or a baseline."""

    label: str
    kind: str  # promoted | seeds | reference | baseline
    checkpoints: list[str] = field(default_factory=list)
    baseline: str | None = None
    detail: str = ""


def _promoted(client: Any, uri: str, parent: Any, model_ref: str | None, dst: Path) -> Method:
    """``--model REF``, else the newest registered version made from one of this sweep's runs."""
    from orchestrator.common import resolve_checkpoint

    if model_ref:
        return Method(model_ref, "promoted", [str(resolve_checkpoint(model_ref, uri, dst))],
                      detail=model_ref)
    sweep = parent.data.tags.get("sweep_name", "")
    name = f"fusion-{parent.data.tags.get('model', '')}"
    versions = [v for v in client.search_model_versions(f"name = '{name}'")
                if v.tags.get("sweep") == sweep]
    if not versions:
        raise ValueError(f"compare: no registered version of {name} comes from sweep {sweep!r}; "
                         f"run `orchestrator promote {sweep}` first or pass --model REF")
    v = max(versions, key=lambda mv: int(mv.version))
    ref = f"models:/{name}/{v.version}"
    return Method(f"promoted ({name} v{v.version}, trial {v.tags.get('trial_id', '?')})",
                  "promoted", [str(resolve_checkpoint(ref, uri, dst / "promoted"))], detail=ref)


def _seed_groups(client: Any, uri: str, parent_id: str, dst: Path) -> list[Method]:
    """The re-seeded configurations (best first as re-seeded) and the paper-default control."""
    from orchestrator.common import child_runs, resolve_checkpoint
    from orchestrator.deploy import has_best
    from orchestrator.search import CONTROL

    groups: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for run in child_runs(uri, parent_id, "attributes.status = 'FINISHED'"):
        of = run.data.tags.get("reseed_of")
        if of and has_best(client, run.info.run_id):
            groups[of].append((int(run.data.tags.get("seed", 0)), run.info.run_id))
    if CONTROL not in groups:
        raise ValueError("compare: the sweep has no paper-default control runs; run "
                         "`orchestrator sweep SPEC --name SWEEP --reseed-best 1 --with-default`")
    out = []
    for of in sorted(groups, key=lambda g: g == CONTROL):
        runs = sorted(groups[of])
        paths = [str(resolve_checkpoint(f"runs:/{rid}", uri, dst / "seeds" / rid))
                 for _, rid in runs]
        label = "paper default" if of == CONTROL else f"best config (trial {of})"
        out.append(Method(f"{label}, seeds {[s for s, _ in runs]}", "seeds", paths,
                          detail=of))
    return out


def _methods(client: Any, uri: str, parent: Any, spec: Any, model_ref: str | None, dst: Path
             ) -> list[Method]:
    from fusion_models.baselines import BASELINES
    from orchestrator.common import resolve_checkpoint

    methods = [_promoted(client, uri, parent, model_ref, dst)]
    methods += _seed_groups(client, uri, parent.info.run_id, dst)
    for i, ref in enumerate(spec.tune.references):
        local = resolve_checkpoint(ref, uri, dst / "references" / str(i))
        methods.append(Method(ref, "reference", [str(local)], detail=ref))
    methods += [Method(n, "baseline", baseline=n) for n in BASELINES]
    return methods


def _measure(method: Method, items: list, convention: str, rule: str, address: str | None
             ) -> dict[str, Any]:
    """Per seed (or the single model): mean of each metric over the pairs, flagged pairs."""
    from orchestrator.evaluation import evaluate_ray, make_settings

    runs = method.checkpoints or [None]
    means, flagged = [], 0
    for ckpt in runs:
        settings = make_settings(COMPARE_METRICS, convention, method.baseline, rule, "cpu",
                                 model=ckpt)
        report = evaluate_ray(items, settings, address=address)
        means.append(report.mean())
        flagged += len(report.to_dict()["degenerate"])
    row: dict[str, Any] = {"label": method.label, "kind": method.kind, "detail": method.detail,
                           "n": len(runs), "pairs": len(items), "degenerate": flagged}
    for m in COMPARE_METRICS:
        values = np.array([x[m] for x in means], dtype=float)
        row[m] = float(values.mean())
        row[f"{m}/std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        row[f"{m}/values"] = values.tolist()
    return row


def verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Metrics where the promoted row beats the paper-default mean and every baseline (and,
    separately, the references)."""
    from orchestrator.evaluation import metric_direction
    from orchestrator.search import CONTROL

    promoted = next(r for r in rows if r["kind"] == "promoted")
    rivals = [r for r in rows if r["kind"] == "baseline"
              or (r["kind"] == "seeds" and r["detail"] == CONTROL)]
    refs = [r for r in rows if r["kind"] == "reference"]

    def beats(m: str, others: list[dict[str, Any]]) -> bool:
        sign = 1.0 if metric_direction(m) else -1.0
        return all(sign * (promoted[m] - o[m]) > 0 for o in others)

    won = [m for m in COMPARE_METRICS if beats(m, rivals)]
    return {"won": won, "lost": [m for m in COMPARE_METRICS if m not in won],
            "won_vs_references": [m for m in COMPARE_METRICS if refs and beats(m, refs)],
            "goal_met": len(won) >= 6 and promoted["degenerate"] == 0}


@dataclass
class Comparison:
    """What the command writes: one table per (set, convention)."""

    sweep: str
    tables: list[dict[str, Any]] = field(default_factory=list)


def run_compare(sweep: str, tracking_uri: str, out_dir: str, cache_dir: str,
                model_ref: str | None = None, address: str | None = None) -> Comparison:
    """Measure every row on every test set; write and log the tables (see the module doc).

    Raises:
        ValueError: an unknown sweep, one without a disjoint test set, no promoted version,
            or no paper-default control runs.
    """
    from orchestrator.common import mlflow_client
    from orchestrator.deploy import find_sweep
    from orchestrator.evaluation import plan_items
    from orchestrator.reporting.data import read_spec
    from orchestrator.search import evaluation_pair_sets
    from orchestrator.training import colour_rule

    client = mlflow_client(tracking_uri)
    parent = find_sweep(client, sweep)
    spec = read_spec(client, parent.info.run_id)
    split, sets = evaluation_pair_sets(spec, cache_dir)
    if split != "test":
        raise ValueError(f"compare: sweep {sweep!r} has no test set (tune.test_data): its "
                         "validation pairs chose the checkpoints, so they cannot judge them")
    out = Path(out_dir)
    methods = _methods(client, tracking_uri, parent, spec, model_ref, out / "checkpoints")

    result = Comparison(parent.data.tags.get("sweep_name", sweep))
    conventions = ["cdd", "vifb"] if spec.run.data.task == "ivif" else ["cdd"]
    for label, pair_set in sets:
        rule, items = colour_rule(spec.run, pair_set), plan_items(pair_set, None)
        for conv in conventions:
            rows = [_measure(m, items, conv, rule, address) for m in methods]
            result.tables.append({"set": label, "convention": conv, "rows": rows,
                                  "verdict": verdict(rows)})
    _write(result, out)
    for name in ("comparison.json", "comparison.csv", "comparison.md"):
        client.log_artifact(parent.info.run_id, str(out / name), "comparison")
    return result


def _cell(row: dict[str, Any], m: str) -> str:
    std = row.get(f"{m}/std", math.nan)
    return f"{row[m]:.4g} ± {std:.2g}" if math.isfinite(std) else f"{row[m]:.4g}"


def verdict_line(verdict: dict[str, Any]) -> str:
    """One sentence: where the promoted model wins, loses, and whether the goal is met."""
    return (f"Promoted beats the paper default and every baseline on {len(verdict['won'])}"
            f"/{len(COMPARE_METRICS)} metrics ({', '.join(verdict['won']) or 'none'}); not on "
            f"{', '.join(verdict['lost']) or 'none'}. Beats the references on "
            f"{', '.join(verdict['won_vs_references']) or 'none'}. Goal (≥ 6, no degenerate): "
            f"{'met' if verdict['goal_met'] else 'not met'}.")


def display_tables(tables: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tables as text cells (the report's comparison section)."""
    from orchestrator.evaluation import metric_direction

    return [{"title": f"{t['set']} ({t['rows'][0]['pairs']} test pairs), {t['convention']}",
             "columns": [f"{m} {'↑' if metric_direction(m) else '↓'}" for m in COMPARE_METRICS],
             "rows": [{"label": r["label"], "kind": r["kind"],
                       "cells": [_cell(r, m) for m in COMPARE_METRICS],
                       "degenerate": f"{r['degenerate']}/{r['pairs'] * r['n']}"}
                      for r in t["rows"]],
             "verdict": verdict_line(t["verdict"])} for t in tables]


def markdown(result: Comparison) -> str:
    """The tables as Markdown (README-ready): one per (set, convention), with its verdict."""
    lines = [f"# Comparison: sweep {result.sweep}", ""]
    for t in display_tables(result.tables):
        lines += [f"## {t['title']} convention", "",
                  "| method | " + " | ".join(t["columns"]) + " | degenerate |",
                  "|---" * (len(COMPARE_METRICS) + 2) + "|"]
        lines += [f"| {r['label']} | " + " | ".join(r["cells"]) + f" | {r['degenerate']} |"
                  for r in t["rows"]]
        lines += ["", t["verdict"], ""]
    return "\n".join(lines)


def _write(result: Comparison, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "comparison.json", json.dumps(
        {"sweep": result.sweep, "tables": result.tables}, indent=1, allow_nan=True))
    atomic_write(out / "comparison.md", markdown(result))
    fields = ["set", "convention", "label", "kind", "n", "pairs", "degenerate",
              *[k for m in COMPARE_METRICS for k in (m, f"{m}/std")]]
    with atomic_open(out / "comparison.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for t in result.tables:
            for r in t["rows"]:
                writer.writerow({"set": t["set"], "convention": t["convention"], **r})
