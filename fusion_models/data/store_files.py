"""The files of a patch store entry (and the disk-full error shared with checkpoint writes):
written with plain writes and fsynced, hashed on the way, checked against the manifest's record
before an entry is used. Pure Python/numpy: :mod:`orchestrator.common.atomic` reuses
:class:`DiskFullError` for checkpoints and reports."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import secrets
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np


def digest_file(path: str | os.PathLike[str]) -> str:
    """sha256 hex digest of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class DiskFullError(OSError, ValueError):
    """The disk filled up while writing ``filename``; nothing half-written is left under its
    name. An ``OSError`` (errno ENOSPC) and a ``ValueError`` (a one-line CLI error)."""


def disk_full(path: str | os.PathLike[str], exc: OSError) -> DiskFullError:
    """The :class:`DiskFullError` for a write of ``path`` that failed with ``exc``."""
    return DiskFullError(errno.ENOSPC, "No space left on device (disk full) while writing",
                         str(path))


def write_file(path: Path, chunks: Iterable[bytes], shown: Path) -> dict:
    """Write ``chunks`` to the new file ``path`` with plain writes (a memmap would die of
    SIGBUS on a full disk) and fsync it; ``{"size", "sha256"}`` of what was written. A full
    disk raises :class:`DiskFullError` naming ``shown`` (the file's name once in place)."""
    digest, size = hashlib.sha256(), 0
    try:
        with open(path, "xb") as fh:
            for chunk in chunks:
                fh.write(chunk)
                digest.update(chunk)
                size += len(chunk)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full(shown, exc) from exc
        raise
    return {"size": size, "sha256": digest.hexdigest()}


def npy_chunks(dtype: np.dtype, shape: tuple[int, ...], blocks: Iterable[np.ndarray]
                ) -> Iterable[bytes]:
    """The bytes of a ``.npy`` file holding the concatenation of ``blocks``."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {
        "descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
    yield header.getvalue()
    for block in blocks:
        yield np.ascontiguousarray(block, dtype).tobytes()


#: Array files this process has checked against their manifest, by (path, size, mtime_ns,
#: inode, recorded sha256): a reused sweep trial process reads each store once, not per trial.
_VERIFIED: set[tuple[str, int, int, int, str]] = set()


def entry_problem(entry: Path, version: int, names: tuple[str, ...]) -> str | None:
    """Why a cache entry cannot be loaded as it is (None: it checks out): no readable manifest
    of this store version, or an array file whose size or sha256 differs from the manifest."""
    manifest_path = entry / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"] if manifest.get("version") == version else None
        records = {name: (int(files[name]["size"]), str(files[name]["sha256"]))
                   for name in names}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{manifest_path}: not a readable version {version} manifest ({exc!r})"
    for name, (size, sha) in records.items():
        path = entry / name
        try:
            st = path.stat()
        except OSError:
            return f"{path}: missing"
        if st.st_size != size:
            return f"{path}: {st.st_size} bytes, the manifest says {size}"
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, sha)
        if key not in _VERIFIED:
            actual = digest_file(path)
            if actual != sha:
                return f"{path}: sha256 {actual}, the manifest says {sha}"
            _VERIFIED.add(key)
    return None


def discard(entry: Path) -> None:
    """Move a damaged entry aside (one rename: readers with open memmaps keep their files),
    then delete it."""
    aside = entry.with_name(f".bad-{entry.name}-{secrets.token_hex(4)}")
    try:
        os.rename(entry, aside)
    except FileNotFoundError:  # another process discarded it first
        return
    shutil.rmtree(aside, ignore_errors=True)
