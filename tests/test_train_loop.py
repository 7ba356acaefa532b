"""The one training loop, `orchestrator train` (real MLflow on sqlite) and `orchestrator fuse`."""

from __future__ import annotations

import json
import math

import pytest
import torch
from _tiny_model import TinyFuse
from click.testing import CliRunner

from fusion_models import registry
from orchestrator.cli import main
from orchestrator.common.config import load_spec
from orchestrator.training.loop import run_training

SPEC = """model: tiny
data: {train: "generated:ivif", val_pairs: 3}
fixed: {epochs: 2}
train: {eval_every: 1, seed: 3, device: cpu, max_steps_per_epoch: 8,
        val_metrics: [EN, SF, Qabf, SSIM]}
"""


@pytest.fixture()
def tiny(monkeypatch, tmp_path):
    monkeypatch.setitem(registry.MODELS, "tiny", TinyFuse)
    monkeypatch.setenv("FUSION_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "tiny.yaml"
    path.write_text(SPEC)
    return path


def test_loop_trains_validates_and_checkpoints(tiny, tmp_path):
    spec = load_spec(tiny)
    reports = []
    result = run_training(spec, lambda m, i: reports.append((m, i)), tmp_path / "out",
                          tmp_path / "cache")
    assert result.status == "finished" and result.epochs_run == 2
    assert [m["epoch"] for m, _ in reports] == [1.0, 2.0]
    first, last = reports[0][0], reports[-1][0]
    assert last["train/loss_g"] < first["train/loss_g"]
    for key in ("val/EN", "val/SF", "val/Qabf", "val/SSIM", "val/SSIM_A", "val/degenerate"):
        assert math.isfinite(last[key]), key
    assert reports[-1][1]["samples"].dtype.name == "uint8"
    assert len(reports[0][1]["step_terms"]) == 8
    ckpt = torch.load(result.last_checkpoint, weights_only=True)
    assert ckpt["model"] == "tiny" and ckpt["epoch"] == 2 and "state_dict" in ckpt
    model, _ = registry.load_checkpoint(result.best_checkpoint)
    assert isinstance(model, TinyFuse) and not model.training


def test_loop_reports_batches_per_epoch_to_the_model(tiny, tmp_path):
    from orchestrator.training.loop import _setup

    run = _setup(load_spec(tiny), tmp_path / "out", tmp_path / "cache")
    assert run.model.steps_per_epoch == min(len(run.loader), 8) > 0


def test_same_seed_same_metrics(tiny, tmp_path):
    spec = load_spec(tiny)
    runs = [run_training(spec, None, tmp_path / f"o{i}", tmp_path / "cache").history
            for i in range(2)]
    keys = [k for k in runs[0][-1] if not k.startswith("time/")]
    assert {k: runs[0][-1][k] for k in keys} == {k: runs[1][-1][k] for k in keys}


def test_resume_keeps_the_best_when_the_next_validation_is_worse(tiny, tmp_path):
    """A resumed run restores the best value and epoch from last.pt: its first validation
    after the resume, much worse (weights zeroed: a flat output, SF 0), leaves best.pt alone."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    first = run_training(load_spec(tiny, ["epochs=1", "train.select_metric=val/SF"]), None,
                         out, cache)
    best_sf = first.best_value
    assert first.best_epoch == 1 and best_sf > 1.0
    ckpt = torch.load(first.last_checkpoint, weights_only=True)
    assert ckpt["best"] == {"metric": "val/SF", "mode": "max", "value": best_sf, "epoch": 1,
                            "flagged": False}
    ckpt["state_dict"] = {k: torch.zeros_like(v) for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, tmp_path / "resume.pt")
    infos = []
    resumed = run_training(load_spec(tiny, ["epochs=2", "train.select_metric=val/SF"]),
                           lambda m, i: infos.append((m, i)), out, cache,
                           resume_from=tmp_path / "resume.pt")
    assert infos[0][0]["epoch"] == 2.0 and infos[0][0]["val/SF"] < 0.5 * best_sf
    assert resumed.best_value == best_sf and resumed.best_epoch == 1
    assert infos[0][1]["checkpoint"] == str(out / "best.pt") and infos[0][1]["best_epoch"] == 1
    kept = torch.load(out / "best.pt", weights_only=True)
    assert kept["epoch"] == 1 and kept["metrics"]["val/SF"] == best_sf
    last = torch.load(resumed.last_checkpoint, weights_only=True)
    assert last["epoch"] == 2 and last["best"]["epoch"] == 1


def test_resume_with_another_selection_metric_starts_a_new_best(tiny, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    first = run_training(load_spec(tiny, ["epochs=1", "train.select_metric=val/SF"]), None,
                         out, cache)
    resumed = run_training(load_spec(tiny, ["epochs=2", "train.select_metric=val/EN"]), None,
                           out, cache, resume_from=first.last_checkpoint)
    assert resumed.best_epoch == 2
    assert torch.load(out / "best.pt", weights_only=True)["epoch"] == 2


def test_nan_ends_the_run_as_diverged(tiny, tmp_path):
    spec = load_spec(tiny, ["nan_at_step=5"])
    result = run_training(spec, None, tmp_path / "out", tmp_path / "cache")
    assert result.status == "diverged" and result.diverged_step == 5
    assert "loss_g" in result.reason and "step 5" in result.reason


def test_train_cli_tracks_in_mlflow_and_fuse_then_eval(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    res = runner.invoke(main, ["train", str(tiny), "--set", "lr_g=5e-3", "--out", "ck",
                               "--quiet"])
    assert res.exit_code == 0, res.output
    assert "status: finished" in res.output
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("fusion/tiny")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["lr_g"] == "0.005" and run.data.params["train.seed"] == "3"
    assert {"train/loss_g", "val/Qabf", "val/SSIM_B", "step/loss_g"} <= set(run.data.metrics)
    assert len(client.get_metric_history(run.info.run_id, "step/loss_g")) == 16
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    assert artifacts == {"checkpoints/best.pt", "checkpoints/last.pt"}
    assert len(run.data.tags["best_sha256"]) == 64
    assert (tmp_path / "mlartifacts").is_dir()
    data = tmp_path / "cache" / "generated" / "ivif-n8-s256-seed0-v1"
    res = runner.invoke(main, ["fuse", "ck/best.pt", "--data", str(data), "--out", "fused",
                               "--quiet"])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "fused").glob("*.png"))) == 8
    res = runner.invoke(main, ["eval", "--data", str(data), "--fused", "fused", "--quiet",
                               "--metrics", "EN,Qabf", "--json", "r.json"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "r.json").read_text())["timing"]["pairs"] == 8


def test_unknown_parameter_is_rejected_with_the_valid_keys(tiny):
    with pytest.raises(ValueError, match="valid parameters: .*lr_g"):
        load_spec(tiny, ["lr=1"])
    with pytest.raises(ValueError, match="tiny.yaml"):
        load_spec(tiny, ["train.evall_every=1"])


@pytest.mark.slow
def test_ui_serves_the_tracking_store_on_loopback(tmp_path):
    """`orchestrator ui` starts a real MLflow server on 127.0.0.1 that answers /health."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "ui", "--port", str(port),
         "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # the server's workers share this group: stop them all
    )
    try:
        deadline, body = time.monotonic() + 90, ""
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    body = r.read().decode()
                    break
            except OSError:
                time.sleep(1)
        assert body.strip() == "OK", proc.stdout.read() if proc.poll() is not None else body
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


