"""Work shared between metrics of one batch: computed once, reused while a scope is open.

Several metrics (and the degenerate-fusion diagnostic) need the same intermediate results of
the same images, e.g. the sums of products of [A, B, F] behind MSE, PSNR, CC and SCD.
:func:`shared_work` opens a scope (``compute_metrics`` and ``orchestrator eval``'s scoring do);
inside it :func:`memoised` returns the first result computed for a key and the same input
tensors (same objects, unmodified: their version counters are part of the key). Outside a
scope every call computes afresh, so each metric function stays usable on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

from torch import Tensor

T = TypeVar("T")
_SCOPE: ContextVar[dict | None] = ContextVar("fusion_metrics_shared_work", default=None)


@contextmanager
def shared_work() -> Iterator[None]:
    """Open a sharing scope (a nested call joins the open one); results are dropped on exit."""
    if _SCOPE.get() is not None:
        yield
        return
    token = _SCOPE.set({})
    try:
        yield
    finally:
        _SCOPE.reset(token)


def in_shared_scope() -> bool:
    """True inside a :func:`shared_work` scope (results computed now will be reused)."""
    return _SCOPE.get() is not None


def memoised(name: str, inputs: tuple[Tensor, ...], compute: Callable[[], T]) -> T:
    """``compute()``, or its earlier result for ``name`` and these same, unmodified tensors.

    The scope keeps references to ``inputs``, so their ids cannot be reused while it is open.
    """
    cache = _SCOPE.get()
    if cache is None:
        return compute()
    key = (name, *((id(t), t._version) for t in inputs))
    if key not in cache:
        cache[key] = (compute(), inputs)
    return cache[key][0]
