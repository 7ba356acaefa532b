"""Fault injection on the sweep driver: real `orchestrator sweep` processes on the session's
Ray (`--address`), real Optuna and MLflow sqlite stores, killed (SIGKILL of the process group)
at named failpoints (orchestrator/common/failpoints.py) and at seeded random times, or stopped
with SIGINT; `--resume` must then finish the sweep with every trial recorded once and the
three records (Optuna study, Tune's trials.csv, MLflow) in agreement."""

from __future__ import annotations

import csv
import math
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]
TRIALS = 2
WAIT_S = 420  # generous: other test runs share these 2 cores
#: Optuna's seed: both trials draw ``channels: 8``, the space's cheapest PMGI (seed 0 draws
#: 32 first: ~5x the training time). Any seed proves the same; this one costs least.
SEED = 12

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    """Generated data and patch stores shared by this module's sweeps, and the final
    evaluation's test set: one generated pair of the test split's photos (the default, the
    whole generated test split, is 8 pairs: ~4x the evaluation time, the same records)."""
    from fusion_models.data.synthetic import generated_set

    root = tmp_path_factory.mktemp("faults-cache")
    generated_set("ivif:test", root / "test-set", n=1).root.rename(root / "test-set" / "one")
    return str(root)


def _cmd(address: str, cache: str, name: str, *extra: str, top_k: int = 0) -> list[str]:
    """The smallest real sweep: 2 trials x 2 epochs of 6 steps, one trial at a time; the
    final evaluation (Ray Data, of the module's one-pair test set) only where a case needs it
    (``top_k``)."""
    test_set = f"[{Path(cache) / 'test-set' / 'one'}]"
    return [sys.executable, "-m", "orchestrator.cli", "sweep",
            str(REPO / "search_spaces" / "pmgi.yaml"), "--smoke", "--num-samples", str(TRIALS),
            "--set", "fixed.epochs=2", "--set", "tune.max_concurrent=1",
            "--set", f"tune.seed={SEED}", "--set", f"tune.final_eval_top_k={top_k}",
            *(("--set", f"tune.test_data={test_set}") if top_k else ()), "--name", name,
            "--address", address, "--cache-dir", cache, "--quiet", *extra]


def _start(cmd: list[str], cwd: Path, point: str = "", tag: str = "run") -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUSION_FAILPOINT")}
    if point:
        env.update(FUSION_FAILPOINT=point, FUSION_FAILPOINT_DIR=str(cwd / "markers"))
    out = (cwd / f"{tag}.log").open("w")
    return subprocess.Popen(cmd, cwd=cwd, env=env, start_new_session=True, stdout=out,
                            stderr=subprocess.STDOUT)


def _log(cwd: Path, tag: str) -> str:
    return (cwd / f"{tag}.log").read_text()[-4000:]


