"""The misregistration guard of `orchestrator eval`: measure B against A, or warp it onto A.

Each pair's estimate is made once per :func:`alignment_cache` scope (one ``orchestrator eval``
with all its rows), whatever the number of rows (baselines, models, references) measuring it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from orchestrator.evaluate import EvalSettings, Loaded

__all__ = ["align_item", "alignment_cache"]

_ALIGNED: ContextVar[dict | None] = ContextVar("eval_alignments", default=None)


@contextmanager
def alignment_cache() -> Iterator[None]:
    """Within this scope each pair's alignment is estimated once: the rows of one
    ``orchestrator eval`` (baselines, models, references) measure the same sources."""
    token = _ALIGNED.set({})
    try:
        yield
    finally:
        _ALIGNED.reset(token)


def align_item(x: Loaded, settings: EvalSettings) -> dict[str, float] | None:
    """Measure B's misalignment (finite ``misalign_threshold``) or warp B onto A (``register``,
    all channels; ``x.b`` is replaced); the estimate's summary, or None when neither is asked."""
    check = math.isfinite(settings.misalign_threshold)
    if settings.register is None and not check:
        return None
    cache = _ALIGNED.get()
    key = (x.item.path_a, x.item.path_b, settings.register, check)
    if cache is not None and key in cache:
        b, summary = cache[key]
        x.b = x.b if b is None else b
        return summary
    from fusion_models.registration import align_sources

    a, b = (t.permute(1, 2, 0).numpy() for t in (x.a, x.b))  # (H, W, C) 0..255
    aligned, found = align_sources(a, np.ascontiguousarray(b), settings.register, check)
    warped = None
    if settings.register is not None and found is not None and found.ok:
        warped = torch.from_numpy(np.ascontiguousarray(aligned)).permute(2, 0, 1).contiguous()
        x.b = warped
    summary = None if found is None else found.summary()
    if cache is not None:
        cache[key] = (warped, summary)
    return summary
