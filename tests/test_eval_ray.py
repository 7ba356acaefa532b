"""Ray Data evaluation gives the in-process numbers (a real local Ray, started once)."""

from __future__ import annotations

import pytest

from fusion_models.data import open_pair_set
from fusion_models.metrics import PRESETS
from orchestrator.evaluation.local import evaluate_local, make_settings, plan_items
from orchestrator.evaluation.ray_data import evaluate_ray

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def test_ray_data_matches_in_process(ray_local, shared_data, tmp_path):
    pair_set = open_pair_set(shared_data / "harvard_mri_pet")
    items = plan_items(pair_set, None)[:10]
    settings = make_settings(["EN", "MI", "Qabf", "SSIM", "VIF"], PRESETS["cdd"], "gff",
                             "ihs", "cpu", out_dir=str(tmp_path / "fused"))
    local = evaluate_local(items, settings).to_dict()
    remote = evaluate_ray(items, settings, num_actors=2, block_pairs=4).to_dict()
    assert list(remote["per_pair"]) == [it.name for it in items]
    for stem, values in local["per_pair"].items():
        for name, value in values.items():
            assert remote["per_pair"][stem][name] == pytest.approx(value, rel=1e-12), (stem, name)
    assert remote["timing"]["pairs"] == 10 and remote["timing"]["metrics_s"] > 0
    assert len(list((tmp_path / "fused").iterdir())) == 10


def test_model_checkpoint_fused_in_ray_data_actors_matches_in_process(ray_local, shared_data,
                                                                       tmp_path):
    """`eval --model`: each actor loads the checkpoint once, fuses and scores; same numbers as
    in-process, and the same as fusing to disk first (what `orchestrator fuse` writes)."""
    import dataclasses

    import torch

    from fusion_models import registry
    from fusion_models.data.colour import default_rule
    from orchestrator.deploy.fuse import fuse_set

    torch.manual_seed(0)
    model = registry.build("pmgi", {"channels": 4})
    ckpt = tmp_path / "pmgi.pt"
    torch.save(model.checkpoint(1), ckpt)
    pair_set = open_pair_set(shared_data / "tno")
    items = plan_items(pair_set, None)[:6]
    rule = default_rule(pair_set.task)
    settings = make_settings(["EN", "SF", "Qabf", "SSIM"], PRESETS["cdd"], None, rule, "cpu",
                             model=str(ckpt))
    local = evaluate_local(items, settings).to_dict()["per_pair"]
    remote = evaluate_ray(items, settings, num_actors=2, block_pairs=3).to_dict()["per_pair"]
    sub = dataclasses.replace(pair_set, pairs=pair_set.pairs[:6])
    fuse_set(registry.load_checkpoint(ckpt)[0], sub, tmp_path / "fused", rule)
    on_disk = evaluate_local(plan_items(sub, tmp_path / "fused"), make_settings(
        ["EN", "SF", "Qabf", "SSIM"], PRESETS["cdd"], None, rule, "cpu")).to_dict()["per_pair"]
    for stem, values in local.items():
        for name, value in values.items():
            assert remote[stem][name] == pytest.approx(value, rel=1e-12), (stem, name)
            assert on_disk[stem][name] == pytest.approx(value, rel=1e-12), (stem, name)
