"""Data-parallel training of the multi-network models (what Ray Train workers run): gradients
averaged before every optimiser step keep the ranks' weights identical while each rank sees
its own batches. Two real processes, a real gloo process group."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fusion_models import registry
from orchestrator.training.loop import sync_gradients


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a, b = torch.rand(2, 1, 44, 44, generator=g), torch.rand(2, 1, 44, 44, generator=g)
    a, b = a * 2 - 1, b * 2 - 1
    return {"a": a, "b": b, "a_label": a[..., 6:38, 6:38], "b_label": b[..., 6:38, 6:38]}


def _worker(rank: int, port: int, out: str, name: str, params: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)  # same initial weights on both ranks
    model = registry.build(name, params)
    sync_gradients(model, 2)
    for step in range(3):
        model.training_step(_batch(100 * rank + step))  # different data per rank
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()},
               f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize("name, params", [("fusiongan", {"patch": 44}),
                                          ("pmgi", {"channels": 4, "patch": 44, "label": 32})])
def test_synced_ranks_keep_identical_weights(name, params, tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path), name, params), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    torch.manual_seed(0)
    start = registry.build(name, params).state_dict()
    moved = False
    for key, value in r0.items():
        if "running" in key or "num_batches" in key or not value.is_floating_point():
            continue  # BatchNorm statistics are per rank (as in DDP without SyncBN)
        assert torch.equal(value, r1[key]), key
        moved |= not torch.equal(value, start[key])
    assert moved, "the weights trained"


def test_models_with_loss_dependent_step_counts_refuse_several_workers(tmp_path):
    from orchestrator.common.config import load_spec
    from orchestrator.training.loop import _setup

    spec = load_spec(os.path.join(os.path.dirname(__file__), "..", "search_spaces",
                                  "ddcgan.yaml"), ["train.device=cpu"])
    with pytest.raises(ValueError, match="cannot train on several workers"):
        _setup(spec, tmp_path / "out", tmp_path / "cache", rank=0, world_size=2)
