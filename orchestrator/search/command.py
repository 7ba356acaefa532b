"""`orchestrator sweep`: load the YAML, run the sweep, fuse the best trial's validation pairs,
print the best trial and the commands to run next."""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import click

log = logging.getLogger(__name__)


def fuse_best(outcome, spec, cache_dir: str) -> str | None:
    """Fuse the validation pairs (the ``data.val_pairs`` the trials were measured on) with the
    best trial's best checkpoint (sha256-checked) into ``<sweep folder>/best_fused``; return
    the folder (None without a best checkpoint)."""
    from fusion_models.registry import load_checkpoint
    from orchestrator.common import resolve_checkpoint
    from orchestrator.deploy import fuse_set
    from orchestrator.training import colour_rule, resolve_set

    if not outcome.best or not outcome.best.get("run_id"):
        return None
    try:
        local = resolve_checkpoint(f"runs:/{outcome.best['run_id']}", outcome.tracking_uri,
                                   dst=outcome.path / "best_checkpoint")
    except ValueError as exc:  # the run, its best.pt or its digest is missing: say so, go on
        log.warning("best checkpoint of run %s not available: %s", outcome.best["run_id"], exc)
        return None
    run = spec.run
    pair_set = resolve_set(run, run.val_entry(), Path(cache_dir))
    pair_set = dataclasses.replace(pair_set, pairs=pair_set.pairs[: run.data.val_pairs])
    model, _ = load_checkpoint(local, map_location="cpu")
    out = outcome.path / "best_fused"
    fuse_set(model, pair_set, out, colour_rule(run, pair_set))
    return str(out)


def ui_links(outcome) -> list[str]:
    """The sweep in the MLflow UI: its experiment's runs table and its parent run's page
    (which lists the trials), in the model-training view; [] when the store cannot say."""
    from orchestrator.common import mlflow_client, runs_url, ui_base

    try:
        exp_id = mlflow_client(outcome.tracking_uri).get_run(
            outcome.parent_run_id).info.experiment_id
    except Exception as exc:  # noqa: BLE001 - the closing lines must not fail on a link
        log.warning("no MLflow UI link for run %s: %s", outcome.parent_run_id, exc)
        return []
    base = ui_base(outcome.tracking_uri)
    return [f"runs:        {runs_url(base, exp_id)}",
            f"this sweep:  {runs_url(base, exp_id, outcome.parent_run_id)}"]


def echo_outcome(outcome, spec) -> None:
    """The closing lines: trial counts, best trial, Pareto front, next commands."""
    rows = outcome.trials
    counts = {s: sum(r["status"] == s for r in rows) for s in ("finished", "stopped", "error")}
    click.echo(f"sweep {outcome.name}: {len(rows)} trials ({counts['finished']} finished, "
               f"{counts['stopped']} stopped early by ASHA, {counts['error']} errored)")
    click.echo(f"trial table: {outcome.path / 'trials.csv'}  (MLflow parent run "
               f"{outcome.parent_run_id})")
    for row in rows:
        if row["status"] == "error":
            click.echo(f"  errored trial {row['trial_id']}: {row['error']}")
    if outcome.best:
        metric = spec.tune.metrics[0]
        params = {k[6:]: v for k, v in outcome.best.items() if k.startswith("param.")}
        click.echo(f"best trial {outcome.best['trial_id']}: {metric} = "
                   f"{float(outcome.best[metric]):.4f}  params {params}  "
                   f"(mlflow run {outcome.best['run_id']})")
    for p in outcome.pareto:
        values = {k: round(v, 4) for k, v in p["values"].items() if math.isfinite(v)}
        click.echo(f"  pareto: optuna trial {p['number']} {values} {p['params']}")
    metric = spec.tune.metrics[0].removeprefix("val/")
    for row in outcome.final_eval:
        note = "" if row["split"] == "test" else ", no disjoint test set: in-sample"
        who = "trial" if row["run_id"] else "reference"
        click.echo(f"  {row['split']} {row['set']} ({row['pairs']} pairs{note}) {who} "
                   f"{row['trial_id']}: "
                   + "  ".join(f"{m} {row[m]:.4f}" for m in (metric, "SF", "AG", "VIF")
                               if m in row and math.isfinite(row[m])))
    if outcome.best_fused_dir:
        click.echo(f"best trial's fused validation images: {outcome.best_fused_dir}")
    model = spec.run.model
    click.echo("next:")
    click.echo("  orchestrator ui                                   # browse every trial at")
    for line in ui_links(outcome):
        click.echo(f"    {line}")
    click.echo(f"  orchestrator promote {outcome.name} --alias champion")
    click.echo(f"  orchestrator fuse models:/fusion-{model}@champion --data SET --out fused/")


