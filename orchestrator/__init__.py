"""fusion-orchestrator's CLI and wiring (Ray Tune/Train/Data, Optuna, MLflow).

OpenMP's wait policy is chosen here, before torch is imported (OpenMP reads it once), unless the
environment sets ``OMP_WAIT_POLICY``: passive waiting when other processes keep the CPUs busy,
libgomp's default (spin, then sleep) otherwise. Measured with ``orchestrator eval`` of the 12
CDD metrics on the 25 TNO pairs (timing.metrics_s) on 2 cores: idle, default 1.4-1.5 s vs
passive 3.9 s (every small op wakes a sleeping thread); next to one busy process, default 5.5 s
vs passive 2.4 s; at a load of 4, default 45-85 s vs passive 2.5-3.6 s (spinning threads lose
their time slices and every parallel region waits for them).

"Busy" is decided cheaply: a 1-minute load average below :data:`BUSY_CPUS` means idle; above,
the load average may only remember a job that just ended, so a 0.1 s sample of ``/proc/stat``
(other processes' CPU time, ours subtracted) decides.
"""

import os
import sys
import time

#: CPUs' worth of other processes' work from which OpenMP threads wait passively.
BUSY_CPUS = 0.5


def _cpu_ticks() -> tuple[int, int]:
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    return sum(values), values[3] + values[4]  # all, idle + iowait


def _others_busy(seconds: float = 0.1) -> float:
    """CPUs' worth of work done by other processes over a short sample (Linux)."""
    total0, idle0 = _cpu_ticks()
    own0 = time.process_time()
    time.sleep(seconds)
    total1, idle1 = _cpu_ticks()
    own = (time.process_time() - own0) * os.sysconf("SC_CLK_TCK")
    total = total1 - total0
    return 0.0 if total <= 0 else (total - (idle1 - idle0) - own) / total * (os.cpu_count() or 1)


def _busy() -> bool:
    try:
        if os.getloadavg()[0] < BUSY_CPUS:
            return False
        return _others_busy() >= BUSY_CPUS
    except (OSError, ValueError, IndexError):  # no /proc or load average: assume shared
        return True


if "torch" not in sys.modules and "OMP_WAIT_POLICY" not in os.environ and _busy():
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
