"""`orchestrator pan-eval`: pansharpening methods measured on a pan/ms[/ref] set.

Rows: the classical baselines (``--method``) and PMGI-pan checkpoints (``--model``: a file,
``models:/``, ``runs:/`` or ``pretrained:pmgi/pansharpening_1``), optionally with the authors'
histogram-matching post-processing (``--authors-match``). Columns: SAM, ERGAS, Q2n (with the
set's ``ref/``) and D_lambda, D_s, QNR (``docs/pansharpening.md``). ``--data`` is a set folder
or ``generated:pan[:val|:test]`` (made and cached like the other generated sets).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

from fusion_models.data import DataError
from fusion_models.data.pansharpen import DEFAULT_RATIO, PanSet, generated_pan_set, open_pan_set
from fusion_models.pansharpen_baselines import PAN_BASELINES

COLUMNS = ("SAM", "ERGAS", "Q2n", "D_lambda", "D_s", "QNR")
#: lower is better for these; higher for the rest
LOWER = {"SAM", "ERGAS", "D_lambda", "D_s"}


def open_set(data: str, cache_dir: Path, ratio: int, n: int, size: int) -> PanSet:
    """A pan set folder, or a generated one (``generated:pan[:split]``, ``n`` images of
    ``size`` px under ``cache_dir/generated``)."""
    if data.startswith("generated:"):
        return generated_pan_set(data.split(":", 1)[1], cache_dir / "generated", n=n,
                                 size=size, ratio=ratio)
    return open_pan_set(data, ratio)


def _methods(method: str | None) -> list[str]:
    if not method:
        return []
    names = list(PAN_BASELINES) if method == "all" else [m.strip() for m in method.split(",")]
    unknown = [m for m in names if m not in PAN_BASELINES]
    if unknown:
        raise click.BadParameter(f"unknown pansharpening baseline(s) {unknown}; valid: "
                                 f"{sorted(PAN_BASELINES)} or all", param_hint="--method")
    return names


def _model_rows(refs: tuple[str, ...], authors_match: bool, tracking_uri: str | None
                ) -> list[tuple[str, object]]:
    """(label, method) for every ``--model`` ref: a PMGI ``task="pan"`` checkpoint."""
    from fusion_models.pansharpen_pmgi import pmgi_method
    from fusion_models.registry import load_checkpoint
    from orchestrator.common import resolve_checkpoint, resolve_tracking_uri

    rows = []
    for ref in refs:
        model, ckpt = load_checkpoint(resolve_checkpoint(ref, resolve_tracking_uri(tracking_uri)))
        if ckpt["model"] != "pmgi" or ckpt["params"].get("task") != "pan":
            raise click.BadParameter(f"{ref}: a {ckpt['model']} checkpoint "
                                     f"(task {ckpt['params'].get('task')!r}); pan-eval takes "
                                     "PMGI pansharpening models (task: pan)", param_hint="--model")
        label = ref + (" + authors' match" if authors_match else "")
        rows.append((label, pmgi_method(model, authors_match)))
    return rows


def run_pan_eval(data: str, method: str | None, models: tuple[str, ...], authors_match: bool,
                 ratio: int, n: int, size: int, cache_dir: Path, tracking_uri: str | None
                 ) -> dict[str, dict[str, float]]:
    """{row label: {index: mean over the set}} for every baseline and model asked for."""
    from fusion_models.pansharpen_eval import baseline_method, evaluate_pan

    rows = [(name, baseline_method(name)) for name in _methods(method)]
    if not rows and not models:
        raise click.UsageError("give --method NAME[,NAME]|all and/or --model REF")
    try:
        pan_set = open_set(data, cache_dir, ratio, n, size)
        rows += _model_rows(models, authors_match, tracking_uri)
        return {label: evaluate_pan(fn, pan_set) for label, fn in rows}
    except (DataError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc


def table(results: dict[str, dict[str, float]]) -> str:
    """A Markdown table: one row per method, the indices the set allowed (↓ lower is better)."""
    cols = [c for c in COLUMNS if any(c in r for r in results.values())]
    head = [f"{c} {'↓' if c in LOWER else '↑'}" for c in cols]
    lines = ["| method | " + " | ".join(head) + " |", "|---" * (len(cols) + 1) + "|"]
    for label, values in results.items():
        cells = [f"{values.get(c, math.nan):.4g}" for c in cols]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@click.command("pan-eval")
@click.option("--data", required=True, help="Pan set folder (pan/, ms/, optional ref/) or "
              "generated:pan[:val|:test].")
@click.option("--method", default=None, help="Baselines: bicubic|brovey|ihs (comma list) or all.")
@click.option("--model", "models", multiple=True, metavar="REF",
              help="A PMGI pan checkpoint: path, models:/, runs:/ or pretrained:NAME.")
@click.option("--authors-match", is_flag=True,
              help="Apply the authors' histogram matching to the model rows.")
@click.option("--ratio", default=DEFAULT_RATIO, show_default=True, help="PAN/MS size ratio.")
@click.option("--n", "n_images", default=8, show_default=True, help="Images of a generated set.")
@click.option("--size", default=256, show_default=True, help="Side of generated images (px).")
@click.option("--cache-dir", type=click.Path(), default=".fusion_cache", show_default=True)
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", default=None,
              help="MLflow store for models:/ and runs:/ refs.")
@click.option("--json", "json_out", type=click.Path(), help="Write the table as JSON here.")
def pan_eval_command(data: str, method: str | None, models: tuple[str, ...],
                     authors_match: bool, ratio: int, n_images: int, size: int, cache_dir: str,
                     tracking_uri: str | None, json_out: str | None) -> None:
    """Measure pansharpening baselines and PMGI-pan models (SAM, ERGAS, Q2n, QNR)."""
    from orchestrator.common import atomic_write

    results = run_pan_eval(data, method, models, authors_match, ratio, n_images, size,
                           Path(cache_dir), tracking_uri)
    if json_out:
        atomic_write(json_out, json.dumps({"data": data, "ratio": ratio, "methods": results},
                                          indent=1))
    click.echo(table(results))
