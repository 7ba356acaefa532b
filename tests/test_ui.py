"""Where a user lands in the MLflow UI: every ``fusion/*`` experiment is tagged a model-training
experiment, and ``orchestrator ui`` and the sweep's closing lines link the runs table and the
sweep's parent run in the model-training view. MLflow 3.17 opens an experiment's root on the
GenAI traces overview ("Traces 0, no data"); the links must land on the runs instead. Checked
on a real sqlite store, a real ``orchestrator ui`` server and a real headless Chromium."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from _chromium import check_page
from _procs import free_port, stop_group, wait_healthy
from mlflow.tracking import MlflowClient

from orchestrator.common import tracking
from orchestrator.common.tracking import MlflowRun, ensure_experiment
from orchestrator.search.command import echo_outcome
from orchestrator.search.space import load_sweep
from orchestrator.search.sweep import SweepOutcome

REPO = Path(__file__).resolve().parents[1]
#: The experiment tag MLflow 3's UI reads as the experiment kind, and the model-training kind.
KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
#: The URL query that makes MLflow 3.17's UI show an experiment as model training.
ML_VIEW = "workflowType=machine_learning"
SWEEP, TRIALS = "mff-ui", ["trial_alpha", "trial_beta", "trial_gamma"]
#: Chromium's DevTools log: the UI asks for a user, which a server without auth answers 404.
KNOWN_UI_ERRORS = ("/ajax-api/2.0/mlflow/users/current",)
#: Open the collapsed sweep row of the runs table, wait until the trials show.
EXPAND_SWEEP = """(async () => {
  const button = document.querySelector('button[data-component-id*=runnamecellrenderer]');
  if (!button) return false;
  button.click();
  for (let i = 0; i < 300; i++) {
    if (%s.every(n => document.body.innerText.includes(n))) return true;
    await new Promise(r => setTimeout(r, 100));
  }
  return false;
})()""" % TRIALS


def _old_store(root: Path) -> tuple[str, str, str]:
    """A store as earlier versions left it: experiment ``fusion/mffgan`` without the kind tag,
    one sweep parent run and its trial child runs. Returns (uri, experiment id, parent id)."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp_id = client.create_experiment("fusion/mffgan",
                                      artifact_location=(root / "mlartifacts").as_uri())
    parent = client.create_run(exp_id, run_name=SWEEP,
                               tags={"kind": "sweep", "sweep_name": SWEEP}).info.run_id
    for i, name in enumerate(TRIALS):
        run = client.create_run(exp_id, run_name=name, tags={
            "mlflow.parentRunId": parent, "trial_id": f"t{i}", "sweep": SWEEP})
        client.log_metric(run.info.run_id, "val/Qabf", 0.3 + 0.1 * i, step=1)
        client.set_terminated(run.info.run_id)
    client.set_terminated(parent)
    return uri, exp_id, parent


def _kind(client: MlflowClient, name: str) -> str | None:
    return client.get_experiment_by_name(name).tags.get(KIND_TAG)


def test_experiments_are_tagged_model_training(tmp_path, monkeypatch):
    """New experiments are created with the kind tag, existing untagged ones get it (when a
    run opens in them, or when `orchestrator ui` lists them); a kind set in the UI stays."""
    monkeypatch.chdir(tmp_path)
    uri, _, _ = _old_store(tmp_path)
    client = MlflowClient(uri)
    assert _kind(client, "fusion/mffgan") is None
    client.create_experiment("fusion/pmgi")
    client.create_experiment("fusion/chat", tags={KIND_TAG: "genai_development"})
    ensure_experiment("fusion/new", uri)
    MlflowRun(uri, "fusion/pmgi", "one-run", {}).finish()
    assert _kind(client, "fusion/new") == MODEL_TRAINING
    assert _kind(client, "fusion/pmgi") == MODEL_TRAINING
    assert _kind(client, "fusion/mffgan") is None
    (sweep,) = tracking.sweep_runs(uri)
    assert (sweep.name, sweep.experiment, sweep.report) == (SWEEP, "fusion/mffgan", False)
    assert _kind(client, "fusion/mffgan") == MODEL_TRAINING
    assert _kind(client, "fusion/chat") == "genai_development"


