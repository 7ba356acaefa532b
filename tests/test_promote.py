"""`orchestrator promote` and model URIs for `orchestrator fuse`, on a real sqlite MLflow store."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fusion_models import registry
from fusion_models.data import read_image, write_image
from orchestrator.cli import main
from orchestrator.common.model_refs import resolve_checkpoint
from orchestrator.common.tracking import sha256_file
from orchestrator.deploy.promote import promote

SWEEP = "pmgi-test-sweep"
SCORES = {"t0": 0.30, "t1": 0.55, "t2": 0.42, "t3": 0.90}  # t3 is FAILED: never a candidate


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Run in tmp_path: nothing (a stray mlflow.db, .fusion_models) lands in the repo."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A fake sweep: parent run + 4 child runs (one FAILED), each with a real pmgi best.pt."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.create_experiment("fusion/pmgi", artifact_location=(root / "art").as_uri())
    client.create_experiment("fusion/other", artifact_location=(root / "art2").as_uri())
    parent = client.create_run(exp, run_name=SWEEP, tags={
        "sweep_name": SWEEP, "kind": "sweep", "model": "pmgi"}).info.run_id
    runs, digests = {}, {}
    for i, (trial, score) in enumerate(SCORES.items()):
        run = client.create_run(exp, run_name=trial, tags={
            "mlflow.parentRunId": parent, "trial_id": trial, "sweep": SWEEP, "model": "pmgi"})
        rid = run.info.run_id
        torch.manual_seed(i)
        model = registry.build("pmgi", {"channels": 4})
        path = root / trial / "best.pt"
        path.parent.mkdir()
        torch.save(model.checkpoint(i + 1), path)
        for epoch in (1, 2):  # the latest value is what counts
            client.log_metric(rid, "val/Qabf", score - 0.1 * (2 - epoch), step=epoch)
        client.log_artifact(rid, str(path), "checkpoints")
        client.set_tag(rid, "best_sha256", sha256_file(path))
        client.set_terminated(rid, "FAILED" if trial == "t3" else "FINISHED")
        runs[trial], digests[trial] = rid, sha256_file(path)
    other = client.create_run(exp, run_name="lonely").info.run_id
    client.set_terminated(parent, "FINISHED")
    return {"uri": uri, "client": client, "parent": parent, "runs": runs,
            "digests": digests, "other": other}


def test_promote_best_finished_child_then_new_version(store):
    uri, client, runs = store["uri"], store["client"], store["runs"]
    res = promote(SWEEP, uri)
    assert (res.model_name, res.version, res.alias) == ("fusion-pmgi", "1", "champion")
    assert res.run_id == runs["t1"] and res.value == pytest.approx(0.55)
    assert res.sha256 == store["digests"]["t1"]
    mv = client.get_model_version_by_alias("fusion-pmgi", "champion")
    assert str(mv.version) == "1" and mv.run_id == runs["t1"]
    assert mv.tags["sweep"] == SWEEP and mv.tags["metric"] == "val/Qabf"
    assert float(mv.tags["val/Qabf"]) == pytest.approx(0.55)
    assert mv.tags["sha256"] == res.sha256 and mv.tags["run_id"] == runs["t1"]
    again = promote(store["parent"], uri)  # the parent run id works as SWEEP too
    assert again.version == "2" and again.run_id == runs["t1"]
    assert str(client.get_model_version_by_alias("fusion-pmgi", "champion").version) == "2"


def test_promote_min_mode_and_explicit_run(store):
    uri, runs = store["uri"], store["runs"]
    low = promote(SWEEP, uri, mode="min", alias="worst")
    assert low.run_id == runs["t0"] and low.alias == "worst"
    chosen = promote(SWEEP, uri, run_id=runs["t2"], alias="pick")
    assert chosen.run_id == runs["t2"] and chosen.sha256 == store["digests"]["t2"]


def test_promote_errors_are_clear(store):
    uri = store["uri"]
    with pytest.raises(ValueError, match="not a child run of sweep"):
        promote(SWEEP, uri, run_id=store["other"])
    with pytest.raises(ValueError, match=r"unknown sweep 'nope'.*fusion/other.*fusion/pmgi"):
        promote("nope", uri)
    with pytest.raises(ValueError, match="no candidate run.*val/loss"):
        promote(SWEEP, uri, metric="val/loss")


def test_resolve_checkpoint_verifies_sha256(store, tmp_path):
    uri, client = store["uri"], store["client"]
    promote(SWEEP, uri, alias="verify")
    path = resolve_checkpoint("models:/fusion-pmgi@verify", uri, tmp_path / "c1")
    mv = client.get_model_version_by_alias("fusion-pmgi", "verify")
    assert path.name == "best.pt" and sha256_file(path) == mv.tags["sha256"]
    assert registry.load_checkpoint(path)[0].name == "pmgi"
    by_version = resolve_checkpoint(f"models:/fusion-pmgi/{mv.version}", uri, tmp_path / "c2")
    assert sha256_file(by_version) == mv.tags["sha256"]
    run_ref = resolve_checkpoint(f"runs:/{store['runs']['t0']}", uri, tmp_path / "c3")
    assert sha256_file(run_ref) == store["digests"]["t0"]
    dir_ref = resolve_checkpoint(f"runs:/{store['runs']['t2']}/checkpoints", uri, tmp_path / "c4")
    assert sha256_file(dir_ref) == store["digests"]["t2"]
    client.set_model_version_tag("fusion-pmgi", mv.version, "sha256", "0" * 64)
    with pytest.raises(ValueError, match=f"sha256 mismatch.*{mv.tags['sha256']}.*{'0' * 64}"):
        resolve_checkpoint("models:/fusion-pmgi@verify", uri, tmp_path / "c5")
    with pytest.raises(ValueError, match="not found"):
        resolve_checkpoint(str(tmp_path / "missing.pt"), uri)
    with pytest.raises(ValueError, match="cannot fetch models:/fusion-pmgi@ghost"):
        resolve_checkpoint("models:/fusion-pmgi@ghost", uri, tmp_path / "c6")
    assert not (tmp_path / "mlflow.db").exists()  # every lookup used the given store


def test_cli_promote_then_fuse_from_the_registry(store, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    runner = CliRunner()
    res = runner.invoke(main, ["promote", SWEEP, "--alias", "cli"])
    assert res.exit_code == 0, res.output
    assert "fusion-pmgi" in res.output and "@cli" in res.output and "0.55" in res.output
    assert "orchestrator fuse models:/fusion-pmgi@cli" in res.output
    rng = np.random.default_rng(0)
    write_image("a.png", rng.integers(0, 255, (40, 56), dtype=np.uint8))
    write_image("b.png", np.full((40, 56), 128, np.uint8))
    res = runner.invoke(main, ["fuse", "models:/fusion-pmgi@cli", "--a", "a.png", "--b",
                               "b.png", "-o", "out.png", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert read_image(tmp_path / "out.png").shape[:2] == (40, 56)
    assert (tmp_path / ".fusion_models").is_dir()
    res = runner.invoke(main, ["promote", "nope"])
    assert res.exit_code != 0 and "unknown sweep 'nope'" in res.output
    res = runner.invoke(main, ["fuse", "nothing.pt", "--a", "a.png", "--b", "b.png", "-o",
                               "o.png"])
    assert res.exit_code != 0 and "not found" in res.output


def test_relative_sqlite_uri_is_made_absolute(tmp_path, monkeypatch):
    """Ray workers run in their trial folder: a relative sqlite URI must name one file."""
    from orchestrator.common.tracking import resolve_tracking_uri

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri("sqlite:///runs/m.db") == f"sqlite:///{tmp_path / 'runs/m.db'}"
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert resolve_tracking_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert resolve_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