def resume_command(spec_path: str, overrides: tuple[str, ...], smoke: bool,
                   num_samples: int | None, address: str | None, name: str,
                   tracking_uri: str | None, cache_dir: str, quiet: bool) -> str:
    """The ``orchestrator sweep ... --resume --name NAME`` line that continues a sweep run
    with these options."""
    import shlex

    args = ["orchestrator", "sweep", spec_path]
    for item in overrides:
        args += ["--set", item]
    args += ["--smoke"] if smoke else []
    args += ["--num-samples", str(num_samples)] if num_samples is not None else []
    args += ["--address", address] if address else []
    args += ["--tracking-uri", tracking_uri] if tracking_uri else []
    args += ["--cache-dir", cache_dir, *(["--quiet"] if quiet else []), "--resume", "--name", name]
    return shlex.join(args)


def run_sweep_command(spec_path: str, overrides: tuple[str, ...], smoke: bool,
                      num_samples: int | None, address: str | None, resume: bool,
                      name: str | None, tracking_uri: str | None, cache_dir: str, quiet: bool):
    """Load, sweep, summarise; returns the :class:`~orchestrator.search.sweep.SweepOutcome`.

    Raises:
        SweepInterrupted: on SIGINT, its message the one line that resumes the sweep.
    """
    from orchestrator.search.final_eval import final_eval
    from orchestrator.search.space import load_sweep
    from orchestrator.search.sweep import SweepInterrupted, run_sweep

    spec = load_sweep(spec_path, overrides, smoke=smoke, num_samples=num_samples)
    outcome = None
    try:
        outcome = run_sweep(spec, address=address, resume=resume, name=name,
                            tracking_uri=tracking_uri, cache_dir=cache_dir,
                            verbose=0 if quiet else 1)
        outcome.best_fused_dir = fuse_best(outcome, spec, cache_dir)
        outcome.final_eval = final_eval(spec, outcome, cache_dir, address)
    except (KeyboardInterrupt, SweepInterrupted) as exc:
        stopped = getattr(exc, "name", None) or (outcome.name if outcome else name)
        if not stopped:  # interrupted before the sweep had a name: nothing to resume
            raise
        line = resume_command(spec_path, overrides, smoke, num_samples, address, stopped,
                              tracking_uri, cache_dir, quiet)
        raise SweepInterrupted(stopped, f"sweep {stopped} interrupted; Tune saved its state. "
                               f"Resume with: {line}") from None
    echo_outcome(outcome, spec)
    return outcome


def run_reseed_command(spec_path: str, name: str | None, top_n: int, seeds: int,
                       tracking_uri: str | None, cache_dir: str, address: str | None, quiet: bool,
                       with_default: bool = False):
    """``--reseed-best N --seeds K``: re-train, then print the seed variance per config."""
    from orchestrator.search.reseed import run_reseed

    out = run_reseed(spec_path, name, top_n, seeds, tracking_uri=tracking_uri,
                     cache_dir=cache_dir, address=address, verbose=0 if quiet else 1,
                     with_default=with_default)
    errors = [r for r in out.rows if r["status"] == "error"]
    click.echo(f"re-seeded sweep {out.sweep}: {len(out.stats)} configs x {seeds} seeds "
               f"({len(out.rows)} trials, {len(errors)} errored; Tune run {out.name})")
    for r in errors:
        click.echo(f"  errored: config {r['reseed_of']} seed {r['seed']}: {r['error']}")
    from orchestrator.search.reseed import CONTROL

    for s in out.stats:
        control = s["trial_id"] == CONTROL
        parts = [(f"{m} " if control else f"{m} sweep {s[m]:.4f} / ")
                 + f"seeds {s[m + '/mean']:.4f} ± {s[m + '/std']:.4f} "
                 f"[{s[m + '/min']:.4f}, {s[m + '/max']:.4f}]" for m in out.metrics]
        who = "paper-default control" if control else f"trial {s['trial_id']}"
        click.echo(f"  {who} (seeds {s['seeds']}): " + "; ".join(parts))
    click.echo(f"logged on the sweep's parent run {out.parent_run_id}: seed_variance.csv/.json")
    click.echo(f"next: orchestrator promote {out.sweep}; orchestrator compare {out.sweep} "
               "--out compare/")
    return out
