"""Named failpoints for fault-injection tests: a process stops dead at a chosen point.

``FUSION_FAILPOINT=<name>[@<n>]`` arms one point: the ``n``-th time (default 1) a process
reaches ``failpoint(<name>)`` it writes ``<dir>/<name>.hit`` (its pid) and then blocks, so a
test that waits for the marker can SIGKILL the sweep driver with the program exactly there.
``FUSION_FAILPOINT_DIR`` is the marker folder (default: the working directory when
:func:`armed_env` is taken). Unset, :func:`failpoint` is one dict lookup and a compare.

The sweep driver hands an armed environment to the processes of its Ray job (trials, the
recorder actor, evaluation actors) through the job's ``runtime_env`` (see
``orchestrator.search.sweep.connect``), so a point in any of them is reached the same way.

Points (where they are called):

``trial_start``       a trial process, before its training loop starts (``search.sweep``)
``mid_epoch``         a trial process, after an optimiser step (:func:`arm_step_hook`; use
                      ``mid_epoch@<k>`` for the k-th step of that process)
``checkpoint_write``  ``training.loop._save``: the epoch's checkpoint built, not yet on disk
``trial_result``      the driver, Tune has an epoch's result, before it saves it
``trial_complete``    the driver, a trial ended, before Tune records it
``summary``           the recorder, the children closed, the parent run's tables not yet logged
``summary_start``     the driver, every trial done, before the summary is computed
``final_eval``        the driver, the first trial's test metrics logged, the table not yet
"""

from __future__ import annotations

import os
import time
from pathlib import Path

ENV = "FUSION_FAILPOINT"
DIR_ENV = "FUSION_FAILPOINT_DIR"
_hits: dict[str, int] = {}


def _target() -> tuple[str, int]:
    name, _, nth = os.environ.get(ENV, "").partition("@")
    return name, int(nth or 1)


def failpoint(name: str) -> None:
    """Stop this process for good at point ``name`` when ``FUSION_FAILPOINT`` arms it (after
    writing the marker file); return at once otherwise."""
    armed = os.environ.get(ENV)
    if not armed or armed.partition("@")[0] != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] != _target()[1]:
        return
    folder = Path(os.environ.get(DIR_ENV) or ".")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.hit").write_text(str(os.getpid()))
    while True:  # the test kills the driver here; nothing after this point runs
        time.sleep(3600)


def armed_env() -> dict[str, str]:
    """The failpoint variables of this process, the folder made absolute ({} when unarmed)."""
    if not os.environ.get(ENV):
        return {}
    return {ENV: os.environ[ENV], DIR_ENV: str(Path(os.environ.get(DIR_ENV) or ".").resolve())}


def arm_step_hook() -> None:
    """When ``mid_epoch`` is armed: reach it after every optimiser step of this process."""
    if _target()[0] != "mid_epoch":
        return
    from torch.optim.optimizer import register_optimizer_step_post_hook

    register_optimizer_step_post_hook(lambda *_: failpoint("mid_epoch"))
