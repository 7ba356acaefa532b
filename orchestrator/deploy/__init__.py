"""Shipping a model: ``promote`` (``orchestrator promote``: the best trial's checkpoint into
the MLflow registry under an alias, sha256 recorded; model references resolved back to a
file), ``fuse`` and ``command`` (``orchestrator fuse``: a set or one pair through the
inference copy of a model) and ``import_weights`` (``orchestrator import-weights``: the
authors' released TF1 checkpoints as our checkpoints)."""

from orchestrator.deploy.command import run_fuse
from orchestrator.deploy.fuse import fuse_files, fuse_set, fuse_tensors, log_alignment
from orchestrator.deploy.import_weights import import_all, import_one
from orchestrator.deploy.promote import find_sweep, has_best, promote

__all__ = [
    "find_sweep", "fuse_files", "fuse_set", "fuse_tensors", "has_best", "import_all",
    "import_one", "log_alignment", "promote", "run_fuse",
]
