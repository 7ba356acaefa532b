"""`orchestrator report SWEEP --out DIR`: one self-contained HTML page about a finished sweep.

What it shows (``templates/report.html.j2`` beside this file): the metric table of the top
trials, the baselines and the sources on a test set (best value per column marked, each metric's
direction), an image grid per test pair (sources, baselines, top trials, the same zoomed
crop), the Pareto front (multi-objective), fANOVA and MDI parameter importances per objective,
marginal plots of each validation metric against each searched parameter, seed-variance
bars (after ``orchestrator sweep --reseed-best``), loss and validation curves, and the
degenerate-fusion flags. Every trial links to its run in the MLflow UI; the page,
``sensitivity.json`` and ``metrics.csv`` are logged on the sweep's parent run (``report/``),
whose description links back, so ``orchestrator ui`` leads to the report and the report to
the runs.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusion_models.metrics import REPORT_METRICS
from orchestrator.common import atomic_open, atomic_write, runs_url
from orchestrator.reporting.compare import display_tables
from orchestrator.reporting.data import SweepRecord, curves, load_record
from orchestrator.reporting.images import Method, evaluate_method, image_grid, metric_table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportArgs:
    """The command's options (see ``orchestrator report --help``)."""

    sweep: str
    out_dir: str
    tracking_uri: str
    top: int = 3
    data: str | None = None
    pairs: int = 8
    grid_pairs: int = 3
    metrics: tuple[str, ...] = REPORT_METRICS
    ui_url: str = "http://127.0.0.1:5000"
    cache_dir: str = ".fusion_cache"
    references: tuple[str, ...] = ()


def _test_set(record: SweepRecord, args: ReportArgs) -> tuple[str, str, Any]:
    """(entry, split, first ``args.pairs`` pairs): ``--data``, else the sweep's evaluation
    set; split ``test`` unless that set is the training (``training``) or validation
    (``validation``) set."""
    import dataclasses

    from orchestrator.common import GENERATED
    from orchestrator.search import evaluation_sets
    from orchestrator.training import resolve_set

    run = record.spec.run
    if args.data:
        entry = args.data if args.data.startswith(GENERATED) else str(Path(args.data).resolve())
        split = {"data.train": "training", "data.val": "validation"}.get(
            run.in_sample_role(entry), "test")
    else:
        split, entries = evaluation_sets(record.spec)
        entry = entries[0]
    pair_set = resolve_set(run, entry, Path(args.cache_dir))
    return entry, split, dataclasses.replace(pair_set, pairs=pair_set.pairs[: args.pairs])


def _methods(record: SweepRecord, ranked_rows: list[dict], args: ReportArgs, out: Path
             ) -> tuple[list[Method], list[dict]]:
    """Sources, baselines, references (``tune.references`` then ``--reference``) and the first
    ``args.top`` ranked trials whose best.pt downloads; returns the methods and those trials'
    rows."""
    from fusion_models.baselines import BASELINES
    from orchestrator.common import resolve_checkpoint

    methods = [Method("source_a", "source A", "source"), Method("source_b", "source B", "source")]
    methods += [Method(f"baseline_{n}", n, "baseline", method=n) for n in BASELINES]
    refs = list(dict.fromkeys([*record.spec.tune.references, *args.references]))
    for i, ref in enumerate(refs):
        local = resolve_checkpoint(ref, record.tracking_uri, dst=out / "checkpoints" / "refs")
        methods.append(Method(f"reference_{i}", ref, "reference", checkpoint=str(local)))
    top: list[dict] = []
    for row in ranked_rows:
        if len(top) == args.top:
            break
        try:
            ckpt = resolve_checkpoint(f"runs:/{row['run_id']}", record.tracking_uri,
                                      dst=out / "checkpoints" / row["trial_id"])
        except ValueError as exc:  # no best.pt (a trial stopped before its first evaluation)
            log.warning("trial %s left out of the comparison: %s", row["trial_id"], exc)
            continue
        top.append(row)
        methods.append(Method(f"trial_{row['trial_id']}", f"#{len(top)} trial {row['trial_id']}",
                              "trial", checkpoint=str(ckpt),
                              link=runs_url(args.ui_url, record.experiment_id, row["run_id"])))
    return methods, top


def _loss_key(record: SweepRecord, run_id: str) -> str:
    from orchestrator.common import mlflow_client

    keys = sorted(mlflow_client(record.tracking_uri).get_run(run_id).data.metrics)
    losses = [k for k in keys if k.startswith("step/loss")]
    return "step/loss_g" if "step/loss_g" in losses else (losses[0] if losses else "step/loss")


def _marginals(record: SweepRecord, metrics: list[str]) -> list[dict[str, Any]]:
    """One figure per metric: the objectives first (shown open), then every other
    validation metric in ``metrics`` (collapsed on the page)."""
    from orchestrator.reporting import plots
    from orchestrator.reporting.data import with_run_metrics

    rows = with_run_metrics(record.tracking_uri, record.parent_run_id, record.trials)
    objectives = record.spec.tune.metrics
    others = [f"val/{m}" for m in metrics if f"val/{m}" not in objectives]
    out = []
    for name in [*objectives, *others]:
        uri = plots.marginal_plot(record.spec, rows, [name])
        if uri:
            out.append({"metric": name, "objective": name in objectives, "uri": uri})
    return out