def _running(pid: int) -> bool:
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def _job_actors(jobs: set[str]) -> dict[str, dict]:
    from ray._private import state

    return {i: a for i, a in state.actors().items()
            if str(a["JobID"]) in jobs and not a["IsDetached"]}


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the driver's process group, then wait until Ray has ended the actors of its
    job (the recorder, the trials; not Ray Data's detached stats actor): a killed driver's
    actors outlive it for a moment. Every actor not already dead counts, the ones still
    being created too (the recorder creates a new MLflow store while the first trial
    starts): each must be DEAD for Ray and its process gone."""
    from ray._private import state

    jobs = {str(j["JobID"]) for j in state.state.job_table() if j["DriverPid"] == proc.pid}
    assert jobs, "the driver had joined the cluster"
    ended = {i for i, a in _job_actors(jobs).items() if a["State"] == "DEAD"}
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 120
    while any(a["State"] != "DEAD" or (a["Pid"] and _running(a["Pid"]))
              for i, a in _job_actors(jobs).items() if i not in ended):
        assert time.monotonic() < deadline, "the killed driver's actors live on"
        time.sleep(0.2)


def _kill_at(proc: subprocess.Popen, cwd: Path, point: str, tag: str) -> None:
    """Wait until a process of the sweep blocks at ``point`` (its marker), then SIGKILL the
    driver's process group."""
    marker = cwd / "markers" / f"{point.partition('@')[0]}.hit"
    deadline = time.monotonic() + WAIT_S
    while not marker.exists():
        assert proc.poll() is None, f"driver ended before {point}:\n{_log(cwd, tag)}"
        assert time.monotonic() < deadline, f"{point} not reached:\n{_log(cwd, tag)}"
        time.sleep(0.2)
    _kill(proc)
    marker.unlink()


def _kill_later(proc: subprocess.Popen, cwd: Path, delay: float) -> bool:
    """SIGKILL the driver ``delay`` s after its parent run exists; whether it was running."""
    deadline = time.monotonic() + WAIT_S
    while not list((cwd / "ray_results").glob("*/optuna.db")) and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        _kill(proc)
        return True


def _client(cwd: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")


def _parent(cwd: Path, name: str):
    client = _client(cwd)
    exp = client.get_experiment_by_name("fusion/pmgi")
    parents = client.search_runs([exp.experiment_id], f"tags.sweep_name = '{name}'") if exp \
        else []
    assert len(parents) <= 1, "one parent run per sweep"
    return parents[0] if parents else None


def _children(cwd: Path, name: str) -> list:
    parent = _parent(cwd, name)
    if parent is None:
        return []
    return _client(cwd).search_runs([parent.info.experiment_id],
                                    f"tags.mlflow.parentRunId = '{parent.info.run_id}'")


def _finished(cwd: Path, name: str) -> dict[str, str]:
    """Child run id by trial id of the trials MLflow records as done ({} while the store's
    creation was cut short by the kill: `--resume` finishes its migration)."""
    try:
        runs = _children(cwd, name)
    except MlflowException as exc:
        assert "out-of-date database schema" in str(exc)
        return {}
    ids = [r.data.tags["trial_id"] for r in runs]
    assert len(ids) == len(set(ids)), f"duplicated child runs: {sorted(ids)}"
    return {r.data.tags["trial_id"]: r.info.run_id for r in runs
            if r.info.status in ("FINISHED", "FAILED")}


def _same(a: float, b: float) -> bool:
    return math.isclose(float(a), float(b), rel_tol=1e-9)


def _check_consistent(cwd: Path, name: str, done_before: dict[str, str], top_k: int = 0
                      ) -> None:
    """The finished sweep: parent FINISHED; one child per Tune trial, none RUNNING; every
    trial done before a kill kept (same run); Optuna, trials.csv and MLflow agree."""
    client = _client(cwd)
    parent = _parent(cwd, name)
    assert parent is not None and parent.info.status == "FINISHED", parent
    children = {r.data.tags["trial_id"]: r for r in _children(cwd, name)}
    assert len(children) == len(_children(cwd, name)), "duplicated child runs"
    rows = list(csv.DictReader((cwd / "ray_results" / name / "trials.csv").open()))
    assert len(rows) == TRIALS and set(children) == {r["trial_id"] for r in rows}, \
        (rows, sorted(children))
    for trial_id, run_id in done_before.items():
        assert children[trial_id].info.run_id == run_id, f"completed trial {trial_id} lost"
    study = optuna.load_study(study_name=name,
                              storage=f"sqlite:///{cwd / 'ray_results' / name / 'optuna.db'}")
    assert len(study.trials) == TRIALS, [(t.number, t.state.name) for t in study.trials]
    unmatched = list(study.trials)
    for row in rows:
        run = children[row["trial_id"]]
        want = {"error": "FAILED"}.get(row["status"], "FINISHED")
        assert row["run_id"] == run.info.run_id and run.info.status == want, (row, run.info)
        assert client.get_run(run.info.run_id).info.status == want
        params = {k[6:]: v for k, v in row.items() if k.startswith("param.")}
        match = [t for t in unmatched if t.params.keys() == params.keys() and all(
            _same(t.params[k], v) if isinstance(t.params[k], float) else
            str(t.params[k]) == v for k, v in params.items())]
        assert len(match) == 1, (row, [t.params for t in unmatched])
        unmatched.remove(match[0])
        assert match[0].state.name == ("FAIL" if row["status"] == "error" else "COMPLETE")
    if top_k:
        evals = list(csv.DictReader((cwd / "ray_results" / name / "final_eval.csv").open()))
        assert len(evals) == top_k and evals[0]["run_id"] in {r["run_id"] for r in rows}


def _resume(address: str, cache: str, cwd: Path, name: str, tag: str, top_k: int = 0) -> None:
    proc = _start(_cmd(address, cache, name, "--resume", top_k=top_k), cwd, tag=tag)
    assert proc.wait(timeout=900) == 0, _log(cwd, tag)
    assert f"sweep {name}: {TRIALS} trials" in _log(cwd, tag)


#: Each case is one sweep killed at these points in turn (the first run, then each
#: `--resume`), then resumed once more unarmed, which must finish it consistently. One chain
#: of every point: each kill is still at its point, and each resume also gets the sweep past
#: the state the kill before left (a chain per group would train the trials twice more).
CHAINS = {
    "trial_start+mid_epoch+checkpoint_write+trial_result+trial_complete+summary_start"
    "+summary+final_eval": [
        "trial_start", "mid_epoch@3", "checkpoint_write", "trial_result", "trial_complete",
        "summary_start", "summary", "final_eval"],
}


@pytest.mark.parametrize("points", list(CHAINS.values()), ids=list(CHAINS))
def test_driver_killed_at_failpoints_then_resume(points, ray_local, cache, tmp_path):
    address = ray_local.get_runtime_context().gcs_address
    name, top_k = "fp", int("final_eval" in points)
    done: dict[str, str] = {}
    for i, point in enumerate(points):
        tag = f"kill{i}-{point}"
        extra = ("--resume",) if i else ()
        proc = _start(_cmd(address, cache, name, *extra, top_k=top_k), tmp_path, point, tag)
        _kill_at(proc, tmp_path, point, tag)
        now = _finished(tmp_path, name)  # no duplicate so far, nothing done is undone
        assert all(now.get(t) == r for t, r in done.items()), (point, done, now)
        done = now
    _resume(address, cache, tmp_path, name, "final", top_k)
    _check_consistent(tmp_path, name, done, top_k)


@pytest.mark.parametrize("seed", [7], ids=lambda s: f"random-seed{s}")
def test_driver_killed_at_seeded_random_times_then_resume(seed, ray_local, cache, tmp_path):
    """Two kills at times drawn from random.Random(seed), anywhere in the sweep (the second
    counted from the resumed driver's start): 2-20 s, the span the sweep runs (trials, summary,
    final evaluation: ~20 s here, longer on a loaded machine)."""
    address = ray_local.get_runtime_context().gcs_address
    rng = random.Random(seed)
    name = "rnd"
    done: dict[str, str] = {}
    for i in range(2):
        tag = f"kill{i}"
        proc = _start(_cmd(address, cache, name, *(("--resume",) if i else ()), top_k=1),
                      tmp_path, tag=tag)
        if not _kill_later(proc, tmp_path, rng.uniform(2.0, 20.0)):
            assert proc.returncode == 0, _log(tmp_path, tag)
            break
        now = _finished(tmp_path, name)
        assert all(now.get(t) == r for t, r in done.items()), (done, now)
        done = now
    _resume(address, cache, tmp_path, name, "final", top_k=1)
    _check_consistent(tmp_path, name, done, top_k=1)


def test_sigint_stops_cleanly_and_says_how_to_resume(ray_local, cache, tmp_path):
    """Ctrl-C after the first epoch: rc 130, exactly one stderr line with the resume command,
    no child run left RUNNING, parent KILLED; that exact command then finishes the sweep."""
    address = ray_local.get_runtime_context().gcs_address
    name = "ctrlc"
    with (tmp_path / "out.log").open("w") as out, (tmp_path / "err.log").open("w") as err:
        proc = subprocess.Popen(_cmd(address, cache, name), cwd=tmp_path, stdout=out,
                                stderr=err, start_new_session=True)
    deadline = time.monotonic() + WAIT_S
    while not list((tmp_path / "ray_results" / name).glob("*/checkpoint_000000")):
        assert proc.poll() is None and time.monotonic() < deadline, \
            (tmp_path / "err.log").read_text()[-6000:]
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
    proc.wait(timeout=WAIT_S)
    err = (tmp_path / "err.log").read_text()
    assert proc.returncode == 130, (proc.returncode, err[-4000:])
    hints = [line for line in err.splitlines() if "--resume" in line or "restore" in line]
    assert len(hints) == 1 and f"--resume --name {name}" in hints[0], err[-4000:]
    assert _parent(tmp_path, name).info.status == "KILLED"
    children = _children(tmp_path, name)
    assert children and "RUNNING" not in {c.info.status for c in children}
    done = _finished(tmp_path, name)
    resume = shlex.split(hints[0].split("Resume with: ", 1)[1])
    assert resume[:2] == ["orchestrator", "sweep"]
    res = subprocess.run([sys.executable, "-m", "orchestrator.cli", *resume[1:]], cwd=tmp_path,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    _check_consistent(tmp_path, name, done)
