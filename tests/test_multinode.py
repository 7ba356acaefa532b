"""A real multi-node sweep on one machine: a head and a worker Ray node sharing one storage
folder, a real ``mlflow server`` on 127.0.0.1, trials on both nodes, the worker node killed
mid-trial and that trial resumed from its checkpoint on the head.

The scenario (Cluster, sweep, kill) runs in ``tests/_multinode_driver.py``, a subprocess with
its own ``RAY_TMPDIR``: ``Cluster.shutdown()`` resets process-global Ray state (internal KV,
the ``ray_current_cluster`` address file) that the session's ``ray_local`` Ray depends on.
This test owns the MLflow server and checks the record there.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from _procs import free_port, stop_group, wait_healthy

pytestmark = [pytest.mark.slow, pytest.mark.ray]

DRIVER = Path(__file__).with_name("_multinode_driver.py")
EPOCHS, SAMPLES = 8, 2


def _kill_ray_leftovers(ray_tmp: str) -> list[str]:
    """SIGKILL any process whose command line names our private Ray temp dir (a Ray node of
    a driver that hung or died); returns what it had to kill. Linux (/proc), like Ray's
    multi-node support."""
    killed = []
    for proc_dir in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if ray_tmp in cmdline:
                os.kill(int(proc_dir.name), signal.SIGKILL)
                killed.append(f"{proc_dir.name} {cmdline[:80]}")
        except (OSError, ValueError):
            pass
    return killed


@contextmanager
def mlflow_server(root: Path) -> Iterator[str]:
    """``mlflow server`` on a free port (sqlite backend, served artifacts); its URI."""
    port = free_port()
    log = (root / "mlflow-server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "mlartifacts"), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, f"{uri}/health", root / "mlflow-server.log")
        yield uri
    finally:
        stop_group(proc)
        log.close()


def test_sweep_on_two_nodes_survives_losing_the_worker(tmp_path):
    from mlflow.tracking import MlflowClient

    t0 = time.time()
    # Ray's socket paths must stay short (AF_UNIX: 107 bytes), so not under tmp_path
    ray_tmp = tempfile.mkdtemp(prefix="rmn", dir="/tmp")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_ADDRESS", None)
    out_json, driver_log = tmp_path / "summary.json", tmp_path / "driver.log"
    try:
        with mlflow_server(tmp_path) as uri:
            with driver_log.open("w") as log:
                driver = subprocess.Popen(
                    [sys.executable, str(DRIVER), "--tracking-uri", uri, "--work", str(tmp_path),
                     "--out", str(out_json), "--epochs", str(EPOCHS),
                     "--num-samples", str(SAMPLES), "--timeout", "200"],
                    cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True)
                try:
                    rc = driver.wait(timeout=240)
                except subprocess.TimeoutExpired:
                    rc = None
                finally:
                    stop_group(driver, grace=5)
            tail = driver_log.read_text()[-4000:]
            assert rc == 0, f"driver rc={rc}\n{tail}"
            summary = json.loads(out_json.read_text())
            _check_record(MlflowClient(uri), summary, tail)
    finally:
        leftovers = _kill_ray_leftovers(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not leftovers, f"Ray processes outlived the driver: {leftovers}"
    print(f"multinode: {time.time() - t0:.0f} s in all (driver: setup {summary['setup_s']} s, "
          f"cluster up at {summary['cluster_s']} s, sweep {summary['sweep_s']} s)")


def _check_record(client, summary: dict, tail: str) -> None:
    head, worker = summary["head"], summary["worker"]
    short = {head: "head", worker: "worker"}
    seen = summary["watcher"]
    assert head != worker
    assert "killed_trial" in seen, f"the worker node was never killed: {seen}\n{tail}"
    assert summary["alive_nodes"] == [head]
    # at the kill, the two trials were running one on each node, the worker's mid-trial
    assert sorted(seen["placement"].values()) == sorted([head, worker]), seen
    assert seen["placement"][seen["killed_trial"]] == worker
    assert seen["status_at_kill"] == "RUNNING" and seen["checkpoints_at_kill"], seen
    assert 2 <= max(seen["epochs_at_kill"]) < EPOCHS, seen

    # the sweep itself: every trial finished (the killed one after a retry), none errored
    assert [r["status"] for r in summary["trials"]] == ["finished"] * SAMPLES, summary["trials"]
    assert not any(r["error"] for r in summary["trials"])

    parent = client.get_run(summary["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep_name"] == summary["name"]
    children = client.search_runs(
        [parent.info.experiment_id],
        f"tags.mlflow.parentRunId = '{summary['parent_run_id']}'")
    assert len(children) == SAMPLES
    assert len({c.data.tags["trial_id"] for c in children}) == SAMPLES
    assert {c.info.status for c in children} == {"FINISHED"}, "a child run left RUNNING/FAILED"

    print(f"\nmultinode: head={head[:12]} worker={worker[:12]}")
    history: set[str] = set()
    for child in sorted(children, key=lambda c: c.data.tags["trial_id"]):
        tags = child.data.tags
        steps = [int(m.step) for m in client.get_metric_history(child.info.run_id, "epoch")]
        nodes = [n for n in (tags.get("resumed_from_node"), tags["node_id"]) if n]
        history.update(nodes)
        print(f"  trial {tags['trial_id']}: ran on {' -> '.join(short.get(n, n) for n in nodes)}"
              f"; epochs logged {steps}; {child.info.status}")
        if tags["trial_id"] == seen["killed_trial"]:
            print(f"    killed at epochs {seen['epochs_at_kill']} with "
                  f"{seen['checkpoints_at_kill']} in the shared storage")
            assert tags["resumed_from_node"] == worker and tags["node_id"] == head, tags
            # continued from its checkpoint, not restarted: epoch 1 once, then on to the end
            assert steps.count(1) == 1 and set(steps) == set(range(1, EPOCHS + 1)), steps
        else:
            assert tags["node_id"] == head and "resumed_from_node" not in tags, tags
            assert steps == list(range(1, EPOCHS + 1)), steps
    assert history == {head, worker}, "trials ran on both nodes"
