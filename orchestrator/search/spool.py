"""The sweep recorder's durable outbox: every MLflow record is on disk before it is acknowledged.

:class:`Spool` is an append-only journal (``journal.jsonl``, one fsynced JSON line per record,
large payloads such as best.pt and the sample grid as files under ``blobs/``) plus a list of
the records MLflow has taken (``delivered.txt``). A record stays in the spool until MLflow has
it; when nothing is left the folder is removed, so a spool folder on disk always means
"records MLflow does not have yet". A recorder started later on the same folder (``--resume``
of the sweep) delivers what an earlier one could not.

:class:`Deliverer` is the one thread that writes the spool's records to MLflow, oldest first:
a transient failure (server down, HTTP 5xx, sqlite ``database is locked``) marks an outage and
is retried with capped exponential backoff, so callers waiting for a record are released at
once and the trials keep training; a permanent one (MLflow rejects the record) is set aside,
kept in the spool and reported, and the queue goes on.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: MLflow error codes that a retry cannot fix (the record itself is refused).
PERMANENT_CODES = frozenset({"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST",
                             "BAD_REQUEST", "INVALID_STATE", "PERMISSION_DENIED",
                             "UNAUTHENTICATED"})


class RecordsUndelivered(RuntimeError):
    """MLflow did not take every record of a sweep; they are kept in the spool folder."""


class SweepBusy(RuntimeError):
    """Another driver is running this sweep (same name, same storage folder)."""


class Unresolvable(RuntimeError):
    """A record names a trial whose child run does not exist (its opening was refused)."""


def _jsonable(value: Any) -> Any:
    """json.dumps fallback: numpy scalars, paths and tuples as plain JSON values."""
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _fsync_write(path: Path, data: bytes, mode: str = "wb") -> None:
    with open(path, mode) as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


class Spool:
    """The journal of one sweep's records in ``folder`` (created on the first record)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.lock = threading.Lock()
        self.pending: dict[int, dict[str, Any]] = {}
        done: set[int] = set()
        if (self.folder / "delivered.txt").exists():
            done = {int(s) for s in (self.folder / "delivered.txt").read_text().split()}
        for line in self._journal_lines():
            if line["seq"] not in done:
                self.pending[line["seq"]] = line
        self.next_seq = max([*self.pending, *done], default=-1) + 1
        if self.pending:
            log.warning("%d MLflow record(s) left undelivered by an earlier run are in %s; "
                        "delivering them now", len(self.pending), self.folder)

    def _journal_lines(self) -> list[dict[str, Any]]:
        path = self.folder / "journal.jsonl"
        if not path.exists():
            return []
        lines = []
        for raw in path.read_text().splitlines():
            try:
                lines.append(json.loads(raw))
            except json.JSONDecodeError:  # a line torn by a crash was never acknowledged
                log.warning("skipping a torn line in %s", path)
        return lines

    def add(self, entry: dict[str, Any], blobs: dict[str, bytes] | None = None) -> int:
        """Write ``entry`` (plain JSON data) and its ``blobs`` durably; its sequence number."""
        with self.lock:
            seq = self.next_seq
            self.next_seq += 1
            (self.folder / "blobs").mkdir(parents=True, exist_ok=True)
            names = {}
            for name, data in (blobs or {}).items():
                names[name] = f"{seq}-{name}"
                _fsync_write(self.folder / "blobs" / names[name], data)
            entry = {**entry, "seq": seq, "blobs": names}
            line = json.dumps(entry, default=_jsonable) + "\n"
            _fsync_write(self.folder / "journal.jsonl", line.encode(), "ab")
            self.pending[seq] = entry
            return seq

    def blob(self, entry: dict[str, Any], name: str) -> Path | None:
        """The file of one of ``entry``'s blobs (None if it has none of that name)."""
        stored = entry.get("blobs", {}).get(name)
        return self.folder / "blobs" / stored if stored else None

    def delivered(self, seq: int) -> None:
        """MLflow has record ``seq``: forget it (the whole folder once nothing is left)."""
        with self.lock:
            entry = self.pending.pop(seq, None)
            if not self.pending:
                shutil.rmtree(self.folder, ignore_errors=True)
                return
            with open(self.folder / "delivered.txt", "a") as fh:
                fh.write(f"{seq}\n")
            for stored in (entry or {}).get("blobs", {}).values():
                (self.folder / "blobs" / stored).unlink(missing_ok=True)

    def oldest(self, skip: set[int] | frozenset[int] = frozenset()) -> dict[str, Any] | None:
        """The oldest undelivered record not in ``skip``."""
        with self.lock:
            return next((e for s, e in self.pending.items() if s not in skip), None)