def test_links_name_the_runs_view():
    base = "http://127.0.0.1:5000"
    assert tracking.runs_url(base, "3") == f"{base}/#/experiments/3/runs?{ML_VIEW}"
    assert tracking.runs_url(base + "/", "3", "ab12") == \
        f"{base}/#/experiments/3/runs/ab12?{ML_VIEW}"
    assert tracking.ui_base("sqlite:////tmp/mlflow.db") == base
    assert tracking.ui_base("http://head:5000/") == "http://head:5000"


def test_sweep_closing_lines_link_the_runs_view(tmp_path, capsys):
    uri, exp_id, parent = _old_store(tmp_path)
    spec = load_sweep(REPO / "search_spaces" / "mffgan.yaml", smoke=True)
    echo_outcome(SweepOutcome(SWEEP, tmp_path, parent, uri), spec)
    out = capsys.readouterr().out
    base = "http://127.0.0.1:5000"
    assert f"runs:        {base}/#/experiments/{exp_id}/runs?{ML_VIEW}" in out, out
    assert f"this sweep:  {base}/#/experiments/{exp_id}/runs/{parent}?{ML_VIEW}" in out, out


def _errors(result) -> list[str]:
    return [e for e in result.errors if not any(k in e for k in KNOWN_UI_ERRORS)]


@pytest.mark.slow
def test_ui_links_land_on_the_runs_table(tmp_path):
    """`orchestrator ui` on an old store: it tags the experiment, prints the runs link and
    the sweep's link; in Chromium the runs link shows the runs table with the sweep and its
    trials (not the traces overview), the sweep's link its run page with the trials listed."""
    uri, exp_id, parent = _old_store(tmp_path)
    port, log = free_port(), tmp_path / "ui.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "ui", "--tracking-uri", uri,
             "--port", str(port)], cwd=tmp_path, stdout=fh, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        wait_healthy(proc, f"http://127.0.0.1:{port}/health", log)
        text = log.read_text()
        runs = re.search(r"runs of fusion/mffgan: (\S+)", text)
        sweep = re.search(rf"sweep {SWEEP}: (\S+)", text)
        assert runs and sweep, text
        experiment = f"http://127.0.0.1:{port}/#/experiments/{exp_id}"
        assert runs.group(1) == f"{experiment}/runs?{ML_VIEW}"
        assert sweep.group(1) == f"{experiment}/runs/{parent}?{ML_VIEW}"
        assert MlflowClient(uri).get_experiment(exp_id).tags[KIND_TAG] == MODEL_TRAINING
        _check_runs_table(runs.group(1), tmp_path)
        _check_sweep_page(sweep.group(1))
    finally:
        stop_group(proc)


def _check_runs_table(url: str, shots: Path) -> None:
    result = check_page(url, {
        "href": "location.href",
        "expanded": EXPAND_SWEEP,
        "main": "document.querySelector('main').innerText",
        "nav": "document.querySelector('nav').innerText",
    }, ["body"], wait_for=f"document.querySelector('main') && document.querySelector('main')"
                         f".innerText.includes({SWEEP!r})", timeout=90)
    shot = Path(os.environ.get("FUSION_UI_SHOT_DIR", shots)) / "mlflow_runs_view.png"
    shot.write_bytes(result.shots["body"])
    v = result.values
    assert _errors(result) == [], result.errors
    assert re.search(r"#/experiments/\d+/runs\?", v["href"]), v["href"]
    assert v["expanded"] is True, v["main"]
    assert all(name in v["main"] for name in [SWEEP, *TRIALS]), v["main"]
    assert "matching runs" in v["main"], v["main"]
    assert "No data available" not in v["main"] and "Token Usage" not in v["main"], v["main"]
    assert "Model registry" in v["nav"] and "Observability" not in v["nav"], v["nav"]


def _check_sweep_page(url: str) -> None:
    result = check_page(url, {"main": "document.querySelector('main').innerText"},
                        wait_for="document.querySelector('main') && document.querySelector("
                                 "'main').innerText.includes('Child runs')", timeout=90)
    assert _errors(result) == [], result.errors
    main = result.values["main"]
    assert SWEEP in main and all(name in main for name in TRIALS), main