class _CopiesA(TinyFuse):
    """Trains like TinyFuse but fuses by returning source A: every pair a copy (degenerate)."""

    def _fuse(self, a, b):
        return a


@pytest.mark.parametrize("reject", [True, False])
def test_a_degenerate_evaluation_never_becomes_best(tiny, tmp_path, monkeypatch, reject):
    monkeypatch.setitem(registry.MODELS, "tiny", _CopiesA)
    spec = load_spec(tiny, [f"train.reject_degenerate={str(reject).lower()}"])
    reports = []
    result = run_training(spec, lambda m, i: reports.append(m), tmp_path / "out",
                          tmp_path / "cache")
    assert [m["val/degenerate"] for m in reports] == [1.0, 1.0]  # a copy of A, flagged
    assert reports[0]["val/SSIM_A"] > 0.99 and reports[0]["val/Qabf"] > 0.2  # not a zero
    # every evaluation flagged: best.pt is the best of them either way, marked flagged
    assert result.best_checkpoint is not None and result.best_flagged is reject


def test_an_unflagged_evaluation_beats_a_flagged_best_whatever_its_metric(tiny, tmp_path,
                                                                          monkeypatch):
    """Epoch 1 copies A (flagged, high SSIM); from epoch 2 on the net fuses: epoch 2 becomes
    best.pt although its selection metric is lower, and a flagged epoch 3 cannot replace it."""
    epochs = iter([1, 2, 3])

    class _CopiesFirstAndLast(TinyFuse):
        def _fuse(self, a, b):
            return a if self.copy_now else super()._fuse(a, b)

    state = {"epoch": 0}

    def report(metrics, info):
        state["epoch"] = next(epochs, 0)

    monkeypatch.setitem(registry.MODELS, "tiny", _CopiesFirstAndLast)
    _CopiesFirstAndLast.copy_now = property(lambda self: state["epoch"] in (0, 2))
    spec = load_spec(tiny, ["epochs=3", "train.select_metric=val/SSIM_A"])
    reports = []
    result = run_training(spec, lambda m, i: (reports.append(m), report(m, i)),
                          tmp_path / "out", tmp_path / "cache")
    flags = [m["val/degenerate"] for m in reports]
    assert flags[0] == 1.0 and flags[1] < 1.0 and flags[2] == 1.0, flags
    assert reports[0]["val/SSIM_A"] > reports[1]["val/SSIM_A"]  # the copy scores higher
    assert result.best_epoch == 2 and not result.best_flagged


