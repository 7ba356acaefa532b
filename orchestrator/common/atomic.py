"""Atomic file writes for the outputs other tools read (eval JSON/CSV, report files, trial
tables, checkpoints): the content goes to a temporary file in the destination's folder, which
is flushed to disk (fsync) and then replaces the destination in one ``os.replace``. A crash, a
full disk or a value that fails to serialise half-way leaves the previous file as it was and no
temporary file behind; a full disk is one :class:`DiskFullError` naming the file.

Checkpoints (:func:`save_checkpoint_file`) also get a ``<file>.sha256`` sidecar, which
:func:`fusion_models.registry.verify_checkpoint_file` checks before a checkpoint is loaded.
(Fused PNGs go through :func:`fusion_models.data.write_image`, which does the same.)
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from fusion_models.data.store_files import DiskFullError, disk_full
from fusion_models.registry import sidecar_path

__all__ = ["DiskFullError", "atomic_open", "atomic_write", "save_checkpoint_file"]


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def _written_tmp(path: Path, mode: str, **kwargs: Any) -> Iterator[tuple[IO, Path]]:
    """A fresh temporary file beside ``path``, flushed and fsynced when the block ends; removed
    (and a full disk raised as :class:`DiskFullError` naming ``path``) when it fails."""
    # a fresh name, created exclusively ("x"): the usual permissions (umask), unlike mkstemp
    tmp = _tmp_name(path)
    try:
        with open(tmp, mode.replace("w", "x"), **kwargs) as fh:
            yield fh, tmp
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full(path, exc) from exc
        raise


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """``open(path, mode)`` for writing, but the file appears under its name only when the
    block ends without an exception (``mode``: "w" or "wb"; ``kwargs`` as for ``open``).

    Raises:
        DiskFullError: (an ``OSError`` and a ``ValueError``) the disk filled up; the previous
            file is untouched.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files ('w' or 'wb'), not {mode!r}")
    path = Path(path)
    with _written_tmp(path, mode, **kwargs) as (fh, tmp):
        yield fh
    try:
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike[str], data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically; returns the path."""
    mode, kwargs = ("wb", {}) if isinstance(data, bytes) else ("w", {"encoding": "utf-8"})
    with atomic_open(path, mode, **kwargs) as fh:
        fh.write(data)
    return Path(path)


class _HashingWriter:
    """What ``torch.save`` writes into: hashes the bytes on their way to ``fh`` and keeps the
    ``OSError`` of a failed write (torch reports it as an unhelpful ``RuntimeError``)."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh, self.digest, self.error = fh, hashlib.sha256(), None

    def write(self, data: bytes) -> int:
        try:
            written = self.fh.write(data)
        except OSError as exc:
            self.error = exc
            raise
        self.digest.update(data)
        return written

    def flush(self) -> None:
        self.fh.flush()


def save_checkpoint_file(obj: object, path: str | os.PathLike[str]) -> str:
    """``torch.save(obj)`` to ``path`` atomically, with a ``<path>.sha256`` sidecar; returns the
    sha256 of the file.

    Both files are written to temporaries first; then the old sidecar goes, the checkpoint is
    renamed into place and the new sidecar follows, so a crash at any point leaves a checkpoint
    whose sidecar (if any) is its own.

    Raises:
        DiskFullError: the disk filled up (the message names the file); the previous
            checkpoint and its sidecar are untouched and no temporary file is left.
    """
    import torch

    path = Path(path)
    with _written_tmp(path, "wb") as (fh, tmp):
        writer = _HashingWriter(fh)
        try:
            torch.save(obj, writer)
        except RuntimeError:
            if writer.error is not None:  # the OSError torch turned into a RuntimeError
                raise writer.error from None
            raise
    digest = writer.digest.hexdigest()
    side, side_tmp = sidecar_path(path), None
    try:
        with _written_tmp(side, "w", encoding="utf-8") as (sfh, side_tmp):
            sfh.write(f"{digest}  {path.name}\n")
        side.unlink(missing_ok=True)
        os.replace(tmp, path)
        os.replace(side_tmp, side)
    finally:  # after a failure: neither temporary stays (after success: no-ops)
        for left in (tmp, side_tmp):
            if left is not None:
                Path(left).unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return digest