def _figures(record: SweepRecord, top: list[dict], sens: dict) -> dict[str, str | None]:
    from orchestrator.reporting import plots

    spec, metric = record.spec, record.spec.tune.metrics[0]
    figs = {"importances": plots.importance_plot(sens["importances"]),
            "pareto": plots.pareto_plot(spec, record.trials),
            "seeds": plots.seed_plot(spec, record.seed_stats), "curves": None}
    if top:
        loss = _loss_key(record, top[0]["run_id"])
        per = {f"#{i} {r['trial_id']}": curves(record.tracking_uri, r["run_id"], [loss, metric])
               for i, r in enumerate(top, 1)}
        figs["curves"] = plots.curve_plot(per, loss, metric)
    return figs


def _trial_rows(record: SweepRecord, ranked_rows: list[dict], ui_url: str
                ) -> list[dict[str, Any]]:
    """Every trial for the page's table, ranked ones first (by rank), errored ones last."""
    from orchestrator.reporting.sensitivity import trial_params

    order = {r["trial_id"]: i for i, r in enumerate(ranked_rows, 1)}
    rows = []
    for r in sorted(record.trials, key=lambda r: order.get(r["trial_id"], 10**6)):
        degenerate = float(r.get("val/degenerate", math.nan))
        rows.append({
            "rank": order.get(r["trial_id"], ""), "trial_id": r["trial_id"],
            "status": r["status"], "epoch": r.get("epoch", ""), "error": r.get("error", ""),
            "link": runs_url(ui_url, record.experiment_id, r["run_id"]) if r["run_id"] else None,
            "objectives": [_fmt(r.get(m)) for m in record.spec.tune.metrics],
            "params": trial_params(record.spec, r),
            "degenerate": degenerate if math.isfinite(degenerate) and degenerate > 0 else 0.0})
    return rows


def _fmt(value: Any) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "–"
    return f"{v:.4g}" if math.isfinite(v) else "–"


def render(context: dict[str, Any]) -> str:
    """The page from ``templates/report.html.j2`` (autoescaped)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("orchestrator.reporting", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]),
                             undefined=jinja2.StrictUndefined)
    return env.get_template("report.html.j2").render(**context)


def _write_files(out: Path, html: str, sens: dict, table: dict, methods: list[Method]) -> None:
    atomic_write(out / "index.html", html)
    atomic_write(out / "sensitivity.json", json.dumps(sens, indent=1))
    with atomic_open(out / "metrics.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["method", "kind", *(c["name"] for c in table["columns"]), "degenerate"])
        for m, row in zip(methods, table["rows"], strict=True):
            means = m.report.mean()
            writer.writerow([m.label, m.kind, *(means[c["name"]] for c in table["columns"]),
                             len(row["degenerate"])])


def _log(record: SweepRecord, out: Path, ui_url: str) -> None:
    from orchestrator.common import mlflow_client

    client = mlflow_client(record.tracking_uri)
    rid = record.parent_run_id
    for name in ("index.html", "sensitivity.json", "metrics.csv"):
        client.log_artifact(rid, str(out / name), "report")
    client.set_tag(rid, "report", "report/index.html")
    client.set_tag(rid, "mlflow.note.content", (
        f"**Sweep report** ({time.strftime('%Y-%m-%d %H:%M')}): artifact `report/index.html` "
        f"of this run (Artifacts tab), also at `{(out / 'index.html').resolve()}`. "
        f"Its trial links open this UI ({ui_url})."))


def write_report(args: ReportArgs) -> Path:
    """Build the page and its data files in ``args.out_dir``; log them; return the page path.

    Raises:
        ValueError: unknown or unfinished sweep, a missing checkpoint, an unknown metric.
    """
    from orchestrator.reporting.sensitivity import param_importances
    from orchestrator.search import ranked
    from orchestrator.training import colour_rule

    record = load_record(args.sweep, args.tracking_uri)
    spec, out = record.spec, Path(args.out_dir)
    objective_metrics = [m.split("/", 1)[1] for m in spec.tune.metrics if m.startswith("val/")]
    metrics = list(dict.fromkeys([*args.metrics, *objective_metrics]))
    order = ranked(spec, record.trials)
    entry, split, pair_set = _test_set(record, args)
    rule = colour_rule(spec.run, pair_set)
    out.mkdir(parents=True, exist_ok=True)
    methods, top = _methods(record, [r for r in order if r["run_id"]], args, out)
    for m in methods:
        evaluate_method(m, pair_set, metrics, rule, out / "fused")
    table = metric_table(methods, metrics)
    sens = param_importances(spec, record.trials, seed=spec.tune.seed)
    context = {
        "record": record, "spec": spec, "test_set": entry, "split": split,
        "n_pairs": len(pair_set.pairs),
        "colour_rule": rule, "table": table, "grid": image_grid(methods, pair_set,
                                                                args.grid_pairs),
        "figures": _figures(record, top, sens), "marginals": _marginals(record, metrics),
        "sens": sens, "trials": _trial_rows(
            record, order, args.ui_url), "seed_stats": record.seed_stats, "fmt": _fmt,
        "parent_link": runs_url(args.ui_url, record.experiment_id, record.parent_run_id),
        "ui_url": args.ui_url, "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "comparison": display_tables(record.comparison["tables"]) if record.comparison else []}
    _write_files(out, render(context), sens, table, methods)
    _log(record, out, args.ui_url)
    return out / "index.html"
