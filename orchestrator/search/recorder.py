"""The sweep's MLflow writer: one Ray actor per sweep, on the driver's node.

Every trial process (a Tune trial, or rank 0 of a trial's Ray Train workers) sends its child
run's records to this actor instead of importing MLflow and opening the store itself: MLflow's
import and store set-up (1-3 s of CPU each on 2 cores) are paid once per sweep instead of once
per trial process, and the sqlite store has one writer per sweep. The actor opens (or reopens,
on ``--resume``) the sweep's parent run when it starts, while Tune starts the trials, and
writes the sweep's summary at the end. Its module imports neither MLflow (the actor does,
lazily) nor the model registry (torch): trial processes import it for :class:`RemoteRun`.

No record is lost, and no trial waits on MLflow: every record a trial sends (its child run's
opening, each epoch's metrics, step terms, sample grid and changed best.pt, its final status)
is first written to the sweep's spool on disk (:mod:`orchestrator.search.spool`), then
delivered to MLflow by the actor's delivery thread, oldest first. A trial waits for an epoch's
acknowledgement (:meth:`RemoteRun.flush`) before it reports the epoch to Tune or Train: while
MLflow is up the acknowledgement comes once the record is in MLflow; while it is down (server
stopped, ``database is locked``) as soon as the record is on disk, and the delivery thread
retries with capped backoff until MLflow is back. At the end of the sweep (its summary, or
``close_parent``) the actor waits up to ``FUSION_MLFLOW_DRAIN_S`` seconds for the rest; what is
still undelivered then raises :class:`~orchestrator.search.spool.RecordsUndelivered`, naming the
runs and records, and stays in the spool for the next recorder on it (``--resume``).

One sweep name runs once at a time in its storage folder (:func:`recording` locks
``<sweep folder>/.lock`` before anything is written).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from orchestrator.search.spool import (
    RecordsUndelivered,
    Spool,
    Unresolvable,
    lock_sweep,
    spool_folder,
    sweep_folder,
)

log = logging.getLogger(__name__)

#: A changed best.pt sent with an epoch: (file bytes, best epoch, flagged).
BestPayload = tuple[bytes, "int | None", bool]
#: The info keys an epoch's records need (the rest are local paths of the trial).
RECORD_INFO = ("epoch", "samples", "step_terms")
#: The run id a trial is given while MLflow has not created its child run yet.
PENDING = "pending:"
#: Environment read by the driver for the actor: how long (s) a trial waits for a record to
#: reach MLflow, and the end of a sweep for the spool to empty; MLflow's own HTTP retries and
#: timeout in the actor (short: the delivery thread retries, with backoff, instead).
SETTINGS = {"FUSION_MLFLOW_ACK_S": "60", "FUSION_MLFLOW_DRAIN_S": "120",
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


class Recorder:
    """The actor's body: the sweep's MLflow client, its parent run, its spool and delivery.

    Args:
        uri: the resolved tracking URI.
        experiment: ``fusion/<model>``.
        cwd: the driver's working directory (relative paths, e.g. a new sqlite store's
            ``./mlartifacts``, mean what they mean to the driver).
        parent: the parent run id, or a :func:`~orchestrator.search.record.parent_plan` to open.
        spool: the spool folder (default: :func:`spool_folder`).
        settings: :data:`SETTINGS` as the driver sees them.
    """

    def __init__(self, uri: str, experiment: str, cwd: str, parent: str | dict,
                 spool: str | None = None, settings: dict[str, str] | None = None) -> None:
        from orchestrator.search.spool import Deliverer

        os.chdir(cwd)
        settings = {**SETTINGS, **(settings or {})}
        for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
            os.environ[key] = settings[key]
        self.ack_s, self.drain_s = (float(settings[k]) for k in ("FUSION_MLFLOW_ACK_S",
                                                                 "FUSION_MLFLOW_DRAIN_S"))
        self.uri, self.experiment = uri, experiment
        self.parent_id, self.experiment_id, self.client = _with_retries(
            _open_store, self.drain_s, uri, experiment, parent)
        self.spool = Spool(spool or spool_folder(uri, parent, cwd))
        self.ids: dict[str, str] = {}  # child run id by trial id
        self.best_epochs: dict[str, int | None] = {}
        self.runs: dict[str, Any] = {}
        self.drain_deadline: float | None = None
        self.delivery = Deliverer(self.spool, self._apply)

    def parent_run_id(self) -> str:
        return self.parent_id

    def _add(self, entry: dict[str, Any], blobs: dict[str, bytes] | None = None) -> bool:
        """Spool a record, then wait (at most ``ack_s``) for MLflow; True when delivered."""
        seq = self.spool.add(entry, blobs)
        self.delivery.kick()
        return self.delivery.wait(seq, self.ack_s)

    def open_child(self, trial_id: str, run_name: str, params: dict[str, str],
                   tags: dict[str, str]) -> tuple[str, int | None]:
        """(run id, epoch of the best.pt it holds) of the trial's child run, opened or found
        again (see :func:`orchestrator.common.tracking.open_child`); while MLflow is down,
        (``pending:<trial_id>``, None): the run is opened when MLflow is back."""
        self._add({"op": "open", "trial": trial_id, "run_name": run_name, "params": params,
                   "tags": tags})
        if trial_id in self.ids:
            return self.ids[trial_id], self.best_epochs.get(trial_id)
        return PENDING + trial_id, None

    def log_epoch(self, trial_id: str, metrics: dict[str, float], info: dict,
                  best: BestPayload | None) -> None:
        """One epoch's records (see :meth:`orchestrator.common.tracking.MlflowRun.log_epoch`),
        stamped now (a retried delivery writes the same metric rows, which MLflow dedups)."""
        import numpy as np

        blobs: dict[str, bytes] = {}
        info = dict(info, timestamp_ms=int(time.time() * 1000))
        if info.get("samples") is not None:
            with tempfile.TemporaryFile() as fh:
                np.save(fh, np.asarray(info.pop("samples")))
                fh.seek(0)
                blobs["samples.npy"] = fh.read()
        entry: dict[str, Any] = {"op": "epoch", "trial": trial_id, "metrics": metrics,
                                 "info": info, "best": None}
        if best is not None:
            data, epoch, flagged = best
            blobs["best.pt"] = data
            entry["best"] = {"epoch": epoch, "flagged": flagged}
        self._add(entry, blobs)

    def finish(self, trial_id: str, status: str, note: str) -> None:
        """Close the trial's child run as ``status`` (with ``note`` as ``status_note``)."""
        self._add({"op": "finish", "trial": trial_id, "status": status, "note": note})

    def child_ids(self) -> dict[str, str]:
        """The sweep's child run ids by trial id, after waiting for the spool to empty (a
        child MLflow has not created yet: ``pending:<trial_id>``)."""
        from orchestrator.search.record import child_ids

        self._drain()
        ids = {t: PENDING + t for t in self._pending_trials()}
        try:
            ids.update(child_ids(self.uri, self.parent_id))
        except Exception as exc:  # noqa: BLE001 - MLflow down: what this recorder knows
            log.warning("child runs from this recorder only (MLflow: %s)", exc)
        return {**ids, **self.ids}

    def _pending_trials(self) -> set[str]:
        return {e["trial"] for e in list(self.spool.pending.values()) if e.get("trial")}

    def write_summary(self, summary: dict[str, Any]) -> None:
        """:func:`orchestrator.search.record.write_summary` of a ``summarise`` result, after
        every trial record (raises :class:`RecordsUndelivered` when MLflow did not take it)."""
        self._add({"op": "summary", "summary": summary})
        self.drain()

    def close_parent(self, status: str, note: str) -> None:
        """Close the parent run (raises :class:`RecordsUndelivered` like :meth:`drain`)."""
        self._add({"op": "close_parent", "status": status, "note": note})
        self.drain()

    def _drain(self) -> bool:
        if self.drain_deadline is None:
            self.drain_deadline = time.monotonic() + self.drain_s
        return self.delivery.drain(self.drain_deadline - time.monotonic())

    def drain(self) -> None:
        """Wait (``FUSION_MLFLOW_DRAIN_S`` in all) until MLflow has every record; raise
        :class:`RecordsUndelivered` naming what it has not (kept in the spool)."""
        from orchestrator.search.spool import describe

        if self._drain() and not self.delivery.failed:
            return
        pending = self.spool.pending
        raise RecordsUndelivered(
            f"MLflow at {self.uri} did not record {len(pending)} record(s) of sweep run "
            f"{self.parent_id} ({len(self._pending_trials())} trial run(s)): "
            f"{describe(self.spool, self.delivery.failed)}. Last error: "
            f"{self.delivery.outage or 'none'}. They are kept in {self.spool.folder}; "
            "`orchestrator sweep ... --resume --name <sweep>` delivers them once MLflow is back.")

    def _apply(self, entry: dict[str, Any]) -> None:
        """Write one spooled record to MLflow (the delivery thread)."""
        op = entry["op"]
        if op == "open":
            self._apply_open(entry)
        elif op == "epoch":
            self._apply_epoch(entry)
        elif op == "finish":
            self._run(entry["trial"]).finish(entry["status"], entry["note"])
        elif op == "summary":
            self._apply_summary(entry["summary"])
        elif op == "close_parent":
            from orchestrator.search.record import close_parent

            close_parent(self.uri, self.parent_id, entry["status"], entry["note"])

    def _apply_open(self, entry: dict[str, Any]) -> None:
        from orchestrator.common import open_child

        trial = entry["trial"]
        run = open_child(self.uri, self.experiment, self.parent_id, trial, entry["run_name"],
                         entry["params"], entry["tags"], self.client, self.experiment_id)
        self.runs[trial], self.ids[trial] = run, run.run_id
        self.best_epochs[trial] = run.best_epoch()

    def _run(self, trial: str) -> Any:
        """The trial's open child run (found by its ``trial_id`` tag after a restart)."""
        from orchestrator.common.tracking import MlflowRun, find_child_run

        if trial not in self.runs:
            run_id = find_child_run(self.uri, self.parent_id, trial, self.client,
                                    self.experiment_id)
            if run_id is None:
                raise Unresolvable(f"no child run of {self.parent_id} for trial {trial}")
            self.runs[trial] = MlflowRun.reattach(self.uri, run_id, self.client)
            self.ids[trial] = run_id
        return self.runs[trial]

    def _apply_epoch(self, entry: dict[str, Any]) -> None:
        import numpy as np

        run, info = self._run(entry["trial"]), dict(entry["info"])
        samples = self.spool.blob(entry, "samples.npy")
        if samples is not None:
            info["samples"] = np.load(samples)
        best = entry["best"]
        if best is None:
            run.log_epoch(entry["metrics"], info)
            return
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "best.pt"
            path.write_bytes(self.spool.blob(entry, "best.pt").read_bytes())
            run.log_epoch(entry["metrics"], info, (path, best["epoch"], best["flagged"]))

    def _apply_summary(self, summary: dict[str, Any]) -> None:
        """:func:`~orchestrator.search.record.write_summary`, with the run ids of children
        created since the summary was made in place of their ``pending:`` ids."""
        from orchestrator.search.record import write_summary

        def real(run_id: str) -> str:
            if run_id.startswith(PENDING):
                return self._run(run_id[len(PENDING):]).run_id
            return run_id

        rows = [{**r, "run_id": real(str(r.get("run_id", "")))} for r in summary["rows"]]
        best = summary["best"]
        best = (real(best[0]), best[1], best[2]) if best else None
        write_summary(self.uri, self.parent_id, rows, summary["sens"],
                      Path(summary["table"]), summary["summary"], best)


