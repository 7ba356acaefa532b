"""`orchestrator train`: ONE configuration (YAML defaults + --set) with MLflow tracking."""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path

from orchestrator.common import RunSpec, load_spec
from orchestrator.training.loop import TrainResult, run_training

log = logging.getLogger(__name__)


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=False, cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def run_params(spec: RunSpec) -> dict[str, str]:
    """Every model parameter (defaults included), data and train settings, flattened."""
    from fusion_models.registry import get_model_class
    from orchestrator.common import flatten

    config = get_model_class(spec.model).Config(**spec.model_params())
    params = flatten("", config.model_dump(mode="json"))
    flatten("data", spec.data.model_dump(mode="json"), params)
    flatten("train", spec.train.model_dump(mode="json"), params)
    if spec.init_ref():
        params["init"] = str(spec.init_ref())
    return params


def check_data(spec: RunSpec, spec_path: str) -> None:
    """Open every set folder the run reads (headers only) before anything is written.

    Raises:
        DataError: naming the YAML, the key and the problem (e.g. a folder that does not exist).
    """
    from fusion_models.data import DataError, open_pair_set
    from orchestrator.common import GENERATED

    entries = [("data.train", spec.data.train), ("data.val", spec.data.val)]
    entries += [(f"data.extra_train[{i}]", v) for i, v in enumerate(spec.data.extra_train)]
    for key, value in entries:
        if value is None or value.startswith(GENERATED):
            continue
        try:
            open_pair_set(spec.resolve_path(value), task=spec.data.task)
        except DataError as exc:
            raise DataError(f"{spec_path}: {key} = {value!r}: {exc}") from None


def train(spec_path: str, overrides: tuple[str, ...], smoke: bool, device: str | None,
          out_dir: str | None, tracking_uri: str | None, cache_dir: str,
          quiet: bool = False) -> TrainResult:
    """Load the spec, open an MLflow run, run the loop with a progress bar, record the result."""
    from orchestrator.common import MlflowRun, resolve_tracking_uri
    from orchestrator.evaluation import step_progress

    if device:
        overrides = (*overrides, f"train.device={device}")
    spec = load_spec(spec_path, overrides, smoke=smoke)
    check_data(spec, spec_path)
    name = f"{spec.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    out = Path(out_dir or Path("runs") / name)
    uri = resolve_tracking_uri(tracking_uri)
    run = MlflowRun(uri, f"fusion/{spec.model}", name, run_params(spec),
                    tags={"model": spec.model, "git_sha": git_sha(), "spec": str(spec_path),
                          "smoke": str(smoke)})
    with step_progress(f"train {spec.model}", enabled=not quiet) as on_step:
        try:
            result = run_training(spec, report=run, out_dir=out, cache_dir=cache_dir,
                                  on_step=on_step)
        except BaseException as exc:
            run.finish("FAILED", f"{type(exc).__name__}: {exc}")
            raise
    for ckpt in (result.best_checkpoint, result.last_checkpoint):
        if ckpt:
            run.log_checkpoint(ckpt)
    run.finish("FAILED" if result.status == "diverged" else "FINISHED", result.reason)
    result.run_id = run.run_id
    return result
