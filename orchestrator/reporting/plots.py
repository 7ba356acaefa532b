"""The report's figures (matplotlib, Agg), each returned as a ``data:image/png;base64`` URI so
the HTML page stays one self-contained file. A figure without data returns None.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any

import numpy as np

from orchestrator.search import SweepSpec

_STATUS_COLOUR = {"finished": "#1f77b4", "stopped": "#ff7f0e"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_uri(fig: Any) -> str:
    """A figure as a PNG data URI (the figure is closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    _plt().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def importance_plot(importances: dict[str, dict[str, dict[str, float]]]) -> str | None:
    """One panel per objective: fANOVA and MDI importance of each parameter (bars, 0..1)."""
    if not importances:
        return None
    plt = _plt()
    metrics = list(importances)
    params = sorted({p for per in importances.values() for v in per.values() for p in v})
    size = (4.2 * len(metrics), 0.45 * len(params) + 1.2)
    fig, axes = plt.subplots(1, len(metrics), figsize=size, squeeze=False)
    y = np.arange(len(params))
    for ax, metric in zip(axes[0], metrics, strict=True):
        for i, (kind, colour) in enumerate((("fanova", "#4c72b0"), ("mdi", "#dd8452"))):
            vals = [importances[metric].get(kind, {}).get(p, 0.0) for p in params]
            ax.barh(y + (i - 0.5) * 0.38, vals, height=0.38, color=colour,
                    label="fANOVA" if kind == "fanova" else "MDI")
        ax.set_yticks(y, params)
        ax.set_xlim(0, 1)
        ax.invert_yaxis()
        ax.set_title(metric)
        ax.set_xlabel("importance (sums to 1)")
    axes[0][0].legend(loc="lower right", fontsize=8)
    return png_uri(fig)


def marginal_plot(spec: SweepSpec, rows: list[dict[str, Any]], metrics: list[str],
                  per_row: int = 4) -> str | None:
    """Each of ``metrics`` against each searched parameter, ``per_row`` panels a row (a
    metric's panels start a new row): numeric parameters as scatter (log axis for log-scale
    ones), choices as jittered strips with the mean marked. Colour: finished vs
    stopped-early trials. Rows without a metric are left out of its panels."""
    from orchestrator.reporting.sensitivity import trial_params

    ok = [r for r in rows if r["status"] != "error"]
    params = list(spec.space)
    if not ok or not params or not metrics:
        return None
    plt = _plt()
    cols = min(per_row, len(params))
    rows_per_metric = math.ceil(len(params) / cols)
    fig, axes = plt.subplots(len(metrics) * rows_per_metric, cols, squeeze=False,
                             figsize=(3.3 * cols, 2.5 * len(metrics) * rows_per_metric))
    typed = [(r, trial_params(spec, r)) for r in ok]
    for i, metric in enumerate(metrics):
        for j, name in enumerate(params):
            ax = axes[i * rows_per_metric + j // cols][j % cols]
            _marginal(ax, spec.space[name], name, metric, typed)
        for j in range(len(params), rows_per_metric * cols):
            axes[i * rows_per_metric + j // cols][j % cols].set_visible(False)
    fig.tight_layout()
    return png_uri(fig)


def _marginal(ax: Any, entry: Any, name: str, metric: str, typed: list) -> None:
    rng = np.random.default_rng(0)
    pts = [(p[name], float(r[metric]), r["status"]) for r, p in typed
           if name in p and math.isfinite(float(r.get(metric, math.nan)))]
    if entry.type == "choice":
        labels = [str(v) for v in entry.values or []]
        for k, label in enumerate(labels):
            ys = [y for x, y, _ in pts if str(x) == label]
            if ys:
                ax.plot([k - 0.25, k + 0.25], [np.mean(ys)] * 2, color="k", lw=1.5)
        xs = [labels.index(str(x)) + rng.uniform(-0.15, 0.15) for x, _, _ in pts]
        ax.set_xticks(range(len(labels)), labels, fontsize=7)
        ax.set_xlim(-0.5, len(labels) - 0.5)
    else:
        xs = [float(x) for x, _, _ in pts]
        if entry.type == "loguniform" or entry.log:
            ax.set_xscale("log")
    ax.scatter(xs, [y for _, y, _ in pts], s=16,
               c=[_STATUS_COLOUR.get(s, "#999") for _, _, s in pts])
    ax.tick_params(labelsize=7)
    ax.set_xlabel(name, fontsize=8)
    ax.set_ylabel(metric, fontsize=8)


def pareto_mask(values: np.ndarray, modes: list[str]) -> np.ndarray:
    """(n, k) objective values -> bool (n,): not dominated by any other row."""
    signed = values * np.array([1.0 if m == "max" else -1.0 for m in modes])
    n = len(signed)
    mask = np.ones(n, dtype=bool)
    for i in range(n):
        others = np.delete(signed, i, axis=0)
        dominated = np.any(np.all(others >= signed[i], axis=1) & np.any(others > signed[i], axis=1))
        mask[i] = not dominated
    return mask


def pareto_plot(spec: SweepSpec, rows: list[dict[str, Any]]) -> str | None:
    """The first two objectives of a multi-objective sweep, the Pareto front joined."""
    metrics = spec.tune.metrics
    pts = [r for r in rows if r["status"] != "error"
           and all(math.isfinite(float(r[m])) for m in metrics)]
    if len(metrics) < 2 or not pts:
        return None
    plt = _plt()
    values = np.array([[float(r[m]) for m in metrics] for r in pts])
    front = pareto_mask(values, spec.tune.modes)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(values[~front, 0], values[~front, 1], c="#999", s=18, label="dominated")
    order = np.argsort(values[front, 0])
    ax.plot(values[front, 0][order], values[front, 1][order], "o-", c="#c44e52", label="front")
    ax.set_xlabel(f"{metrics[0]} ({spec.tune.modes[0]})")
    ax.set_ylabel(f"{metrics[1]} ({spec.tune.modes[1]})")
    ax.legend(fontsize=8)
    return png_uri(fig)


def seed_plot(spec: SweepSpec, stats: list[dict[str, Any]]) -> str | None:
    """Per re-seeded configuration and objective: mean +- std over the seeds (bar), each
    seed (dot) and the value the sweep reported (red diamond)."""
    stats = [s for s in stats if s["n"]]
    if not stats:
        return None
    plt = _plt()
    metrics = spec.tune.metrics
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.2), squeeze=False)
    x = np.arange(len(stats))
    for ax, m in zip(axes[0], metrics, strict=True):
        std = [0.0 if not math.isfinite(s[f"{m}/std"]) else s[f"{m}/std"] for s in stats]
        ax.bar(x, [s[f"{m}/mean"] for s in stats], yerr=std, capsize=4, color="#8fb3d9")
        for k, s in enumerate(stats):
            ax.scatter([k] * len(s[f"{m}/values"]), s[f"{m}/values"], c="k", s=10, zorder=3)
            ax.scatter([k], [s[m]], marker="D", c="#c44e52", s=28, zorder=4)
        ax.set_xticks(x, [s["trial_id"] for s in stats], fontsize=7)
        ax.set_title(m)
    axes[0][0].set_ylabel("mean ± std over seeds (◆ sweep's value)")
    return png_uri(fig)


def curve_plot(curves: dict[str, dict[str, list[tuple[int, float]]]], loss_key: str,
               metric: str) -> str | None:
    """Left: ``loss_key`` per training step; right: ``metric`` per epoch; one line per trial
    (``curves``: {trial label: {key: [(step, value)]}})."""
    if not any(c for c in curves.values()):
        return None
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    for label, c in curves.items():
        for ax, key in ((left, loss_key), (right, metric)):
            if c.get(key):
                steps, vals = zip(*c[key], strict=True)
                ax.plot(steps, vals, marker="o" if ax is right else None, ms=3, label=label)
    left.set(xlabel="step", ylabel=loss_key, title="training loss")
    right.set(xlabel="epoch", ylabel=metric, title="validation")
    right.legend(fontsize=7)
    return png_uri(fig)
