"""Plumbing every other package shares: the validated run spec (``config``), YAML read with
bounded alias expansion (``yaml_io``), atomic file writes (``atomic``), the MLflow wiring
(``tracking``) and model references resolved to sha256-verified files (``model_refs``).
Imports no other ``orchestrator`` package; MLflow is imported only inside the functions that
talk to it."""

from orchestrator.common.atomic import atomic_open, atomic_write
from orchestrator.common.config import (
    GENERATED,
    INIT_FORMS,
    INIT_KEY,
    RunSpec,
    check_init,
    generated_split,
    load_spec,
    load_spec_and_extras,
    read_yaml,
)
from orchestrator.common.failpoints import failpoint
from orchestrator.common.model_refs import (
    BEST,
    REF_FORMS,
    cache_dir,
    pretrained_dir,
    resolve_checkpoint,
    resolve_pretrained,
)
from orchestrator.common.tracking import (
    DEFAULT_ARTIFACTS,
    MlflowRun,
    child_runs,
    ensure_experiment,
    flatten,
    mlflow_client,
    open_child,
    resolve_tracking_uri,
    runs_url,
    sha256_file,
    sweep_runs,
    ui_base,
)
from orchestrator.common.yaml_io import load_yaml

__all__ = [
    "BEST", "DEFAULT_ARTIFACTS", "GENERATED", "INIT_FORMS", "INIT_KEY", "MlflowRun", "REF_FORMS",
    "RunSpec", "atomic_open", "atomic_write", "cache_dir", "check_init", "child_runs",
    "ensure_experiment", "failpoint", "flatten", "generated_split", "load_spec",
    "load_spec_and_extras", "load_yaml", "mlflow_client", "open_child", "pretrained_dir",
    "read_yaml", "resolve_checkpoint", "resolve_pretrained", "resolve_tracking_uri", "runs_url",
    "sha256_file", "sweep_runs", "ui_base",
]
