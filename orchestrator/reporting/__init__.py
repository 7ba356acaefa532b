"""What a finished sweep taught: ``report`` (``orchestrator report``: one self-contained HTML
page from ``templates/``), built from ``data`` (the sweep as MLflow recorded it),
``sensitivity`` (parameter importances and seed statistics), ``plots`` and ``images`` (fused
crops and metric tables of the top trials against baselines); ``compare`` (``orchestrator
compare``: the best model against the authors' released weights and the baselines)."""

from orchestrator.reporting.compare import COMPARE_METRICS, run_compare
from orchestrator.reporting.data import read_spec, read_trials
from orchestrator.reporting.report import ReportArgs, write_report
from orchestrator.reporting.sensitivity import param_importances, seed_stats, trial_params

__all__ = [
    "COMPARE_METRICS", "ReportArgs", "param_importances", "read_spec", "read_trials",
    "run_compare", "seed_stats", "trial_params", "write_report",
]
