"""A trial's reporter uploads ``best.pt`` to its MLflow run only when the loop rewrote it, not
every epoch: checked on a real sqlite store and its local artifact folder (the uploaded
file's ctime moves exactly when it is written again)."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlparse

import torch
from mlflow.tracking import MlflowClient

from orchestrator.common.tracking import MlflowRun, sha256_file
from orchestrator.search.space import load_sweep
from orchestrator.search.sweep import trial_context
from orchestrator.search.trial import TrialReporter, open_child_run

REPO = Path(__file__).resolve().parents[1]


def _report(reporter: TrialReporter, metrics: list[str], epoch: int, best: Path,
            best_epoch: int) -> None:
    reporter({"epoch": float(epoch), **{m: 0.5 for m in metrics}},
             {"epoch": epoch, "checkpoint": str(best), "best_epoch": best_epoch})


def _uploaded(run: MlflowRun) -> Path:
    return Path(urlparse(run.artifact_uri).path) / "checkpoints" / "best.pt"


def test_best_checkpoint_is_uploaded_only_when_it_changes(tmp_path, monkeypatch):
    """best.pt is saved at epochs 1 and 2 of 4: two uploads; a resumed trial with the same
    best uploads nothing until the best moves (epoch 5)."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = load_sweep(REPO / "search_spaces" / "mffgan.yaml", smoke=True)
    parent = MlflowRun(uri, f"fusion/{spec.run.model}", "sweep", {}, {"kind": "sweep"})
    ctx = trial_context(spec, "sweep", uri, parent.run_id, str(tmp_path), str(tmp_path))
    run = open_child_run(ctx, "t0", "trial_t0", spec.run)
    tune_reports: list[dict] = []
    reporter = TrialReporter(ctx, run, lambda m, checkpoint: tune_reports.append(m), None)
    best, metrics = tmp_path / "best.pt", spec.tune.metrics
    uploads: list[int] = []  # epochs at which the uploaded file was (re)written
    last_ctime = None
    for epoch in (1, 2, 3, 4):
        best_epoch = min(epoch, 2)
        if epoch == best_epoch:  # the loop rewrites best.pt when the metric improved
            torch.save({"epoch": epoch}, best)
        time.sleep(0.05)  # ctime resolution
        _report(reporter, metrics, epoch, best, best_epoch)
        ctime = _uploaded(run).stat().st_ctime_ns
        if ctime != last_ctime:
            uploads.append(epoch)
        last_ctime = ctime
    assert uploads == [1, 2]
    assert len(tune_reports) == 4
    tags = MlflowClient(uri).get_run(run.run_id).data.tags
    assert tags["best_epoch"] == "2" and tags["best_sha256"] == sha256_file(best)
    assert sha256_file(_uploaded(run)) == sha256_file(best)

    resumed = open_child_run(ctx, "t0", "trial_t0", spec.run)  # the trial restored
    assert resumed.run_id == run.run_id
    reporter = TrialReporter(ctx, resumed, lambda m, checkpoint: None, None)
    time.sleep(0.05)
    _report(reporter, metrics, 3, best, 2)
    assert _uploaded(run).stat().st_ctime_ns == last_ctime, "same best re-uploaded on resume"
    torch.save({"epoch": 5}, best)
    time.sleep(0.05)
    _report(reporter, metrics, 5, best, 5)
    assert _uploaded(run).stat().st_ctime_ns != last_ctime
    assert MlflowClient(uri).get_run(run.run_id).data.tags["best_epoch"] == "5"
    assert sha256_file(_uploaded(run)) == sha256_file(best)
