"""Atomic file writes for the outputs other tools read (eval JSON/CSV, report files, trial
tables): the content goes to a temporary file in the destination's folder, which then replaces
the destination in one ``os.replace``. A crash, a full disk or a value that fails to serialise
half-way leaves the previous file as it was and no temporary file behind.

(Fused PNGs go through :func:`fusion_models.data.write_image`, which does the same.)
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """``open(path, mode)`` for writing, but the file appears under its name only when the
    block ends without an exception (``mode``: "w" or "wb"; ``kwargs`` as for ``open``)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files ('w' or 'wb'), not {mode!r}")
    path = Path(path)
    # a fresh name, created exclusively ("x"): the usual permissions (umask), unlike mkstemp
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, mode.replace("w", "x"), **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike[str], data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically; returns the path."""
    mode, kwargs = ("wb", {}) if isinstance(data, bytes) else ("w", {"encoding": "utf-8"})
    with atomic_open(path, mode, **kwargs) as fh:
        fh.write(data)
    return Path(path)
