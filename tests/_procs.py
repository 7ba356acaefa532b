"""Helpers for tests that start real server processes on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen, grace: float = 15) -> None:
    """SIGTERM the process group we started (start_new_session), then SIGKILL it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(grace)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # also stragglers of an exited leader
    except ProcessLookupError:
        pass
    proc.wait()


def wait_healthy(proc: subprocess.Popen, url: str, log: Path, timeout: float = 90) -> None:
    """Poll ``url`` until it answers 200; fail with the log's tail if the process dies."""
    deadline = time.time() + timeout
    while True:
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, f"{url}: no answer in {timeout} s"
        try:
            with urllib.request.urlopen(url, timeout=2) as res:
                if res.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
