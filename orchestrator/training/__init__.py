"""One training loop, shared by ``orchestrator train`` and every sweep trial.

``loop`` (:func:`run_training`: patches, optimisers, epochs, checkpoints; reporting and
tracking are passed in, so it imports neither Ray nor MLflow and runs on a bare PyTorch
machine), ``validation`` (the validation pairs and their metrics), ``command`` (``orchestrator
train``: spec -> MLflow run -> loop) and ``split`` (``orchestrator split``: held-out
train/val/test folders)."""

from orchestrator.training.command import git_sha, run_params, train
from orchestrator.training.loop import (
    TrainResult,
    colour_rule,
    resolve_device,
    resolve_set,
    run_training,
)
from orchestrator.training.split import write_split
from orchestrator.training.validation import evaluate_model, load_val_pairs

__all__ = [
    "TrainResult", "colour_rule", "evaluate_model", "git_sha", "load_val_pairs",
    "resolve_device", "resolve_set", "run_params", "run_training", "train", "write_split",
]
