"""MLflow faults during real sweeps: the tracking server stopped mid-sweep (back before the end,
or not), and several sweep drivers on one sqlite store and one storage folder at once.

Real Ray (the session's ``ray_local``, joined by each driver with ``--address``), real
``orchestrator sweep`` driver processes, a real ``mlflow server`` on 127.0.0.1 (sqlite backend,
local artifact folder) that the test stops and starts again on the same port, real Optuna. The
store is read back through MLflow's client, and straight from its sqlite file while the
server is down. Smallest sweeps: PMGI smoke, 2 trials x 2 epochs, one at a time, no final
evaluation."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _procs import free_port, stop_group, wait_healthy
from mlflow.artifacts import download_artifacts
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]
MLFLOW = Path(sys.executable).parent / "mlflow"
TRIALS, EPOCHS = 2, 2

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    """Generated data and patch stores shared by this module's sweeps."""
    return str(tmp_path_factory.mktemp("faults-cache"))


def _server(store: Path, port: int) -> subprocess.Popen:
    """``mlflow server`` on 127.0.0.1:port over ``store/mlflow.db`` and ``store/artifacts``."""
    log = store / "server.log"
    with log.open("a") as fh:
        proc = subprocess.Popen(
            [str(MLFLOW), "server", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
             "--artifacts-destination", str(store / "artifacts"), "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1"],
            cwd=store, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    wait_healthy(proc, f"http://127.0.0.1:{port}/health", log, timeout=240)
    return proc


def _sweep(cwd: Path, ray_local, cache: str, name: str, *extra: str,
           drain_s: int = 300) -> subprocess.Popen:
    """An ``orchestrator sweep`` driver process (output in ``cwd/<name>.log``)."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["FUSION_MLFLOW_DRAIN_S"] = str(drain_s)
    cmd = [sys.executable, "-m", "orchestrator.cli", "sweep",
           str(REPO / "search_spaces" / "pmgi.yaml"), "--smoke", "--num-samples", str(TRIALS),
           "--set", f"fixed.epochs={EPOCHS}", "--set", "tune.max_concurrent=1",
           "--set", "tune.final_eval_top_k=0", "--name", name, "--quiet",
           "--address", ray_local.get_runtime_context().gcs_address, "--cache-dir", cache,
           *extra]
    with (cwd / f"{name}.log").open("a") as fh:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 900) -> str:
    """Wait for a driver; its output."""
    try:
        proc.wait(timeout)
    finally:
        stop_group(proc)
    return log.read_text()


def _wait_for(what: str, check, proc: subprocess.Popen, timeout: float = 600) -> None:
    """Poll ``check()`` while the driver runs (it must not end first)."""
    deadline = time.time() + timeout
    while not check():
        assert proc.poll() is None, f"the sweep ended before {what}"
        assert time.time() < deadline, f"no {what} in {timeout} s"
        time.sleep(0.5)


def _epochs_in_store(db: Path) -> int:
    """Epoch records in the server's sqlite file (read directly: the server may be down)."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=30) as con:
            return con.execute("SELECT count(*) FROM metrics WHERE key = 'epoch'").fetchone()[0]
    except sqlite3.OperationalError:  # the server is creating its tables
        return 0


def _journal(path: Path) -> list[dict]:
    """The spool's records (a line being written is skipped)."""
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def _whole_trial_spooled(path: Path) -> bool:
    """A trial opened, trained and finished entirely while MLflow was down."""
    entries = _journal(path)
    opened = {e["trial"] for e in entries if e["op"] == "open"}
    return any(e["op"] == "finish" and e["trial"] in opened for e in entries)


def _sha(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _artifact(uri: str, run_id: str, path: str, tmp: Path) -> Path:
    """One artifact of a run, downloaded through the tracking server."""
    return Path(download_artifacts(run_id=run_id, artifact_path=path,
                                   dst_path=str(tmp / "downloads" / run_id), tracking_uri=uri))


def _check_sweep(uri: str, name: str, tmp: Path) -> None:
    """Every record of sweep ``name`` is in MLflow once: the parent run (FINISHED, one only)
    with its summary and trial table naming every child; each child FINISHED with epochs
    1..EPOCHS once each, every step's terms once, and a best.pt matching its digest tag."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("fusion/pmgi").experiment_id
    (parent,) = client.search_runs([exp], f"tags.sweep_name = '{name}'")
    pid = parent.info.run_id
    assert parent.info.status == "FINISHED", parent.info
    children = client.search_runs([exp], f"tags.mlflow.parentRunId = '{pid}'")
    assert len(children) == TRIALS and len({c.data.tags["trial_id"] for c in children}) == TRIALS
    summary = json.loads(_artifact(uri, pid, "summary.json", tmp).read_text())
    assert summary["trials"] == TRIALS and summary["errors"] == 0, summary
    table = _artifact(uri, pid, "trials.csv", tmp).read_text()
    assert "pending:" not in table
    for child in children:
        rid = child.info.run_id
        assert child.info.status == "FINISHED" and rid in table, (child.info, table)
        for key in ("epoch", "val/Qabf", "train/loss_g"):
            steps = [int(m.step) for m in client.get_metric_history(rid, key)]
            assert sorted(steps) == list(range(1, EPOCHS + 1)), (key, steps)
        steps = sorted(int(m.step) for m in client.get_metric_history(rid, "step/loss_g"))
        assert steps and steps == list(range(1, len(steps) + 1)), steps
        best = _artifact(uri, rid, "checkpoints/best.pt", tmp)
        assert _sha(best) == child.data.tags["best_sha256"]


def test_server_down_mid_sweep_then_back_loses_nothing(ray_local, cache, tmp_path):
    """The server stops after the first epoch record; a whole trial (its child run's opening
    included) trains, reports to Tune and ends while it is down, its records on the sweep's
    spool; the server comes back on the same port and store: the sweep ends normally with
    every record in MLflow once, and the spool is gone."""
    store, port = tmp_path / "store", free_port()
    store.mkdir()
    uri = f"http://127.0.0.1:{port}"
    journal = tmp_path / "ray_results" / "outage" / "mlflow_spool" / "journal.jsonl"
    server = _server(store, port)
    proc = _sweep(tmp_path, ray_local, cache, "outage", "--tracking-uri", uri)
    try:
        _wait_for("first epoch record", lambda: _epochs_in_store(store / "mlflow.db") > 0, proc)
        stop_group(server)
        _wait_for("trial run while MLflow is down", lambda: _whole_trial_spooled(journal), proc)
        spooled = _journal(journal)
        server = _server(store, port)
        out = _finish(proc, tmp_path / "outage.log")
        assert proc.returncode == 0, out[-4000:]
        assert [e["op"] for e in spooled].count("epoch") >= EPOCHS, spooled
        _check_sweep(uri, "outage", tmp_path)
        assert not journal.parent.exists(), "delivered records are not kept"
        fused = tmp_path / "ray_results" / "outage" / "best_fused"
        assert fused.is_dir() and any(fused.iterdir()), "best.pt fetched back, digest-checked"
    finally:
        stop_group(proc)
        stop_group(server)


def test_server_not_back_fails_the_sweep_and_keeps_the_records(ray_local, cache, tmp_path):
    """The server stops after the first epoch record and stays down: the trials still train to
    the end, then the sweep exits non-zero naming what MLflow lacks and where it is kept; with
    the server back, ``--resume`` delivers it all, once."""
    store, port = tmp_path / "store", free_port()
    store.mkdir()
    uri = f"http://127.0.0.1:{port}"
    spool = tmp_path / "ray_results" / "lost" / "mlflow_spool"
    server = _server(store, port)
    proc = _sweep(tmp_path, ray_local, cache, "lost", "--tracking-uri", uri, drain_s=5)
    try:
        _wait_for("first epoch record", lambda: _epochs_in_store(store / "mlflow.db") > 0, proc)
        stop_group(server)
        out = _finish(proc, tmp_path / "lost.log")
        assert proc.returncode != 0, out[-4000:]
        entries = _journal(spool / "journal.jsonl")
        ops = [e["op"] for e in entries]
        assert ops.count("finish") == TRIALS and "summary" in ops, ops
        assert f"MLflow at {uri} did not record {len(entries)} record(s)" in out, out[-4000:]
        assert str(spool) in out and "--resume" in out, out[-4000:]
        for trial in {e["trial"] for e in entries if e.get("trial")}:
            assert f"trial {trial}:" in out, (trial, out[-4000:])
        server = _server(store, port)
        proc = _sweep(tmp_path, ray_local, cache, "lost", "--tracking-uri", uri, "--resume")
        out = _finish(proc, tmp_path / "lost.log")
        assert proc.returncode == 0, out[-4000:]
        _check_sweep(uri, "lost", tmp_path)
        assert not spool.exists()
    finally:
        stop_group(proc)
        stop_group(server)


def test_sweeps_at_once_on_one_sqlite_store_and_folder(ray_local, cache, tmp_path):
    """Three drivers start together on a new ``sqlite:///mlflow.db`` and one ``ray_results``:
    sweeps ``one`` and ``two`` and ``one`` again. Both sweeps finish with every record, and
    the store's schema was migrated once (no ``_alembic_tmp_*`` debris); the second ``one``
    stops at once with a clear error, having written nothing (one parent run of that name,
    its runs those of the sweep that ran)."""
    procs = [_sweep(tmp_path, ray_local, cache, name, drain_s=600)
             for name in ("one", "two", "one")]
    try:
        for proc in procs:
            proc.wait(900)
    finally:
        for proc in procs:
            stop_group(proc)
    one, two = (tmp_path / "one.log").read_text(), (tmp_path / "two.log").read_text()
    assert procs[1].returncode == 0, two[-4000:]
    assert sorted(p.returncode != 0 for p in (procs[0], procs[2])) == [False, True], one[-4000:]
    assert "sweep one is already running in" in one, one[-4000:]
    assert one.count("sweep one: 2 trials") == 1 and "sweep two: 2 trials" in two
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for name in ("one", "two"):
        _check_sweep(uri, name, tmp_path)
    with sqlite3.connect(tmp_path / "mlflow.db") as con:  # no migration ran twice at once
        debris = con.execute("SELECT name FROM sqlite_master WHERE name LIKE '_alembic_tmp%'")
        assert debris.fetchall() == []
