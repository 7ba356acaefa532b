"""`orchestrator train search_spaces/<model>.yaml --smoke` for every registered model: the
committed YAMLs train on generated data on any machine, tracked in a real MLflow (sqlite)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from fusion_models import registry
from orchestrator.cli import main

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", registry.list_models())
def test_smoke_training_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FUSION_CACHE_DIR", str(tmp_path / "cache"))
    res = CliRunner().invoke(main, ["train", str(REPO / "search_spaces" / f"{name}.yaml"),
                                    "--smoke", "--quiet", "--out", "ck", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "status: finished  epochs: 2" in res.output
    ckpt = torch.load(tmp_path / "ck" / "last.pt", weights_only=True)
    assert ckpt["model"] == name and ckpt["epoch"] == 2
    for key in ("val/Qabf", "val/SF", "val/SSIM_A", "val/SSIM_B", "train/loss_g"):
        assert math.isfinite(ckpt["metrics"][key]), key