def _open_store(uri: str, experiment: str, parent: str | dict) -> tuple[str, str, Any]:
    """(parent run id, experiment id, client): the parent run opened (a plan) or taken."""
    from orchestrator.common import ensure_experiment, mlflow_client
    from orchestrator.search.record import open_parent_run

    parent_id = parent if isinstance(parent, str) else open_parent_run(uri, parent)
    return parent_id, ensure_experiment(experiment, uri), mlflow_client(uri)


def _with_retries(fn: Any, budget_s: float, uri: str, experiment: str,
                  parent: str | dict) -> Any:
    """``fn(uri, experiment, parent)`` retried with capped backoff for ``budget_s`` s (a new
    sqlite store that another sweep is creating at the same moment says "database is
    locked" or "table ... already exists" until its migrations are done). A retried plan
    looks for the parent run a failed try may have created before creating one."""
    deadline, delay = time.monotonic() + budget_s, 0.5
    while True:
        try:
            return fn(uri, experiment, parent)
        except Exception as exc:  # noqa: BLE001 - retried within the budget, then raised
            if time.monotonic() + delay > deadline:
                raise
            log.warning("MLflow not ready (%s); retrying in %.1f s", exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
            if isinstance(parent, dict):
                parent = {**parent, "resume": True}


def start_recorder(uri: str, experiment: str, parent: str | dict) -> Any:
    """A :class:`Recorder` actor (no CPU reserved) on this driver's node, so a sqlite store and
    the sweep's local files are the driver's; returns its handle at once (the actor starts and
    opens the parent run in the background; a failure there surfaces on the first call).
    Threaded: a trial waiting for its record never holds up another trial's call."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    settings = {k: os.environ.get(k, v) for k, v in SETTINGS.items()}
    actor = ray.remote(Recorder).options(
        num_cpus=0, max_restarts=0, max_concurrency=64,
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False))
    spool = str(spool_folder(uri, parent, os.getcwd()))
    return actor.remote(uri, experiment, os.getcwd(), parent, spool, settings)


@contextmanager
def recording(uri: str, experiment: str, parent: str | dict) -> Iterator[Any]:
    """:func:`start_recorder` for the duration of a ``with`` block. A sweep (``parent`` a
    plan) is locked first (``SweepBusy`` before anything is written while another driver
    runs it). At the end the records still on their way are waited for (an undelivered one
    raises :class:`RecordsUndelivered` unless the block already raised), then the actor ends."""
    import ray

    fd = lock_sweep(sweep_folder(parent)) if isinstance(parent, dict) else None
    try:
        recorder = start_recorder(uri, experiment, parent)
        try:
            yield recorder
            ask(recorder, "drain")
        except RecordsUndelivered:
            raise
        except BaseException:
            try:
                ask(recorder, "drain")
            except Exception as exc:  # noqa: BLE001 - the block's own error is the one raised
                log.error("%s", exc)
            raise
        finally:
            ray.kill(recorder)
    finally:
        if fd is not None:
            os.close(fd)


def ask(recorder: Any, method: str, *args: Any) -> Any:
    """Call ``method`` on the recorder actor and wait for its result (its
    :class:`RecordsUndelivered` raised as it is, without Ray's wrapping)."""
    import ray

    try:
        return ray.get(getattr(recorder, method).remote(*args))
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, RecordsUndelivered):
            raise RecordsUndelivered(str(exc.cause)) from None
        raise


class RemoteRun:
    """A trial's child run in the sweep's :class:`Recorder`, with the calls the trial uses of
    :class:`~orchestrator.common.tracking.MlflowRun`. Opening is sent at once and waited for at the
    first use, so the recorder's own start-up overlaps the trial's; an epoch's records are
    sent at once and acknowledged at :meth:`flush` (in MLflow, or on the sweep's spool while
    MLflow is down)."""

    def __init__(self, recorder: Any, trial_id: str, run_name: str, params: dict[str, str],
                 tags: dict[str, str]) -> None:
        self.recorder, self.trial_id = recorder, trial_id
        self._opened = recorder.open_child.remote(trial_id, run_name, params, tags)
        self._run_id: str | None = None
        self._best_epoch: int | None = None
        self._pending: list = []

    def _open(self) -> None:
        import ray

        if self._run_id is None:
            self._run_id, self._best_epoch = ray.get(self._opened)

    @property
    def run_id(self) -> str:
        """The child run's id (``pending:<trial_id>`` while MLflow has not created it)."""
        self._open()
        return self._run_id  # type: ignore[return-value]

    def best_epoch(self) -> int | None:
        self._open()
        return self._best_epoch

    def log_epoch(self, metrics: dict[str, float], info: dict,
                  best: tuple[str | Path, int | None, bool] | None = None) -> None:
        """Send one epoch's records (best.pt's bytes read now, before the loop rewrites it)."""
        self._open()  # the opening is spooled before any epoch of the run
        payload = None
        if best is not None:
            path, epoch, flagged = best
            payload = (Path(path).read_bytes(), epoch, flagged)
        info = {k: info[k] for k in RECORD_INFO if info.get(k) is not None}
        self._pending.append(self.recorder.log_epoch.remote(self.trial_id, metrics, info,
                                                            payload))

    def flush(self) -> None:
        """Wait until the recorder holds everything sent so far (raises its error)."""
        import ray

        pending, self._pending = self._pending, []
        ray.get(pending)

    def finish(self, status: str = "FINISHED", note: str = "") -> None:
        import ray

        self.flush()
        ray.get(self.recorder.finish.remote(self.trial_id, status, note))
