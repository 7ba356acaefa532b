"""The product's main path end to end, through the CLI, on a real local Ray, MLflow and Optuna:
`sweep` (each trial a Ray Train TorchTrainer) -> top-k Ray Data evaluation -> `promote` ->
`fuse models:/...@champion` -> `eval --fused` == `eval --model`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from fusion_models.data import generated_set
from orchestrator.cli import main

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _ok(args: list[str]) -> str:
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, f"{args}\n{res.output}\n{res.exception!r}"
    return res.output


def test_ufgan_sweep_ray_train_promote_fuse_eval(ray_local, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cache = str(tmp_path / "cache")
    out = _ok(["sweep", str(REPO / "search_spaces" / "ufgan.yaml"), "--smoke", "--name", "e2e",
               "--set", "resources.workers=1", "--set", "resources.cpu_per_worker=0.9",
               "--set", "tune.max_concurrent=1", "--set", "tune.final_eval_top_k=1",
               "--cache-dir", cache, "--quiet"])
    assert "sweep e2e: 2 trials (2 finished" in out and "orchestrator promote e2e" in out
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("fusion/ufgan").experiment_id
    parent = client.search_runs([exp], "tags.sweep_name = 'e2e'")[0]
    children = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 2 and {c.info.status for c in children} == {"FINISHED"}
    for child in children:
        arts = {a.path for a in client.list_artifacts(child.info.run_id, "checkpoints")}
        assert "checkpoints/best.pt" in arts
        images = [a.path for a in client.list_artifacts(child.info.run_id, "images")]
        assert images, "a fused-sample grid per evaluation"
    best_id = parent.data.tags["best_run_id"]
    best = client.get_run(best_id)
    # the top-1 Ray Data evaluation, on the generated test split (photos no trial saw)
    assert 0.0 <= best.data.metrics["test/ivif-test/Qabf"] <= 1.0
    assert not any(k.startswith(("test/ivif/", "validation/")) for k in best.data.metrics)
    assert "  test ivif-test (8 pairs) trial " in out
    assert parent.data.tags["final_eval.split"] == "test"
    assert parent.data.tags["data.test"] == "generated:ivif:test"
    parent_arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"trials.csv", "summary.json", "final_eval.csv", "sweep.yaml"} <= parent_arts
    fused_best = tmp_path / "ray_results" / "e2e" / "best_fused"
    assert len(list(fused_best.glob("*.png"))) == 2  # the smoke run's 2 validation pairs

    # the smoke models copy a source (best.pt flagged): promote picks none of them by itself
    assert {c.data.tags["best_flagged"] for c in children} == {"true"}
    res = CliRunner().invoke(main, ["promote", "e2e", "--alias", "champion"])
    assert res.exit_code != 0 and "2 run(s) left out as degenerate-flagged" in res.output
    out = _ok(["promote", "e2e", "--alias", "champion", "--run-id", best_id])
    version = client.get_model_version_by_alias("fusion-ufgan", "champion")
    assert version.run_id == best_id and "fusion-ufgan" in out

    pairs = generated_set("ivif", Path(cache) / "generated")
    _ok(["fuse", "models:/fusion-ufgan@champion", "--data", str(pairs.root), "--out", "fused",
         "--quiet", "--device", "cpu"])
    assert len(list((tmp_path / "fused").glob("*.png"))) == len(pairs.pairs)
    _ok(["eval", "--data", str(pairs.root), "--fused", "fused", "--metrics", "Qabf,SF,EN",
         "--json", "fused.json", "--quiet"])
    _ok(["eval", "--data", str(pairs.root), "--model", "models:/fusion-ufgan@champion",
         "--metrics", "Qabf,SF,EN", "--json", "model.json", "--quiet"])
    a = json.loads((tmp_path / "fused.json").read_text())["mean"]
    b = json.loads((tmp_path / "model.json").read_text())["mean"]
    assert a.keys() == b.keys() and all(abs(a[k] - b[k]) <= 1e-9 for k in a)


def test_two_ray_train_workers_per_trial_log_once(ray_local, tmp_path, monkeypatch):
    """workers: 2 — a TorchTrainer of two data-parallel ranks per trial (gradients averaged
    over a real gloo group); rank 0 alone writes the trial's one MLflow child run."""
    from orchestrator.search.space import load_sweep
    from orchestrator.search.sweep import run_sweep

    monkeypatch.chdir(tmp_path)
    spec = load_sweep(REPO / "search_spaces" / "pmgi.yaml",
                      ["resources.workers=2", "resources.cpu_per_worker=0.9"], smoke=True,
                      num_samples=1)
    out = run_sweep(spec, cache_dir=str(tmp_path / "cache"), verbose=0)
    assert [r["status"] for r in out.trials] == ["finished"], out.trials
    client = MlflowClient(out.tracking_uri)
    exp = client.get_run(out.parent_run_id).info.experiment_id
    children = client.search_runs([exp], f"tags.mlflow.parentRunId = '{out.parent_run_id}'")
    assert len(children) == 1 and children[0].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(children[0].info.run_id, "epoch")]
    assert steps == [1], "one report per epoch, from rank 0 only"
    train_runs = list((tmp_path / "ray_results").glob("train-*/checkpoint_*"))
    assert train_runs, "the Train run checkpointed to the sweep's storage"
    # --reseed-best through the same Ray Train path: the sweep's logged spec (workers: 2),
    # one config x one new seed -> one more child run, from rank 0 only, with the new seed
    from orchestrator.search.reseed import run_reseed

    again = run_reseed(str(REPO / "search_spaces" / "pmgi.yaml"), out.name, 1, 1,
                       tracking_uri=out.tracking_uri, cache_dir=str(tmp_path / "cache"),
                       verbose=0)
    assert [r["status"] for r in again.rows] == ["finished"], again.rows
    reseeded = client.search_runs([exp], f"tags.reseed_of = '{out.trials[0]['trial_id']}'")
    assert len(reseeded) == 1 and reseeded[0].data.tags["seed"] == "1"
    assert reseeded[0].data.params["train.seed"] == "1", "train.seed replaced in its spec"
    assert again.stats[0]["n"] == 1 and again.stats[0]["seeds"] == [1]
