"""The multi-node scenario behind tests/test_multinode.py, in its own process.

A two-node ``ray.cluster_utils.Cluster`` (head + worker, 1 CPU each, sharing this machine and
one storage folder), a pmgi sweep whose two trials run one per node, and a watcher thread that
removes the worker node once its trial has reported (and checkpointed) epoch 2: Tune retries
that trial (``tune.max_failures``) on the head from its checkpoint. Writes a JSON summary
(node ids, the killed trial, what the watcher saw) to ``--out``; the test checks the record in
MLflow itself.

Why a separate process: ``Cluster.shutdown()`` resets the process-global internal KV and the
address file that the test session's own Ray (``ray_local``) relies on. Run it with
``RAY_TMPDIR`` set to a private short folder so nothing here touches ``/tmp/ray``.

    python tests/_multinode_driver.py --tracking-uri http://127.0.0.1:PORT --work DIR --out F
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
YAML = REPO / "search_spaces" / "pmgi.yaml"


def _children(client, name: str) -> list:
    exp = client.get_experiment_by_name("fusion/pmgi")
    if exp is None:
        return []
    parents = client.search_runs([exp.experiment_id], f"tags.sweep_name = '{name}'")
    if not parents:
        return []
    parent = parents[0].info.run_id
    return client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")


def _epochs(client, run_id: str) -> list[int]:
    return sorted(int(m.step) for m in client.get_metric_history(run_id, "epoch"))


def watch_and_kill(cluster, worker, head_id: str, uri: str, storage: Path, name: str,
                   state: dict, stop: threading.Event, deadline: float) -> None:
    """Remove the worker node once its trial has logged epoch 2 and has a checkpoint in the
    shared storage, while the head's trial runs too; record what was seen at that moment."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    worker_id = worker.node_id
    while not stop.is_set() and time.time() < deadline:
        try:
            on = {c.data.tags.get("node_id"): c for c in _children(client, name)}
            run = on.get(worker_id)
            if run is not None and head_id in on:
                trial_id = run.data.tags["trial_id"]
                ckpts = sorted(p.name for p in storage.glob(f"{name}/*{trial_id}*/checkpoint_*"))
                if ckpts and max(_epochs(client, run.info.run_id), default=0) >= 2:
                    placement = {c.data.tags["trial_id"]: c.data.tags["node_id"]
                                 for c in on.values()}
                    cluster.remove_node(worker, allow_graceful=False)
                    state.update(
                        killed_trial=trial_id, killed_run=run.info.run_id, placement=placement,
                        checkpoints_at_kill=ckpts, kill_time=time.time(),
                        epochs_at_kill=_epochs(client, run.info.run_id),
                        status_at_kill=client.get_run(run.info.run_id).info.status)
                    return
        except Exception:  # noqa: BLE001 - the server or the sweep may not be up yet
            state["last_poll_error"] = traceback.format_exc(limit=2)
        time.sleep(0.3)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tracking-uri", required=True)
    ap.add_argument("--work", required=True, help="storage, cache and logs go below it")
    ap.add_argument("--out", required=True, help="the JSON summary")
    ap.add_argument("--name", default="multinode")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--num-samples", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=240)
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    t0 = time.time()
    work = Path(args.work).resolve()
    storage, cache = work / "shared_storage", str(work / "cache")

    import ray
    from ray.cluster_utils import Cluster

    from orchestrator.search.space import load_sweep
    from orchestrator.search.sweep import run_sweep
    from orchestrator.training.loop import run_training

    # generated data + patch stores once, before any trial could race on creating them
    run_training(load_sweep(YAML, ["fixed.epochs=1"], smoke=True).run, None, work / "warm",
                 cache)
    spec = load_sweep(YAML, [f"fixed.epochs={args.epochs}", "tune.max_concurrent=2",
                             "tune.max_failures=2", "tune.scheduler.kind=none",
                             "resources.cpu_per_worker=1", "channels=8"],
                      smoke=True, num_samples=args.num_samples)
    spec.storage = str(storage)  # the folder both nodes share (Tune's storage_path)
    summary: dict = {"setup_s": round(time.time() - t0, 1)}
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        worker = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        head_id = cluster.head_node.node_id
        summary.update(head=head_id, worker=worker.node_id,
                       cluster_s=round(time.time() - t0, 1))
        ray.init(address=cluster.address, log_to_driver=False)
        state: dict = {}
        stop = threading.Event()
        watcher = threading.Thread(
            target=watch_and_kill, daemon=True,
            args=(cluster, worker, head_id, args.tracking_uri, storage, args.name, state, stop,
                  t0 + args.timeout))
        watcher.start()
        t_sweep = time.time()
        outcome = run_sweep(spec, tracking_uri=args.tracking_uri, cache_dir=cache, verbose=0,
                            name=args.name)
        stop.set()
        watcher.join(timeout=30)
        summary.update(sweep_s=round(time.time() - t_sweep, 1), name=outcome.name,
                       parent_run_id=outcome.parent_run_id, trials=outcome.trials,
                       watcher=state)
        for _ in range(60):  # the GCS marks a killed raylet dead after missed health checks
            alive = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
            if worker.node_id not in alive:
                break
            time.sleep(0.5)
        summary["alive_nodes"] = alive
    finally:
        ray.shutdown()
        cluster.shutdown()
    summary["total_s"] = round(time.time() - t0, 1)
    Path(args.out).write_text(json.dumps(summary, indent=1, default=str))


if __name__ == "__main__":
    main()
