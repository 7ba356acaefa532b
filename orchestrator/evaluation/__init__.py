"""Measuring fused images: ``local`` (plan the pairs, fuse with a baseline or a model, score
every metric in batches of same-size pairs), ``ray_data`` (the same work spread over a Ray
cluster with Ray Data), ``align`` (each pair's alignment check, once per evaluation and cached
on disk), ``console`` (progress and the metric table), ``command`` (``orchestrator eval``) and
``pansharpen`` (``orchestrator pan-eval``)."""

from orchestrator.evaluation.command import EvalArgs, parse_options, run_eval
from orchestrator.evaluation.console import progress_bar, step_progress
from orchestrator.evaluation.local import (
    EvalItem,
    EvalReport,
    PairResult,
    evaluate_local,
    make_settings,
    metric_direction,
    plan_items,
)
from orchestrator.evaluation.pansharpen import pan_eval_command
from orchestrator.evaluation.ray_data import ensure_ray, evaluate_ray

__all__ = [
    "EvalArgs", "EvalItem", "EvalReport", "PairResult", "ensure_ray",
    "evaluate_local", "evaluate_ray", "make_settings", "metric_direction", "pan_eval_command",
    "parse_options", "plan_items", "progress_bar", "run_eval", "step_progress",
]
