"""Sweeps on a real local Ray, real Optuna studies (sqlite) and real MLflow (sqlite)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from fusion_models import registry
from orchestrator.search.space import load_sweep
from orchestrator.search.sweep import SweepError, run_sweep

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    """Generated data and patch stores shared by this module's sweeps."""
    return str(tmp_path_factory.mktemp("sweep-cache"))


def _children(uri: str, parent: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_run(parent).info.experiment_id
    return client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent}'")


def _artifacts(uri: str, run_id: str, path: str = "") -> set[str]:
    return {a.path for a in MlflowClient(uri).list_artifacts(run_id, path)}


@pytest.mark.parametrize("name", registry.list_models())
def test_smoke_sweep_of_every_yaml(name, ray_local, cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = load_sweep(REPO / "search_spaces" / f"{name}.yaml", smoke=True)
    out = run_sweep(spec, cache_dir=cache, verbose=0)
    assert out.tracking_uri.startswith("sqlite:///") and (tmp_path / "mlflow.db").exists()
    assert [r["status"] for r in out.trials] == ["finished", "finished"], out.trials
    children = _children(out.tracking_uri, out.parent_run_id)
    assert len(children) == 2 and {c.info.status for c in children} == {"FINISHED"}
    for child in children:
        assert set(child.data.tags) >= {"trial_id", "best_sha256", "sweep"}
        assert "checkpoints/best.pt" in _artifacts(out.tracking_uri, child.info.run_id,
                                                   "checkpoints")
        assert 0.0 <= child.data.metrics["val/Qabf"] <= 1.0
        assert not any(k.startswith(("config/", "time_", "pid")) for k in child.data.metrics)
        sampled = {k for k in child.data.params if k in spec.space}
        assert sampled, "the sampled parameters are the run's params"
    parent = MlflowClient(out.tracking_uri).get_run(out.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep_name"] == out.name
    assert {"trials.csv", "summary.json", "sweep.yaml"} <= _artifacts(out.tracking_uri,
                                                                      out.parent_run_id)
    study = optuna.load_study(study_name=out.name, storage=f"sqlite:///{out.path}/optuna.db")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]


def test_diverged_trial_fails_and_the_sweep_goes_on(ray_local, cache, tmp_path, monkeypatch):
    """w_content=1e39 overflows float32: that trial's loss is inf at step 1."""
    monkeypatch.chdir(tmp_path)
    spec = load_sweep(REPO / "search_spaces" / "pmgi.yaml", smoke=True, num_samples=4)
    spec.space = {"w_content": spec.space["w_int_a"].model_copy(
        update={"type": "choice", "values": [100.0, 1e39], "low": None, "high": None})}
    spec.tune.max_concurrent = 1
    out = run_sweep(spec, cache_dir=cache, verbose=0)
    statuses = {r["param.w_content"]: r["status"] for r in out.trials}
    assert statuses == {100.0: "finished", 1e39: "error"}, out.trials
    bad = [r for r in out.trials if r["status"] == "error"]
    assert all("diverged at step 1" in r["error"] for r in bad)
    client = MlflowClient(out.tracking_uri)
    for row in out.trials:
        run = client.get_run(row["run_id"])
        assert run.info.status == ("FAILED" if row["status"] == "error" else "FINISHED")
        if row["status"] == "error":
            assert "diverged at step 1" in run.data.tags["status_note"]
    study = optuna.load_study(study_name=out.name, storage=f"sqlite:///{out.path}/optuna.db")
    states = {t.params["w_content"]: t.state.name for t in study.trials}
    assert states == {100.0: "COMPLETE", 1e39: "FAIL"}
    assert out.best and out.best["param.w_content"] == 100.0


def test_unschedulable_resources_fail_before_anything_starts(ray_local, cache, tmp_path,
                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = load_sweep(REPO / "search_spaces" / "pmgi.yaml", ["resources.workers=2",
                                                             "resources.cpu_per_worker=1"])
    with pytest.raises(SweepError) as err:
        run_sweep(spec, cache_dir=cache, verbose=0)
    assert "needs {'CPU': 2.1, 'GPU': 0.0}" in str(err.value)
    assert "has {'CPU': 2.0, 'GPU': 0.0}" in str(err.value)
    assert not (tmp_path / "ray_results").exists() and not (tmp_path / "mlflow.db").exists()


def test_multi_objective_reports_a_pareto_front(ray_local, cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = load_sweep(REPO / "search_spaces" / "pmgi.yaml",
                      ["tune.metric=[val/Qabf, val/EN]", "tune.mode=[max, max]"],
                      smoke=True, num_samples=3)
    out = run_sweep(spec, cache_dir=cache, verbose=0)
    assert len(out.trials) == 3 and out.pareto
    for point in out.pareto:
        assert set(point["values"]) == {"val/Qabf", "val/EN"}
    rows = list(csv.DictReader((out.path / "trials.csv").open()))
    # no reported trial dominates a Pareto point
    for point in out.pareto:
        q, e = point["values"]["val/Qabf"], point["values"]["val/EN"]
        assert not any(float(r["val/Qabf"]) > q and float(r["val/EN"]) > e for r in rows)
    summary = json.loads(Path(MlflowClient(out.tracking_uri).download_artifacts(
        out.parent_run_id, "summary.json", str(tmp_path))).read_text())
    assert len(summary["pareto_front"]) == len(out.pareto)


def test_asha_stops_weak_trials_on_the_reported_epoch(ray_local, cache, tmp_path, monkeypatch):
    """lr 1e-9 cannot learn in 6 steps: run after a 1e-3 trial, ASHA stops it at a rung."""
    monkeypatch.chdir(tmp_path)
    spec = load_sweep(REPO / "search_spaces" / "pmgi.yaml", ["fixed.epochs=3"], smoke=True,
                      num_samples=5)
    spec.space = {"lr_g": spec.space["lr_g"].model_copy(
        update={"type": "choice", "values": [1e-3, 1e-9], "low": None, "high": None})}
    spec.tune.max_concurrent = 1
    out = run_sweep(spec, cache_dir=cache, verbose=0)
    client = MlflowClient(out.tracking_uri)
    rows = sorted(out.trials, key=lambda r: client.get_run(r["run_id"]).info.start_time)
    lrs = [r["param.lr_g"] for r in rows]
    assert 1e-3 in lrs[:-1] and 1e-9 in lrs[lrs.index(1e-3) + 1:], lrs  # good, later a bad one
    for i, row in enumerate(rows):
        run = client.get_run(row["run_id"])
        assert run.info.status == "FINISHED"
        epochs = {int(m.step) for m in client.get_metric_history(row["run_id"], "epoch")}
        if row["param.lr_g"] == 1e-9 and 1e-3 in lrs[:i]:
            assert row["status"] == "stopped", rows
        if row["status"] == "stopped":
            assert max(epochs) < 3 and run.data.tags["early_stopped"] == f"epoch {row['epoch']}"
        else:
            assert epochs == {1, 2, 3}


def test_time_budget_ends_the_search_and_closes_every_run(ray_local, cache, tmp_path,
                                                          monkeypatch):
    """tune.time_budget_s=30 with 50 one-at-a-time trials of several seconds each: Tune
    stops starting trials when the budget is spent; every started trial is recorded and no
    MLflow run is left RUNNING."""
    monkeypatch.chdir(tmp_path)
    spec = load_sweep(REPO / "search_spaces" / "pmgi.yaml", ["tune.time_budget_s=30"],
                      smoke=True, num_samples=50)
    spec.tune.max_concurrent = 1
    out = run_sweep(spec, cache_dir=cache, verbose=0)
    assert 1 <= len(out.trials) < 50
    client = MlflowClient(out.tracking_uri)
    statuses = {client.get_run(r["run_id"]).info.status for r in out.trials if r["run_id"]}
    assert statuses <= {"FINISHED"}, statuses
    assert {r["status"] for r in out.trials} <= {"finished", "stopped"}, out.trials


def _sweep_cmd(address: str, cache: str, *extra: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "orchestrator.cli", "sweep",
            str(REPO / "search_spaces" / "pmgi.yaml"), "--smoke", "--num-samples", "3",
            "--set", "fixed.epochs=3", "--set", "tune.max_concurrent=1", "--name", "killed",
            "--address", address, "--cache-dir", cache, "--quiet", *extra]


def test_killed_driver_then_resume_finishes_every_trial_once(ray_local, cache, tmp_path):
    """SIGKILL the sweep driver after its first checkpoint; --resume finishes the sweep with
    one child run per trial, none left RUNNING, the killed trial continued (not restarted)."""
    import os
    import signal
    import subprocess
    import time

    address = ray_local.get_runtime_context().gcs_address
    proc = subprocess.Popen(_sweep_cmd(address, cache), cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not list((tmp_path / "ray_results" / "killed").glob("*/checkpoint_000000")):
        assert proc.poll() is None and time.time() < deadline, "no checkpoint before the kill"
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    parent = client.search_runs([client.get_experiment_by_name("fusion/pmgi").experiment_id],
                                "tags.sweep_name = 'killed'")[0]
    assert parent.info.status == "RUNNING"  # the kill left it open
    res = subprocess.run(_sweep_cmd(address, cache, "--resume"), cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "sweep killed: 3 trials" in res.stdout
    children = _children(uri, parent.info.run_id)
    assert len(children) == 3, [c.data.tags.get("trial_id") for c in children]
    assert len({c.data.tags["trial_id"] for c in children}) == 3
    assert {c.info.status for c in children} == {"FINISHED"}
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    rows = list(csv.DictReader((tmp_path / "ray_results" / "killed" / "trials.csv").open()))
    assert len(rows) == 3 and {r["status"] for r in rows} <= {"finished", "stopped"}
    # the trial running when the driver died continued from its epoch-1 checkpoint in the
    # same child run: epoch 1 is logged once there, not again by a restart
    first = min(children, key=lambda c: c.info.start_time)
    steps = [int(m.step) for m in client.get_metric_history(first.info.run_id, "epoch")]
    assert steps.count(1) == 1 and max(steps) >= 1, steps
