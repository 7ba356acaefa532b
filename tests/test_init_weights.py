"""Training from released (or any) weights: ``fixed: {init: REF}`` and ``space: {init: choice}``."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.common.config import load_spec
from orchestrator.deploy.import_weights import import_all
from orchestrator.search.space import load_sweep
from orchestrator.training.loop import _make_model

REPO = Path(__file__).resolve().parents[1]
PMGI = REPO / "search_spaces" / "pmgi.yaml"


@pytest.fixture()
def pretrained(tmp_path, shared_dir, monkeypatch) -> Path:
    """The released checkpoints imported into a private pretrained folder."""
    folder = tmp_path / "pretrained"
    monkeypatch.setenv("FUSION_PRETRAINED_DIR", str(folder))
    import_all(shared_dir / "weights", str(folder))
    return folder


def test_init_starts_from_the_released_weights(pretrained):
    spec = load_spec(PMGI, ["init=pretrained:pmgi/ir_vi"])
    assert spec.init_ref() == "pretrained:pmgi/ir_vi" and "init" not in spec.model_params()
    model = _make_model(spec, torch.device("cpu"))
    want = torch.load(pretrained / "pmgi" / "ir_vi.pt", weights_only=True)["state_dict"]
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, want[key], rtol=0, atol=0)
    cold = _make_model(load_spec(PMGI), torch.device("cpu")).state_dict()
    assert not torch.equal(cold["generator.conv1.0.0.weight"],
                           want["generator.conv1.0.0.weight"])
    # a path works as well as a pretrained: name
    path_spec = load_spec(PMGI, [f"init={pretrained / 'pmgi' / 'ir_vi.pt'}"])
    torch.testing.assert_close(_make_model(path_spec, torch.device("cpu")).state_dict(),
                               model.state_dict())


@pytest.mark.parametrize("overrides, message", [
    (["init=pretrained:mffgan/lytro"], "is a 'mffgan' checkpoint, this run trains 'pmgi'"),
    (["init=pretrained:pmgi/pansharpening_1"], "does not fit pmgi"),
    (["init=no/such/file.pt"], "is not a file"),
])
def test_an_init_that_cannot_be_used_is_one_clear_error(pretrained, overrides, message):
    spec = load_spec(PMGI, overrides)
    with pytest.raises(ValueError, match=message):
        _make_model(spec, torch.device("cpu"))


def test_init_values_and_space_entries_are_validated(tmp_path):
    with pytest.raises(ValueError, match="fixed.init: expected a checkpoint file"):
        load_spec(PMGI, ["init=3"])
    text = PMGI.read_text().replace(
        "space:                   # the proportional loss: per-term intensity/gradient weights",
        "space:\n  init: {type: choice, values: [null, pretrained:pmgi/ir_vi]}")
    good = tmp_path / "warm.yaml"
    good.write_text(text)
    spec = load_sweep(good)
    assert spec.space["init"].values == [None, "pretrained:pmgi/ir_vi"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("init: {type: choice, values: [null, pretrained:pmgi/ir_vi]}",
                                "init: {type: uniform, low: 0, high: 1}"))
    with pytest.raises(ValueError, match="space.init: a choice of checkpoints"):
        load_sweep(bad)


@pytest.mark.slow
def test_fine_tuning_run_records_its_init_in_mlflow(pretrained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FUSION_CACHE_DIR", str(tmp_path / "cache"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    res = CliRunner().invoke(main, ["train", str(PMGI), "--smoke", "--quiet", "--out", "ck",
                                    "--device", "cpu", "--tracking-uri", uri,
                                    "--set", "init=pretrained:pmgi/ir_vi"])
    assert res.exit_code == 0, res.output
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("fusion/pmgi").experiment_id])
    assert [r.data.params["init"] for r in runs] == ["pretrained:pmgi/ir_vi"]
    ckpt = torch.load(tmp_path / "ck" / "last.pt", weights_only=True)
    start = torch.load(pretrained / "pmgi" / "ir_vi.pt", weights_only=True)["state_dict"]
    moved = (ckpt["state_dict"]["generator.out.weight"] - start["generator.out.weight"])
    assert 0 < float(moved.abs().max()) < 0.05  # fine-tuned: changed, but from the release
