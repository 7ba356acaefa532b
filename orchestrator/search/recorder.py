"""The sweep's MLflow writer: one Ray actor per sweep, on the driver's node.

Every trial process (a Tune trial, or rank 0 of a trial's Ray Train workers) sends its child
run's records to this actor instead of importing MLflow and opening the store itself: MLflow's
import and store set-up (1-3 s of CPU each on 2 cores) are paid once per sweep instead of once
per trial process, and the sqlite store has one writer. The actor opens (or reopens, on
``--resume``) the sweep's parent run when it starts, while Tune starts the trials, and writes the
sweep's summary at the end. Its module imports neither MLflow (the actor does, lazily) nor the
model registry (torch): trial processes import it for :class:`RemoteRun`.

No record is lost on a crash: a trial sends an epoch's records when the epoch ends and waits
for the actor's acknowledgement (:meth:`RemoteRun.flush`) before it reports the epoch to Tune or
Train, so every epoch Tune knows of, and every checkpoint a restored trial continues from, is in
MLflow; a loop that raises still flushes, then closes its run FAILED.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: A changed best.pt sent with an epoch: (file bytes, best epoch, flagged).
BestPayload = tuple[bytes, "int | None", bool]
#: The info keys an epoch's records need (the rest are local paths of the trial).
RECORD_INFO = ("epoch", "samples", "step_terms")


class Recorder:
    """The actor's body: the sweep's MLflow client, its parent run and the open child runs.

    Args:
        uri: the resolved tracking URI.
        experiment: ``fusion/<model>``.
        cwd: the driver's working directory (relative paths, e.g. a new sqlite store's
            ``./mlartifacts``, mean what they mean to the driver).
        parent: the parent run id, or a :func:`~orchestrator.search.record.parent_plan` to open.
    """

    def __init__(self, uri: str, experiment: str, cwd: str, parent: str | dict) -> None:
        from orchestrator.common import ensure_experiment, mlflow_client
        from orchestrator.search.record import open_parent_run

        os.chdir(cwd)
        self.uri, self.experiment = uri, experiment
        self.parent_id = parent if isinstance(parent, str) else open_parent_run(uri, parent)
        self.client = mlflow_client(uri)
        self.experiment_id = ensure_experiment(experiment, uri)
        self.runs: dict[str, Any] = {}

    def parent_run_id(self) -> str:
        return self.parent_id

    def open_child(self, trial_id: str, run_name: str, params: dict[str, str],
                   tags: dict[str, str]) -> tuple[str, int | None]:
        """(run id, epoch of the best.pt it holds) of the trial's child run, opened or found
        again (see :func:`orchestrator.common.tracking.open_child`)."""
        from orchestrator.common import open_child

        run = open_child(self.uri, self.experiment, self.parent_id, trial_id, run_name, params,
                         tags, self.client, self.experiment_id)
        self.runs[run.run_id] = run
        return run.run_id, run.best_epoch()

    def _run(self, run_id: str) -> Any:
        from orchestrator.common import MlflowRun

        if run_id not in self.runs:
            self.runs[run_id] = MlflowRun.reattach(self.uri, run_id, self.client)
        return self.runs[run_id]

    def log_epoch(self, run_id: str, metrics: dict[str, float], info: dict,
                  best: BestPayload | None) -> None:
        """One epoch's records (see :meth:`orchestrator.common.tracking.MlflowRun.log_epoch`)."""
        run = self._run(run_id)
        if best is None:
            run.log_epoch(metrics, info)
            return
        data, epoch, flagged = best
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "best.pt"
            path.write_bytes(data)
            run.log_epoch(metrics, info, (path, epoch, flagged))

    def finish(self, run_id: str, status: str, note: str) -> None:
        self._run(run_id).finish(status, note)
        self.runs.pop(run_id, None)

    def child_ids(self) -> dict[str, str]:
        from orchestrator.search.record import child_ids

        return child_ids(self.uri, self.parent_id)

    def write_summary(self, summary: dict[str, Any]) -> None:
        """:func:`orchestrator.search.record.write_summary` of a ``summarise`` result."""
        from orchestrator.search.record import write_summary

        write_summary(self.uri, self.parent_id, **summary)

    def close_parent(self, status: str, note: str) -> None:
        from orchestrator.search.record import close_parent

        close_parent(self.uri, self.parent_id, status, note)


def start_recorder(uri: str, experiment: str, parent: str | dict) -> Any:
    """A :class:`Recorder` actor (no CPU reserved) on this driver's node, so a sqlite store and
    the sweep's local files are the driver's; returns its handle at once (the actor starts and
    opens the parent run in the background; a failure there surfaces on the first call)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    actor = ray.remote(Recorder).options(
        num_cpus=0, max_restarts=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False))
    return actor.remote(uri, experiment, os.getcwd(), parent)


@contextmanager
def recording(uri: str, experiment: str, parent: str | dict) -> Iterator[Any]:
    """:func:`start_recorder` for the duration of a ``with`` block; the actor is ended after."""
    import ray

    recorder = start_recorder(uri, experiment, parent)
    try:
        yield recorder
    finally:
        ray.kill(recorder)


def ask(recorder: Any, method: str, *args: Any) -> Any:
    """Call ``method`` on the recorder actor and wait for its result."""
    import ray

    return ray.get(getattr(recorder, method).remote(*args))


class RemoteRun:
    """A trial's child run in the sweep's :class:`Recorder`, with the calls the trial uses of
    :class:`~orchestrator.common.tracking.MlflowRun`. Opening is sent at once and waited for at the
    first use, so the recorder's own start-up overlaps the trial's; an epoch's records are
    sent at once and acknowledged at :meth:`flush`."""

    def __init__(self, recorder: Any, trial_id: str, run_name: str, params: dict[str, str],
                 tags: dict[str, str]) -> None:
        self.recorder = recorder
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
        self._open()
        return self._run_id  # type: ignore[return-value]

    def best_epoch(self) -> int | None:
        self._open()
        return self._best_epoch

    def log_epoch(self, metrics: dict[str, float], info: dict,
                  best: tuple[str | Path, int | None, bool] | None = None) -> None:
        """Send one epoch's records (best.pt's bytes read now, before the loop rewrites it)."""
        payload = None
        if best is not None:
            path, epoch, flagged = best
            payload = (Path(path).read_bytes(), epoch, flagged)
        info = {k: info[k] for k in RECORD_INFO if info.get(k) is not None}
        self._pending.append(self.recorder.log_epoch.remote(self.run_id, metrics, info,
                                                            payload))

    def flush(self) -> None:
        """Wait until the recorder has written everything sent so far (raises its error)."""
        import ray

        pending, self._pending = self._pending, []
        ray.get(pending)

    def finish(self, status: str = "FINISHED", note: str = "") -> None:
        import ray

        self.flush()
        ray.get(self.recorder.finish.remote(self.run_id, status, note))
