"""Terminal output: rich tables of metric means and a progress bar (stderr)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from orchestrator.evaluation.local import EvalReport, metric_direction

console = Console()
err_console = Console(stderr=True)


@contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator:
    """Yield an ``advance(n)`` callable driving a progress bar on stderr."""
    if not enabled:
        yield lambda n: None
        return
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err_console, transient=True,
    ) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


def _fmt(v: float) -> str:
    return "nan" if math.isnan(v) else f"{v:.4f}" if abs(v) < 1e4 else f"{v:.4g}"


def comparison_table(reports: Mapping[str, EvalReport], title: str) -> Table:
    """Metric rows x method columns of means; the best value per row is bold green."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("dir", justify="center")
    means = {label: rep.mean() for label, rep in reports.items()}
    for label in reports:
        table.add_column(label, justify="right")
    names = next(iter(means.values())).keys() if means else []
    for name in names:
        higher = metric_direction(name)
        row = {label: m[name] for label, m in means.items()}
        finite = [v for v in row.values() if not math.isnan(v)]
        best = (max if higher else min)(finite) if finite else None
        cells = [
            f"[bold green]{_fmt(v)}[/]" if len(row) > 1 and v == best else _fmt(v)
            for v in row.values()
        ]
        table.add_row(name, "↑" if higher else "↓", *cells)
    table.add_row("degenerate", "", *(str(len(rep.to_dict()["degenerate"]))
                                      for rep in reports.values()), end_section=True)
    notes = [f"{label}: {name} undefined on {n} pair(s)"
             for label, rep in reports.items() for name, n in rep.nan_counts().items()]
    if notes:
        table.caption = "means over the pairs where defined; " + "; ".join(notes)
    return table


@contextmanager
def step_progress(description: str, enabled: bool = True) -> Iterator:
    """Yield an ``on_step(step, terms)`` callback showing the step and current losses."""
    if not enabled:
        yield None
        return
    with Progress(
        TextColumn("{task.description}"), TextColumn("step {task.completed}"),
        TextColumn("{task.fields[losses]}"), TimeElapsedColumn(),
        console=err_console, transient=True,
    ) as progress:
        task = progress.add_task(description, total=None, losses="")

        def on_step(step: int, terms: dict[str, float]) -> None:
            losses = " ".join(f"{k}={v:.4g}" for k, v in list(terms.items())[:4])
            progress.update(task, completed=step, losses=losses)

        yield on_step
