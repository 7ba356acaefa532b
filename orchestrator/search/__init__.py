"""Hyperparameter search: ``space`` (the sweep YAML validated into a :class:`SweepSpec` and
its Tune/Optuna search space), ``sweep`` (Ray Tune + Optuna, resume, resources), ``trial``
(one trial: the shared training loop with Tune reporting), ``recorder`` (the one Ray actor
that writes a sweep's MLflow records), ``record`` (the parent run's summary tables),
``final_eval`` (the top trials on the test set), ``reseed`` (re-training the best configs
under new seeds) and ``command`` (``orchestrator sweep``)."""

from orchestrator.search.command import run_reseed_command, run_sweep_command
from orchestrator.search.final_eval import evaluation_pair_sets, final_eval
from orchestrator.search.record import ranked
from orchestrator.search.reseed import CONTROL, run_reseed
from orchestrator.search.space import SweepSpec, evaluation_sets, load_sweep
from orchestrator.search.sweep import SweepError, SweepOutcome, run_sweep

__all__ = [
    "CONTROL", "SweepError", "SweepOutcome", "SweepSpec", "evaluation_pair_sets",
    "evaluation_sets", "final_eval", "load_sweep", "ranked", "run_reseed",
    "run_reseed_command", "run_sweep", "run_sweep_command",
]
