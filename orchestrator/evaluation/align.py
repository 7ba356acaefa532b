"""The misregistration guard of `orchestrator eval`: measure B against A, or warp it onto A.

Inside an :func:`alignment_cache` scope (one ``orchestrator eval`` with all its rows) each
pair is estimated once, whatever the number of rows (baselines, models, references) scoring
it; with a cache folder, the estimate is also kept on disk, keyed by the sha256 of both source
files, the mode and :data:`VERSION`, so evaluating another model on the same test set skips it.
A cached estimate is the one computed before (same files, same code): nothing is approximated.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from orchestrator.common import atomic_write

if TYPE_CHECKING:
    from orchestrator.evaluation.local import EvalSettings, Loaded

__all__ = ["VERSION", "align_item", "alignment_cache"]

log = logging.getLogger(__name__)
#: Part of the on-disk key: bump it when fusion_models.registration's estimates change.
VERSION = 1
Entry = tuple[dict | None, list | None]  # (Misalignment.summary(), 3x3 matrix to warp B or None)


@dataclass
class _Store:
    folder: Path | None
    memory: dict[tuple, Entry] = field(default_factory=dict)

    def _file(self, path_a: str, path_b: str, mode: str) -> Path | None:
        if self.folder is None:
            return None
        digest = hashlib.sha256(f"{mode}|v{VERSION}".encode())
        for path in (path_a, path_b):
            digest.update(hashlib.sha256(Path(path).read_bytes()).digest())
        return self.folder / f"{digest.hexdigest()}.json"

    def get(self, key: tuple) -> tuple[Entry | None, Path | None]:
        if key in self.memory:
            return self.memory[key], None
        file = self._file(*key)
        if file is not None and file.is_file():
            try:
                data = json.loads(file.read_text())
                entry = (data["summary"], data["matrix"])
                self.memory[key] = entry
                return entry, None
            except (OSError, ValueError, KeyError, TypeError) as exc:  # unreadable: recompute
                log.debug("alignment cache %s unreadable (%s); estimating again", file, exc)
        return None, file

    def put(self, key: tuple, entry: Entry, file: Path | None) -> None:
        self.memory[key] = entry
        if file is not None:
            file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(file, json.dumps({"summary": entry[0], "matrix": entry[1]}))


_ALIGNED: ContextVar[_Store | None] = ContextVar("eval_alignments", default=None)


@contextmanager
def alignment_cache(folder: str | Path | None = None) -> Iterator[None]:
    """Estimate each pair once within the scope; also on disk under ``folder`` when given."""
    token = _ALIGNED.set(_Store(None if folder is None else Path(folder)))
    try:
        yield
    finally:
        _ALIGNED.reset(token)


def _estimate(x: Loaded, register: str | None, check: bool) -> tuple[Entry, Tensor | None]:
    from fusion_models.registration import align_sources

    a, b = (t.permute(1, 2, 0).numpy() for t in (x.a, x.b))  # (H, W, C) 0..255
    aligned, found = align_sources(a, np.ascontiguousarray(b), register, check)
    if found is None:
        return (None, None), None
    if register is not None and found.ok:
        warped = torch.from_numpy(np.ascontiguousarray(aligned)).permute(2, 0, 1).contiguous()
        return (found.summary(), found.matrix.tolist()), warped
    return (found.summary(), None), None


def _warp(b: Tensor, matrix: list) -> Tensor:
    from fusion_models.registration import warp

    img = np.ascontiguousarray(b.permute(1, 2, 0).numpy())
    out = warp(img, np.asarray(matrix, dtype=np.float64)).reshape(img.shape)
    return torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1).contiguous()


def align_item(x: Loaded, settings: EvalSettings) -> dict[str, float] | None:
    """Measure B's misalignment (finite ``misalign_threshold``) or warp B onto A (``register``,
    all channels; ``x.b`` is replaced); the estimate's summary, or None when neither is asked."""
    check = math.isfinite(settings.misalign_threshold)
    if settings.register is None and not check:
        return None
    store = _ALIGNED.get()
    key = (x.item.path_a, x.item.path_b, f"{settings.register}|{check}")
    entry, file = store.get(key) if store is not None else (None, None)
    if entry is None:
        entry, warped = _estimate(x, settings.register, check)
        if store is not None:
            store.put(key, entry, file)
        if warped is not None:
            x.b = warped
    elif entry[1] is not None:
        x.b = _warp(x.b, entry[1])
    return entry[0]
