"""Scoring on the CPU in forked, single-threaded worker processes (``orchestrator eval``).

The metrics run as many small tensor operations (cache-sized strips of each image), which two
OpenMP threads share poorly: on 2 cores the 12 CDD metrics of the 25 TNO pairs took 0.98-1.01 s
with 2 threads in one process and 0.84-0.87 s as 2 single-threaded processes each scoring half
of the pairs; next to other busy processes the threaded run took 17-29 s (spinning OpenMP
threads lose their time slices) and the processes 1.1-2.9 s. So on the CPU the batches are
shared out by pixel count between :func:`eval_workers` processes forked after the images are
read (nothing is copied or pickled on the way in; the results, a few numbers per pair, come
back through a pipe), and each process uses one thread. The values are the same: every
metric is computed per image.

A worker that dies (killed, out of memory) is not fatal: its share is scored in this process
(logged as a warning). An error a worker raises (e.g. a metric that cannot measure an image's
size) is raised here, as in a single process.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from orchestrator.evaluation.local import EvalSettings, Loaded, PairResult

log = logging.getLogger(__name__)

Batch = list["Loaded"]
Score = Callable[["Sequence[Loaded]", "EvalSettings"], "list[PairResult]"]


def eval_workers(settings: EvalSettings, pairs: int) -> int:
    """Worker processes for scoring: one per CPU thread torch would use (``OMP_NUM_THREADS``
    or the cores), at most one per pair; 1 (score here) off the CPU or without ``fork``."""
    if settings.device != "cpu" or "fork" not in mp.get_all_start_methods() or _in_ray():
        return 1
    return max(1, min(torch.get_num_threads(), pairs))


def _in_ray() -> bool:
    """A Ray driver or worker (its threads and connections are not to be forked)."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def _pixels(batch: Sequence[Loaded]) -> int:
    return sum(x.a.shape[-1] * x.a.shape[-2] for x in batch)


def share_out(batches: Sequence[Batch], workers: int) -> list[list[Batch]]:
    """``workers`` lists of batches with about equal pixel counts (largest first, each to the
    least loaded); batches over a worker's fair share are split into halves first."""
    fair = sum(_pixels(b) for b in batches) / workers
    units, todo = [], list(batches)
    while todo:
        b = todo.pop()
        if len(b) > 1 and _pixels(b) > fair / 2:
            todo += [b[: len(b) // 2], b[len(b) // 2 :]]
        else:
            units.append(b)
    shares: list[list[Batch]] = [[] for _ in range(workers)]
    load = [0] * workers
    for unit in sorted(units, key=_pixels, reverse=True):
        i = load.index(min(load))
        shares[i].append(unit)
        load[i] += _pixels(unit)
    return [s for s in shares if s]


@contextmanager
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _work(conn: Connection, share: list[Batch], settings: EvalSettings, score: Score) -> None:
    """A forked worker: score ``share`` single-threaded and send ("ok", results) or
    ("error", exception) back."""
    torch.set_num_threads(1)
    try:
        message: tuple = ("ok", [r for batch in share for r in score(batch, settings)])
    except KeyboardInterrupt:  # Ctrl-C reached the whole process group: the parent reports it
        return
    except Exception as exc:  # noqa: BLE001 - raised again in the parent
        message = ("error", exc)
    try:
        conn.send(message)
    except Exception as exc:  # noqa: BLE001 - an unpicklable exception: send its text
        conn.send(("error", RuntimeError(f"{type(exc).__name__}: {exc}")))
    conn.close()


def _start(share: list[Batch], settings: EvalSettings, score: Score):
    ctx = mp.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_work, args=(send, share, settings, score), daemon=True)
    with warnings.catch_warnings():  # Python 3.12+ warns on every fork of a threaded process
        # (OpenMP threads count); the child scores on one thread, and Ray processes never fork
        warnings.filterwarnings("ignore", message=".*use of fork\\(\\) may lead to deadlocks",
                                category=DeprecationWarning)
        proc.start()
    send.close()
    return proc, receive


def _collect(proc, receive: Connection, share: list[Batch], settings: EvalSettings,
             score: Score) -> list[PairResult]:
    """A worker's results; its error raised here; its share scored here if it died."""
    try:
        status, payload = receive.recv()
    except EOFError:
        status, payload = "died", None
    finally:
        receive.close()
        proc.join()
    if status == "error":
        raise payload
    if status == "died":
        log.warning("scoring worker %d ended with exit code %s before sending results; "
                    "scoring its %d pair(s) here", proc.pid, proc.exitcode,
                    sum(len(b) for b in share))
        with _one_thread():
            return [r for batch in share for r in score(batch, settings)]
    return payload


def score_in_workers(
    batches: Sequence[Batch],
    settings: EvalSettings,
    workers: int,
    score: Score,
    prepare: Callable[[Loaded], object] | None = None,
    advance: Callable[[int], None] | None = None,
) -> list[PairResult]:
    """Score ``batches`` in ``workers`` processes (this one included), each single-threaded.

    ``prepare`` runs on every pair here first, before the workers are forked (the alignment
    check: its per-evaluation cache then holds every pair; its time counts as ``align_s``).
    Each pair's ``align_s``, ``fuse_s``, ``metrics_s`` and ``metric_s`` become its share of
    the stage's wall time (the processes' times scaled to add up to it), so the report's
    totals stay the time a user waited.
    """
    t0 = time.perf_counter()
    prepared: dict[str, float] = {}  # seconds of ``prepare`` per pair, counted as align_s
    for batch in batches if prepare is not None else ():
        for item in batch:
            t = time.perf_counter()
            prepare(item)
            prepared[item.item.name] = time.perf_counter() - t
    shares = share_out(batches, workers)
    started = [_start(share, settings, score) for share in shares[1:]]
    results = []
    try:
        with _one_thread():
            for batch in shares[0]:
                results += score(batch, settings)
                if advance:
                    advance(len(batch))
        for (proc, receive), share in zip(started, shares[1:], strict=True):
            done = _collect(proc, receive, share, settings, score)
            results += done
            if advance:
                advance(len(done))
    except BaseException:
        for proc, _ in started:
            proc.terminate()
        raise
    for r in results:
        r.align_s += prepared.get(r.name, 0.0)
    _scale_times(results, time.perf_counter() - t0)
    return results


def _scale_times(results: list[PairResult], wall: float) -> None:
    busy = sum(r.align_s + r.fuse_s + r.metrics_s for r in results)
    factor = wall / busy if busy > 0 else 1.0
    for r in results:
        r.align_s *= factor
        r.fuse_s *= factor
        r.metrics_s *= factor
        r.metric_s = {k: s * factor for k, s in r.metric_s.items()}