def test_tune_sees_a_flagged_evaluation_worsened_by_the_penalty():
    from orchestrator.search.space import TuneSpec, penalise_degenerate

    tune = TuneSpec(metric=["val/Qabf", "val/MSE"], mode=["max", "min"])
    clean = {"val/Qabf": 0.6, "val/MSE": 10.0, "val/degenerate": 0.0}
    assert penalise_degenerate(clean, tune) == clean
    flagged = {**clean, "val/degenerate": 0.25}
    out = penalise_degenerate(flagged, tune)
    assert out["val/Qabf"] == pytest.approx(0.6 - 1000) and out["val/MSE"] == 1010.0
    assert flagged["val/Qabf"] == 0.6  # the measured values (MLflow) are untouched
    assert penalise_degenerate(flagged, TuneSpec(degenerate_penalty=0)) == flagged


def test_extra_training_sets_join_the_patch_stream(tiny, tmp_path):
    """``data.extra_train``: the loader draws from the union of the sets' patch stores (so
    an epoch over both is longer), validation stays on the main set's val split."""
    from orchestrator.training.loop import _setup

    alone = _setup(load_spec(tiny, ["train.max_steps_per_epoch=null"]), tmp_path / "a",
                   tmp_path / "cache")
    both = _setup(load_spec(tiny, ["train.max_steps_per_epoch=null",
                                   "data.extra_train=[generated:mff]"]), tmp_path / "b",
                  tmp_path / "cache")
    n_alone, n_both = len(alone.loader.dataset), len(both.loader.dataset)
    mff = len(_setup(load_spec(tiny, ["data.train=generated:mff"]), tmp_path / "c",
                     tmp_path / "cache").loader.dataset)
    assert n_alone > 0 and mff > 0 and n_both == n_alone + mff
    assert [p.name for p in both.val_pairs] == [p.name for p in alone.val_pairs]
    spec = load_spec(tiny, ["data.extra_train=[generated:mff]"])
    assert spec.in_sample_role("generated:mff:train") == "data.extra_train[0]"