class Deliverer:
    """Writes a :class:`Spool`'s records to MLflow on one daemon thread, oldest first.

    Args:
        spool: the records.
        apply: writes one record to MLflow (raises on failure).
        backoff: (first, longest) wait in seconds between tries of a failing record.
    """

    def __init__(self, spool: Spool, apply: Callable[[dict[str, Any]], None],
                 backoff: tuple[float, float] = (0.5, 15.0)) -> None:
        self.spool, self.apply, self.backoff = spool, apply, backoff
        self.cv = threading.Condition()
        self.outage: str | None = None  # the error of the record being retried, if any
        self.failed: dict[int, str] = {}  # refused records (kept in the spool)
        self.retry_now = threading.Event()
        threading.Thread(target=self._loop, name="mlflow-delivery", daemon=True).start()

    def kick(self) -> None:
        """A record was added: wake the thread."""
        with self.cv:
            self.cv.notify_all()

    def _next(self) -> dict[str, Any] | None:
        with self.cv:
            while (entry := self.spool.oldest(set(self.failed))) is None:
                self.cv.wait()
            return entry

    def _loop(self) -> None:
        delay = self.backoff[0]
        while True:
            entry = self._next()
            try:
                self.apply(entry)
            except Exception as exc:  # noqa: BLE001 - every failure is kept and reported
                if _permanent(exc):
                    log.error("MLflow refused record %s (%s): %s", entry["seq"], entry["op"], exc)
                    with self.cv:
                        self.failed[entry["seq"]] = f"{type(exc).__name__}: {exc}"[:500]
                        self.cv.notify_all()
                    continue
                with self.cv:
                    if self.outage is None:
                        log.warning("MLflow unavailable, records kept in %s and retried: %s",
                                    self.spool.folder, exc)
                    self.outage = f"{type(exc).__name__}: {exc}"[:500]
                    self.cv.notify_all()
                self.retry_now.wait(delay)
                self.retry_now.clear()
                delay = min(delay * 2, self.backoff[1])
                continue
            self.spool.delivered(entry["seq"])
            delay = self.backoff[0]
            with self.cv:
                if self.outage is not None:
                    log.warning("MLflow is back; delivering the kept records")
                self.outage = None
                self.cv.notify_all()

    def wait(self, seq: int, timeout: float) -> bool:
        """Wait until record ``seq`` is delivered, refused, or MLflow is in an outage (the
        record is on disk either way); True when it is in MLflow."""
        with self.cv:
            self.cv.wait_for(lambda: seq not in self.spool.pending or seq in self.failed
                             or self.outage is not None, timeout)
            return seq not in self.spool.pending

    def drain(self, timeout: float) -> bool:
        """Retry at once and wait up to ``timeout`` s until every record is delivered or
        refused; True when nothing is left to try."""
        self.retry_now.set()
        with self.cv:
            return self.cv.wait_for(lambda: self.spool.oldest(set(self.failed)) is None,
                                    max(timeout, 0.0))


def _permanent(exc: Exception) -> bool:
    """Whether retrying ``exc``'s record cannot help: MLflow refused the record itself, or
    the error is none of MLflow's, the network's or the database's (a bug: retrying it
    would only hide it until the end of the sweep)."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        return exc.error_code in PERMANENT_CODES
    return not (isinstance(exc, OSError) or type(exc).__module__.startswith("sqlalchemy"))


def describe(spool: Spool, failed: dict[int, str]) -> str:
    """What the spool still holds, per trial: e.g. ``trial t1: open, 2 epoch(s), finish``."""
    per: dict[str, dict[str, int]] = {}
    with spool.lock:
        entries = list(spool.pending.values())
    for entry in entries:
        who = f"trial {entry['trial']}" if entry.get("trial") else "sweep run"
        per.setdefault(who, {}).setdefault(entry["op"], 0)
        per[who][entry["op"]] += 1
    parts = [f"{who}: " + ", ".join(f"{n} {op}" for op, n in ops.items())
             for who, ops in sorted(per.items())]
    refused = [f"record {s} refused: {why}" for s, why in sorted(failed.items())]
    return "; ".join(parts + refused)


def sweep_folder(plan: dict[str, Any]) -> Path:
    """The sweep's local folder (``<local sweep root>/<name>``) of a parent plan."""
    import yaml

    from orchestrator.search.sweep import storage_paths

    _, root = storage_paths(yaml.safe_load(plan["yaml"])["storage"])
    return root / plan["name"]


def spool_folder(uri: str, parent: str | dict, cwd: str) -> Path:
    """Where a recorder keeps the records MLflow has not taken yet: the sweep's folder for a
    sweep (a plan), else beside a sqlite store, else ``<cwd>/mlflow_spool``, per parent run."""
    if isinstance(parent, dict):
        return sweep_folder(parent) / "mlflow_spool"
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).parent / "mlflow_spool" / parent
    return Path(cwd) / "mlflow_spool" / parent


def lock_sweep(folder: Path) -> int:
    """Hold ``<folder>/.lock`` for this process (released when it is closed or the process
    dies); :class:`SweepBusy` when another process holds it. Returns the file descriptor."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = Path(folder / ".lock").read_text().strip() or "another process"
        os.close(fd)
        raise SweepBusy(f"sweep {folder.name} is already running in {folder.parent} "
                        f"({holder}); give this one another --name, or wait for it "
                        "(--resume continues it once it has stopped)") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {os.uname().nodename}".encode())
    return fd
