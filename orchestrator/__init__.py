"""fusion-orchestrator's CLI and wiring (Ray Tune/Train/Data, Optuna, MLflow).

Importing the package sets ``OMP_WAIT_POLICY=PASSIVE`` unless the environment already sets it
(and only while torch is not yet imported: OpenMP reads it once). With the default policy,
torch's OpenMP threads spin between parallel regions; on a 2-core machine shared with any other
job each small op then waits for a time slice: ``orchestrator eval`` of the 12 CDD metrics on the
25 TNO pairs took 45-85 s at a load of 4 against 2.5-3.6 s with passive waiting
(benchmarks/metrics_speed.py prints the policy and the load with its timings).
"""

import os
import sys

if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
