"""Wall time and peak memory of a command's whole process tree (driver, Ray's GCS/raylet,
trial workers), sampled every 0.25 s from /proc (Linux; no psutil needed).

    python benchmarks/peak_mem.py -- orchestrator sweep search_spaces/ufgan.yaml --smoke
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_mb(root: int) -> float:
    """Resident memory of ``root`` and all its descendants, in MB."""
    tree, stack, total = _children(), [root], 0
    while stack:
        pid = stack.pop()
        total += _rss_kb(pid)
        stack.extend(tree.get(pid, []))
    return total / 1024


def main(argv: list[str]) -> int:
    if "--" in argv:
        argv = argv[argv.index("--") + 1:]
    if not argv:
        print(__doc__)
        return 2
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, start_new_session=True)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, tree_rss_mb(proc.pid))
        time.sleep(0.25)
    wall = time.perf_counter() - t0
    print(f"command: {' '.join(argv)}")
    print(f"exit {proc.returncode}  wall {wall:.1f} s  peak RSS of the process tree "
          f"{peak / 1024:.2f} GB")
    return proc.returncode


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
