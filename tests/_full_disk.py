"""A full disk for tests: every file opened for writing (``open``, ``io.open``, hence also
``Path.write_text`` and ``os.fdopen``) shares ``free`` bytes; a longer write stores what fits,
then raises ENOSPC part-way, like a real full disk."""

from __future__ import annotations

import builtins
import errno
import io

import pytest


class FullDisk:
    """``builtins.open``/``io.open`` whose files for writing share ``free`` bytes (None: no
    limit); a longer write stores what fits and raises ENOSPC, like a full disk."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.free: int | None = None
        self.written = 0
        real = io.open

        def limited_open(file, mode="r", *args, **kwargs):
            fh = real(file, mode, *args, **kwargs)
            return _Filling(fh, self) if set(mode) & set("wxa+") else fh

        monkeypatch.setattr(builtins, "open", limited_open)
        monkeypatch.setattr(io, "open", limited_open)


class _Filling:
    def __init__(self, fh, disk: FullDisk) -> None:
        self._fh, self._disk = fh, disk

    def write(self, data):
        disk = self._disk
        if disk.free is not None and len(data) > disk.free:
            self._fh.write(data[: disk.free])
            self._fh.flush()
            disk.free = 0
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        if disk.free is not None:
            disk.free -= len(data)
        disk.written += len(data)
        return self._fh.write(data)

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._fh.close()
