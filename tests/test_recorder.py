"""The sweep's recorder actor loses no record when a trial raises or its process is killed
mid-trial: every epoch the trial reported (to Tune/Train) is in MLflow with its step terms and
best.pt, and the trial process never imports MLflow. Real Ray, real sqlite MLflow, the real
training loop (PMGI smoke, 3 epochs)."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.common.tracking import MlflowRun, sha256_file
from orchestrator.search.recorder import ask, start_recorder
from orchestrator.search.space import load_sweep
from orchestrator.search.sweep import trial_context
from orchestrator.search.trial import run_trial_loop

REPO = Path(__file__).resolve().parents[1]
EPOCHS, STOP_AT = 3, 2

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("recorder-cache"))


def _sweep(tmp_path: Path, cache: str, ray_local):
    """A parent run, a recorder actor on it and the trial context that carries both."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = load_sweep(REPO / "search_spaces" / "pmgi.yaml", [f"fixed.epochs={EPOCHS}"],
                      smoke=True)
    parent = MlflowRun(uri, "fusion/pmgi", "sweep", {}, {"kind": "sweep"}).run_id
    recorder = start_recorder(uri, "fusion/pmgi", parent)
    ctx = trial_context(spec, "sweep", uri, parent, cache, str(tmp_path), recorder)
    return uri, ctx, recorder


def _trial(ctx, out: Path, report_fn) -> None:
    from ray.train import Checkpoint

    run_trial_loop(ctx, {"channels": 8}, "t0", "trial_t0", out, 0, 1, report_fn, Checkpoint,
                   lambda: None)


def _check_records(uri: str, out: Path, status: str):
    """Epochs 1..STOP_AT fully recorded, nothing after; returns the child run."""
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("fusion/pmgi").experiment_id],
                                "tags.trial_id = 't0'")
    rid = run.info.run_id
    assert run.info.status == status
    assert [int(m.step) for m in client.get_metric_history(rid, "epoch")] == [1, 2]
    assert [int(m.step) for m in client.get_metric_history(rid, "val/Qabf")] == [1, 2]
    per_epoch = int(min(client.get_metric_history(rid, "step"), key=lambda m: m.step).value)
    steps = sorted(int(m.step) for m in client.get_metric_history(rid, "step/loss_g"))
    assert per_epoch >= 1 and steps == list(range(1, 2 * per_epoch + 1)), "every step's terms"
    best = out / "rank0" / "best.pt"
    uploaded = Path(urlparse(run.info.artifact_uri).path) / "checkpoints" / "best.pt"
    assert run.data.tags["best_sha256"] == sha256_file(best) == sha256_file(uploaded)
    assert int(run.data.tags["best_epoch"]) in (1, 2)
    return run


def test_a_trial_that_raises_mid_run_keeps_every_reported_epoch(ray_local, cache, tmp_path):
    """Tune's report of epoch 2 raises: epochs 1 and 2 are in MLflow, the run is FAILED with
    the exception as its note, and the recorder still serves the sweep."""
    uri, ctx, recorder = _sweep(tmp_path, cache, ray_local)
    reported: list[float] = []

    def report_fn(metrics: dict, checkpoint=None) -> None:
        reported.append(metrics["epoch"])
        if metrics["epoch"] == STOP_AT:
            raise RuntimeError("tune went away")

    with pytest.raises(RuntimeError, match="tune went away"):
        _trial(ctx, tmp_path / "t0", report_fn)
    assert reported == [1.0, 2.0]
    run = _check_records(uri, tmp_path / "t0", "FAILED")
    assert run.data.tags["status_note"] == "RuntimeError: tune went away"
    assert ask(recorder, "child_ids") == {"t0": run.info.run_id}


def test_a_killed_trial_process_loses_no_reported_epoch(ray_local, cache, tmp_path):
    """The trial's Ray worker is SIGKILLed while Tune receives epoch 2 (no ``finally``
    runs): epochs 1 and 2 are in MLflow all the same. At each report the store (read with
    sqlite3 in the trial process) already held that epoch, and that process never imported
    MLflow (its records went through the recorder)."""
    import ray

    uri, ctx, _ = _sweep(tmp_path, cache, ray_local)
    marker, out, stop_at = tmp_path / "reports.jsonl", tmp_path / "t0", STOP_AT
    db = tmp_path / "mlflow.db"

    @ray.remote(num_cpus=1, max_retries=0)
    def trial() -> None:  # self-contained: this test module is not importable in a worker
        import sqlite3

        from ray.train import Checkpoint

        from orchestrator.search.trial import run_trial_loop

        def report_fn(metrics: dict, checkpoint=None) -> None:
            with sqlite3.connect(db) as con:
                rows = con.execute("SELECT step FROM metrics WHERE key = 'epoch'").fetchall()
            with marker.open("a") as fh:
                fh.write(json.dumps({"epoch": metrics["epoch"], "in_store": sorted(
                    r[0] for r in rows), "mlflow_imported": "mlflow" in sys.modules}) + "\n")
            if metrics["epoch"] == stop_at:
                os.kill(os.getpid(), signal.SIGKILL)

        run_trial_loop(ctx, {"channels": 8}, "t0", "trial_t0", out, 0, 1, report_fn,
                       Checkpoint, lambda: None)

    with pytest.raises(ray.exceptions.WorkerCrashedError):
        ray.get(trial.remote())
    reports = [json.loads(line) for line in marker.read_text().splitlines()]
    assert reports == [{"epoch": 1.0, "in_store": [1], "mlflow_imported": False},
                       {"epoch": 2.0, "in_store": [1, 2], "mlflow_imported": False}]
    _check_records(uri, out, "RUNNING")  # the sweep's summary closes it
