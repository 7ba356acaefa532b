"""`orchestrator eval` on the CPU scores in forked single-threaded workers: same numbers as one
process, balanced shares, a dead worker's share scored here, a worker's error raised here, and
the report's times adding up to the time waited."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fusion_models.data import DataError, open_pair_set
from fusion_models.metrics import PRESETS
from orchestrator.evaluation.local import (
    align_once,
    group_batches,
    make_settings,
    plan_items,
    read_item,
    score_batch,
)
from orchestrator.evaluation.workers import eval_workers, score_in_workers, share_out

METRICS = ["EN", "MI", "SD", "CC", "VIF", "Qabf", "SSIM"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tno(shared_data):
    """8 TNO pairs (several sizes, one size three times), read, in batches of up to 2."""
    items = plan_items(open_pair_set(shared_data / "tno"), None)[:8]
    settings = make_settings(METRICS, PRESETS["cdd"], "average", "gray", "cpu")
    return group_batches([read_item(x) for x in items], 2), settings


def _one_process(batches, settings) -> dict:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' thread count: the same arithmetic
    try:
        return {r.name: r for b in batches for r in score_batch(b, settings)}
    finally:
        torch.set_num_threads(before)


def _assert_same(results, expected) -> None:
    assert sorted(r.name for r in results) == sorted(expected)
    for r in results:
        for name, value in expected[r.name].metrics.items():
            assert r.metrics[name] == pytest.approx(value, rel=1e-12, abs=1e-12), (r.name, name)
        assert r.diagnostics == expected[r.name].diagnostics


def test_shares_hold_every_pair_once_with_balanced_pixels(tno):
    batches, _ = tno
    pairs = [x.item.name for b in batches for x in b]
    for workers in (2, 3):
        shares = share_out(batches, workers)
        assert len(shares) == workers
        assert sorted(x.item.name for s in shares for b in s for x in b) == sorted(pairs)
        loads = [sum(x.a.shape[-1] * x.a.shape[-2] for b in s for x in b) for s in shares]
        largest_pair = max(x.a.shape[-1] * x.a.shape[-2] for b in batches for x in b)
        assert max(loads) - min(loads) <= largest_pair, loads


def test_workers_give_the_one_process_numbers_and_times_add_up(tno):
    batches, settings = tno
    expected = _one_process(batches, settings)
    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    results = score_in_workers(batches, settings, 2, score_batch)
    wall = time.perf_counter() - t0
    assert torch.get_num_threads() == threads  # this process scored its share on one thread
    _assert_same(results, expected)
    waited = sum(r.align_s + r.fuse_s + r.metrics_s for r in results)
    assert waited == pytest.approx(wall, rel=0.05)
    for r in results:
        assert sum(r.metric_s.values()) == pytest.approx(r.metrics_s, rel=0.05)


def test_registered_pairs_are_warped_once(shared_data):
    """--register: B is warped onto A here, before the fork, and not again in a worker."""
    items = plan_items(open_pair_set(shared_data / "tno"), None)[:4]
    settings = make_settings(["SSIM", "Qabf"], PRESETS["cdd"], "average", "gray", "cpu",
                             register="rigid")

    def shifted_batches():
        loaded = [read_item(x) for x in items]
        for x in loaded:
            x.b = torch.roll(x.b, 3, dims=-1)  # 3 px off: registration has work to do
        return group_batches(loaded, 2)

    expected = _one_process(shifted_batches(), settings)
    results = score_in_workers(shifted_batches(), settings, 2, score_batch,
                               lambda x: align_once(x, settings))
    _assert_same(results, expected)
    assert all(r.alignment is not None for r in results)
    assert all(r.align_s > 0 for r in results)


def _dies_in_a_worker(parent: int):
    def score(batch, settings):
        if os.getpid() != parent:
            os._exit(3)  # killed, out of memory...
        return score_batch(batch, settings)
    return score


def test_a_dead_worker_share_is_scored_here(tno, caplog):
    batches, settings = tno
    expected = _one_process(batches, settings)
    with caplog.at_level(logging.WARNING, logger="orchestrator.evaluation.workers"):
        results = score_in_workers(batches, settings, 2, _dies_in_a_worker(os.getpid()))
    _assert_same(results, expected)
    assert "ended with exit code 3 before sending results" in caplog.text


def _fails_in_a_worker(parent: int):
    def score(batch, settings):
        if os.getpid() != parent:
            raise DataError(f"pair(s) {batch[0].item.name!r}: too small for this metric")
        return score_batch(batch, settings)
    return score


def test_a_worker_error_is_raised_here(tno):
    batches, settings = tno
    with pytest.raises(DataError, match="too small for this metric"):
        score_in_workers(batches, settings, 2, _fails_in_a_worker(os.getpid()))


def test_workers_only_on_the_cpu_and_never_beside_ray(tno, ray_local):
    _, settings = tno
    assert eval_workers(settings, 100) == 1  # this process is a Ray driver now
    gpu = make_settings(METRICS, PRESETS["cdd"], "average", "gray", "cuda")
    assert eval_workers(gpu, 100) == 1


@pytest.mark.slow
def test_cli_workers_and_one_thread_agree(tmp_path, shared_data):
    """`orchestrator eval` in fresh processes: 2 threads (forked workers) vs OMP_NUM_THREADS=1
    (one process): the same JSON values, and the per-metric times add up to metrics_s."""
    reports = {}
    for threads in ("2", "1"):
        out = tmp_path / f"r{threads}.json"
        env = {**os.environ, "OMP_NUM_THREADS": threads}
        subprocess.run([sys.executable, "-m", "orchestrator.cli", "eval", "--quiet", "--data",
                        str(shared_data / "tno"), "--method", "average", "--metrics",
                        ",".join(METRICS), "--json", str(out)], check=True, env=env, cwd=REPO)
        reports[threads] = json.loads(out.read_text())
    two, one = reports["2"], reports["1"]
    assert two["per_pair"].keys() == one["per_pair"].keys() and len(two["per_pair"]) == 25
    for stem, values in one["per_pair"].items():
        for name, value in values.items():
            assert two["per_pair"][stem][name] == pytest.approx(value, rel=1e-12), (stem, name)
    assert two["diagnostics"] == one["diagnostics"]
    timing = two["timing"]
    assert sum(timing["by_metric_s"].values()) == pytest.approx(timing["metrics_s"], rel=0.05)
